package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
)

// Transaction state kept by a replica, in three buckets:
//
//	locks     key -> the transactions holding a lock on it (LockSet)
//	txnkeys   txn id -> the keys it holds locks on here
//	txns      txn id -> its record (TxnRecord), in its record group only
//
// A write lock (an intent) names the new value; it becomes the key's value
// (at the version of the entry that resolves it) only if the transaction
// commits. Read locks are shared; a write lock excludes every other lock.

var (
	bucketLocks   = []byte("locks")
	bucketTxnKeys = []byte("txnkeys")
	bucketTxns    = []byte("txns")
)

// TxnState is the state of a transaction record.
type TxnState string

// Record states. A record moves from pending to committed or aborted,
// once; the move is a compare-and-set in the record group's log, so a
// coordinator's commit and a recovery's abort cannot both win.
const (
	TxnPending   TxnState = "pending"
	TxnCommitted TxnState = "committed"
	TxnAborted   TxnState = "aborted"
	// TxnAbsent is reported for a record that does not exist (yet, or any
	// more).
	TxnAbsent TxnState = "absent"
)

// TxnRecord is a transaction's record, kept in its record group.
type TxnRecord struct {
	State TxnState `json:"state"`
	// Deadline is when, by the leader's clock (Unix ns), a pending record
	// may be aborted by anyone.
	Deadline int64 `json:"deadline"`
	// Participants are the groups holding the transaction's locks.
	Participants []kvd.GroupID `json:"participants"`
	// Decided is when the state left pending (Unix ns, leader clock).
	Decided int64 `json:"decided,omitempty"`
}

// Lock is one transaction's lock on a key.
type Lock struct {
	Txn         string      `json:"txn"`
	RecordGroup kvd.GroupID `json:"record_group"`
	Deadline    int64       `json:"deadline"`
	// For a write lock: the new value, or Delete, and the value's TTL
	// (ns after the resolving entry; 0: none).
	Value  []byte `json:"value,omitempty"`
	Delete bool   `json:"delete,omitempty"`
	TTL    int64  `json:"ttl,omitempty"`
}

// LockSet is every lock held on one key.
type LockSet struct {
	Write *Lock  `json:"write,omitempty"`
	Reads []Lock `json:"reads,omitempty"`
}

func (ls *LockSet) empty() bool { return ls.Write == nil && len(ls.Reads) == 0 }

// holders returns the locks of transactions other than id.
func (ls *LockSet) others(id string) (write *Lock, reads []Lock) {
	if ls.Write != nil && ls.Write.Txn != id {
		write = ls.Write
	}
	for _, r := range ls.Reads {
		if r.Txn != id {
			reads = append(reads, r)
		}
	}
	return write, reads
}

// TxnCompare is one compare of a transaction, on one key.
type TxnCompare struct {
	// Index is the compare's position in the request.
	Index int    `json:"index"`
	Key   string `json:"key"`
	// Exactly one of Version, Value or Exists is set.
	Version *uint64 `json:"version,omitempty"`
	Value   []byte  `json:"value,omitempty"`
	Exists  *bool   `json:"exists,omitempty"`
}

// holds reports whether the compare holds for the key's committed record
// (nil: absent).
func (c *TxnCompare) holds(rec []byte) bool {
	cur := version(rec)
	switch {
	case c.Version != nil:
		return cur == *c.Version
	case c.Exists != nil:
		return (cur != 0) == *c.Exists
	default:
		return rec != nil && bytes.Equal(recValue(rec), c.Value)
	}
}

// TxnOp is one operation of a transaction.
type TxnOp struct {
	Index int    `json:"index"`
	Op    string `json:"op"` // get, put, delete, add
	Key   string `json:"key"`
	Value []byte `json:"value,omitempty"`
	// Delta is an add's increment; TTL a put's time to live in ns.
	Delta int64 `json:"delta,omitempty"`
	TTL   int64 `json:"ttl,omitempty"`
}

// TxnPrepare asks a participant group to check the compares on its keys,
// lock its keys, read its gets and vote.
type TxnPrepare struct {
	ID          string       `json:"id"`
	RecordGroup kvd.GroupID  `json:"record_group"`
	Deadline    int64        `json:"deadline"`
	Compares    []TxnCompare `json:"compares,omitempty"`
	Ops         []TxnOp      `json:"ops,omitempty"`
	// Participants is set for the record group, which creates the record.
	Participants []kvd.GroupID `json:"participants,omitempty"`
}

// TxnDecide moves a record from pending to committed or aborted. With
// ResolveHere, the same entry also resolves the transaction's locks in
// the record group.
type TxnDecide struct {
	ID          string `json:"id"`
	Commit      bool   `json:"commit"`
	ResolveHere bool   `json:"resolve_here,omitempty"`
}

// TxnResolve applies (Commit) or drops the transaction's locks in a group.
// Callers must have read the decision from the record.
type TxnResolve struct {
	ID     string `json:"id"`
	Commit bool   `json:"commit"`
}

// TxnRecover reads a record, aborting it first if it is pending past its
// deadline, or creating it aborted if it is absent past Deadline.
type TxnRecover struct {
	ID       string `json:"id"`
	Deadline int64  `json:"deadline"`
}

// TxnOnePhase runs a transaction whose keys all live in one group, in one
// entry.
type TxnOnePhase struct {
	Compares []TxnCompare `json:"compares,omitempty"`
	Ops      []TxnOp      `json:"ops,omitempty"`
	// Idem, if set, makes the transaction idempotent under that key.
	Idem *Idem `json:"idem,omitempty"`
}

// TxnForget deletes a decided record.
type TxnForget struct {
	ID string `json:"id"`
}

// TxnRead is the answer to a get op.
type TxnRead struct {
	Index   int    `json:"index"`
	Found   bool   `json:"found"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version,omitempty"`
}

// TxnWrite is the answer to a put or delete op.
type TxnWrite struct {
	Index   int    `json:"index"`
	Key     string `json:"key"`
	Version uint64 `json:"version,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
	// Value is an add's new value.
	Value []byte `json:"value,omitempty"`
}

// TxnOutcome is the result of a transaction command.
type TxnOutcome struct {
	// Vote is a prepare's (or one-phase's) answer: true when the
	// compares held and the locks were taken (or the writes applied).
	Vote bool `json:"vote"`
	// Code says why the vote is no: conflict, compare_failed, expired or
	// aborted.
	Code string `json:"code,omitempty"`
	// Failed lists the indexes of compares that did not hold.
	Failed []int `json:"failed,omitempty"`
	// Conflicts are the locks that stood in the way.
	Conflicts []Lock `json:"conflicts,omitempty"`
	// Reads and Writes answer the ops.
	Reads  []TxnRead  `json:"reads,omitempty"`
	Writes []TxnWrite `json:"writes,omitempty"`
	// State is a record's state after the command.
	State TxnState `json:"state,omitempty"`
}

// Outcome codes.
const (
	CodeConflict            = "conflict"
	CodeCompareFailed       = "compare_failed"
	CodeNotANumber          = "not_a_number"
	CodeExpired             = "expired"
	CodeAborted             = "aborted"
	CodeIdempotencyMismatch = "idempotency_mismatch"
)

// addTo adds delta to the decimal integer of a record (absent: 0) and
// returns the new value's decimal text, or false if the record does not
// hold such an integer or the sum overflows.
func addTo(rec []byte, delta int64) ([]byte, bool) {
	var cur int64
	if rec != nil {
		v, err := strconv.ParseInt(string(recValue(rec)), 10, 64)
		if err != nil {
			return nil, false
		}
		cur = v
	}
	sum := cur + delta
	if (delta > 0 && sum < cur) || (delta < 0 && sum > cur) {
		return nil, false
	}
	return []byte(strconv.FormatInt(sum, 10)), true
}

// applier applies commands inside one bbolt write transaction.
type applier struct {
	kv, meta, locks, txnKeys, txns *bolt.Bucket
	hist, expiry, dedup, dedupAt   *bolt.Bucket
	histMax, histMaxBytes          int
	index                          uint64
	now                            int64
	// seq numbers the changes within the current entry, for history.
	seq uint32
	// histCount and histSize track the history's size during the batch
	// (loaded on first use); flushHistory prunes and stores them once.
	histLoaded          bool
	histCount, histSize uint64
}

func (a *applier) lockSet(key string) (*LockSet, error) {
	b := a.locks.Get([]byte(key))
	ls := &LockSet{}
	if b == nil {
		return ls, nil
	}
	if err := json.Unmarshal(b, ls); err != nil {
		return nil, fmt.Errorf("decode locks of %q: %w", key, err)
	}
	return ls, nil
}

func (a *applier) putLockSet(key string, ls *LockSet) error {
	if ls.empty() {
		return a.locks.Delete([]byte(key))
	}
	b, err := json.Marshal(ls)
	if err != nil {
		return err
	}
	return a.locks.Put([]byte(key), b)
}

func (a *applier) record(id string) (*TxnRecord, error) {
	b := a.txns.Get([]byte(id))
	if b == nil {
		return nil, nil
	}
	rec := &TxnRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("decode record %s: %w", id, err)
	}
	return rec, nil
}

func (a *applier) putRecord(id string, rec *TxnRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return a.txns.Put([]byte(id), b)
}

// locked reports whether key is locked by any transaction: plain writes
// must wait for it.
func (a *applier) locked(key string) (*LockSet, error) {
	ls, err := a.lockSet(key)
	if err != nil || ls.empty() {
		return nil, err
	}
	return ls, nil
}

// keyLocks is what a transaction needs on each key it touches.
func keyLocks(compares []TxnCompare, ops []TxnOp) (keys []string, write map[string]*TxnOp) {
	write = map[string]*TxnOp{}
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for i := range compares {
		add(compares[i].Key)
	}
	for i := range ops {
		add(ops[i].Key)
		if ops[i].Op == "put" || ops[i].Op == "delete" || ops[i].Op == "add" {
			write[ops[i].Key] = &ops[i]
		}
	}
	sort.Strings(keys)
	return keys, write
}

// conflicts returns the other transactions' locks that keep id from
// taking the locks it needs.
func (a *applier) conflicts(id string, keys []string, write map[string]*TxnOp, readsConflictWithReads bool) ([]Lock, error) {
	var out []Lock
	for _, k := range keys {
		ls, err := a.lockSet(k)
		if err != nil {
			return nil, err
		}
		w, rs := ls.others(id)
		if w != nil {
			out = append(out, *w)
		}
		if _, writes := write[k]; writes || readsConflictWithReads {
			out = append(out, rs...)
		}
	}
	return out, nil
}

// checkAndRead evaluates the compares and reads the gets against the
// committed values.
func (a *applier) checkAndRead(compares []TxnCompare, ops []TxnOp, out *TxnOutcome) {
	for i := range compares {
		if !compares[i].holds(a.kv.Get([]byte(compares[i].Key))) {
			out.Failed = append(out.Failed, compares[i].Index)
		}
	}
	for _, op := range ops {
		if op.Op != "get" {
			continue
		}
		rec := a.kv.Get([]byte(op.Key))
		r := TxnRead{Index: op.Index}
		if rec != nil {
			r.Found, r.Version, r.Value = true, version(rec), append([]byte(nil), recValue(rec)...)
		}
		out.Reads = append(out.Reads, r)
	}
}

func (a *applier) prepare(p *TxnPrepare) (*TxnOutcome, error) {
	out := &TxnOutcome{}
	if a.now > p.Deadline {
		out.Code = CodeExpired
		return out, nil
	}
	isRecord := len(p.Participants) > 0
	if isRecord {
		rec, err := a.record(p.ID)
		if err != nil {
			return nil, err
		}
		if rec != nil && rec.State != TxnPending {
			out.Code, out.State = CodeAborted, rec.State
			return out, nil
		}
		if rec == nil {
			rec = &TxnRecord{State: TxnPending, Deadline: p.Deadline, Participants: p.Participants}
			if err := a.putRecord(p.ID, rec); err != nil {
				return nil, err
			}
		}
		out.State = TxnPending
	}
	keys, write := keyLocks(p.Compares, p.Ops)
	conf, err := a.conflicts(p.ID, keys, write, false)
	if err != nil {
		return nil, err
	}
	if len(conf) > 0 {
		out.Code, out.Conflicts = CodeConflict, conf
		return out, a.abortRecordIf(isRecord, p.ID)
	}
	a.checkAndRead(p.Compares, p.Ops, out)
	if len(out.Failed) > 0 {
		out.Code, out.Reads = CodeCompareFailed, nil
		return out, a.abortRecordIf(isRecord, p.ID)
	}
	added := map[string][]byte{}
	for _, op := range p.Ops {
		switch op.Op {
		case "delete":
			out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Deleted: a.kv.Get([]byte(op.Key)) != nil})
		case "add":
			// The key stays locked until resolution, so the sum computed
			// now is the sum then.
			v, ok := addTo(a.kv.Get([]byte(op.Key)), op.Delta)
			if !ok {
				out.Code, out.Reads, out.Writes = CodeNotANumber, nil, nil
				return out, a.abortRecordIf(isRecord, p.ID)
			}
			added[op.Key] = v
			out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Value: v})
		}
	}
	for _, k := range keys {
		ls, err := a.lockSet(k)
		if err != nil {
			return nil, err
		}
		l := Lock{Txn: p.ID, RecordGroup: p.RecordGroup, Deadline: p.Deadline}
		if op, ok := write[k]; ok {
			l.Value, l.Delete, l.TTL = op.Value, op.Op == "delete", op.TTL
			if op.Op == "add" {
				l.Value = added[k]
			}
			ls.Write = &l
		} else {
			held := false
			for _, r := range ls.Reads {
				held = held || r.Txn == p.ID
			}
			if !held {
				ls.Reads = append(ls.Reads, l)
			}
		}
		if err := a.putLockSet(k, ls); err != nil {
			return nil, err
		}
	}
	kb, _ := json.Marshal(keys)
	if err := a.txnKeys.Put([]byte(p.ID), kb); err != nil {
		return nil, err
	}
	out.Vote = true
	return out, nil
}

// abortRecordIf aborts the record created by a record-group prepare that
// voted no: the transaction can no longer commit.
func (a *applier) abortRecordIf(isRecord bool, id string) error {
	if !isRecord {
		return nil
	}
	rec, err := a.record(id)
	if err != nil || rec == nil || rec.State != TxnPending {
		return err
	}
	rec.State, rec.Decided = TxnAborted, a.now
	return a.putRecord(id, rec)
}

func (a *applier) decide(d *TxnDecide) (*TxnOutcome, error) {
	rec, err := a.record(d.ID)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		// The record group never prepared: the transaction cannot have
		// committed. Record that.
		rec = &TxnRecord{State: TxnAborted, Decided: a.now}
		if err := a.putRecord(d.ID, rec); err != nil {
			return nil, err
		}
	}
	if rec.State == TxnPending {
		rec.State, rec.Decided = TxnAborted, a.now
		if d.Commit {
			rec.State = TxnCommitted
		}
		if err := a.putRecord(d.ID, rec); err != nil {
			return nil, err
		}
	}
	out := &TxnOutcome{State: rec.State}
	if d.ResolveHere {
		writes, err := a.resolve(d.ID, rec.State == TxnCommitted)
		if err != nil {
			return nil, err
		}
		out.Writes = writes
	}
	return out, nil
}

// resolve applies (commit) or drops transaction id's locks in this group.
func (a *applier) resolve(id string, commit bool) ([]TxnWrite, error) {
	kb := a.txnKeys.Get([]byte(id))
	if kb == nil {
		return nil, nil // nothing here, or already resolved
	}
	var keys []string
	if err := json.Unmarshal(kb, &keys); err != nil {
		return nil, fmt.Errorf("decode keys of %s: %w", id, err)
	}
	var writes []TxnWrite
	for _, k := range keys {
		ls, err := a.lockSet(k)
		if err != nil {
			return nil, err
		}
		if ls.Write != nil && ls.Write.Txn == id {
			if commit {
				w := TxnWrite{Key: k}
				if ls.Write.Delete {
					w.Deleted = a.kv.Get([]byte(k)) != nil
					if w.Deleted {
						if err := a.delKey(k); err != nil {
							return nil, err
						}
					}
				} else {
					if err := a.setKey(k, ls.Write.Value, ls.Write.TTL); err != nil {
						return nil, err
					}
					w.Version = a.index
				}
				writes = append(writes, w)
			}
			ls.Write = nil
		}
		kept := ls.Reads[:0]
		for _, r := range ls.Reads {
			if r.Txn != id {
				kept = append(kept, r)
			}
		}
		ls.Reads = kept
		if err := a.putLockSet(k, ls); err != nil {
			return nil, err
		}
	}
	return writes, a.txnKeys.Delete([]byte(id))
}

func (a *applier) recover(r *TxnRecover) (*TxnOutcome, error) {
	rec, err := a.record(r.ID)
	if err != nil {
		return nil, err
	}
	switch {
	case rec == nil && a.now > r.Deadline:
		rec = &TxnRecord{State: TxnAborted, Deadline: r.Deadline, Decided: a.now}
		if err := a.putRecord(r.ID, rec); err != nil {
			return nil, err
		}
	case rec == nil:
		return &TxnOutcome{State: TxnAbsent}, nil
	case rec.State == TxnPending && a.now > rec.Deadline:
		rec.State, rec.Decided = TxnAborted, a.now
		if err := a.putRecord(r.ID, rec); err != nil {
			return nil, err
		}
	}
	return &TxnOutcome{State: rec.State}, nil
}

func (a *applier) onePhase(t *TxnOnePhase) (*TxnOutcome, error) {
	if t.Idem != nil {
		e, err := a.dedupGet(t.Idem.Key)
		if err != nil {
			return nil, err
		}
		if e != nil && !fpEqual(e.FP, t.Idem.FP) {
			return &TxnOutcome{Code: CodeIdempotencyMismatch}, nil
		}
		if e != nil && !e.Reg { // a registration only: never run here
			out := &TxnOutcome{}
			if err := json.Unmarshal(e.Result, out); err != nil {
				return nil, fmt.Errorf("decode idempotency result: %w", err)
			}
			return out, nil
		}
	}
	out, err := a.onePhaseApply(t)
	if err != nil || t.Idem == nil || out.Code == CodeConflict {
		return out, err
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return out, a.dedupCreate(t.Idem.Key, &dedupEntry{FP: t.Idem.FP, At: a.now, Done: true, Result: b})
}

func (a *applier) onePhaseApply(t *TxnOnePhase) (*TxnOutcome, error) {
	out := &TxnOutcome{}
	keys, write := keyLocks(t.Compares, t.Ops)
	conf, err := a.conflicts("", keys, write, false)
	if err != nil {
		return nil, err
	}
	if len(conf) > 0 {
		out.Code, out.Conflicts = CodeConflict, conf
		return out, nil
	}
	a.checkAndRead(t.Compares, t.Ops, out)
	if len(out.Failed) > 0 {
		out.Code, out.Reads = CodeCompareFailed, nil
		return out, nil
	}
	added := map[string][]byte{}
	for _, op := range t.Ops {
		if op.Op == "add" {
			v, ok := addTo(a.kv.Get([]byte(op.Key)), op.Delta)
			if !ok {
				out.Code, out.Reads = CodeNotANumber, nil
				return out, nil
			}
			added[op.Key] = v
		}
	}
	for _, op := range t.Ops {
		switch op.Op {
		case "put", "add":
			v, ttl := op.Value, op.TTL
			if op.Op == "add" {
				v = added[op.Key]
			}
			if err := a.setKey(op.Key, v, ttl); err != nil {
				return nil, err
			}
			w := TxnWrite{Index: op.Index, Key: op.Key, Version: a.index}
			if op.Op == "add" {
				w.Value = v
			}
			out.Writes = append(out.Writes, w)
		case "delete":
			existed := a.kv.Get([]byte(op.Key)) != nil
			if existed {
				if err := a.delKey(op.Key); err != nil {
					return nil, err
				}
			}
			out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Deleted: existed})
		}
	}
	out.Vote = true
	return out, nil
}

func (a *applier) forget(f *TxnForget) (*TxnOutcome, error) {
	rec, err := a.record(f.ID)
	if err != nil || rec == nil {
		return &TxnOutcome{State: TxnAbsent}, err
	}
	if rec.State == TxnPending {
		return &TxnOutcome{State: rec.State}, nil
	}
	return &TxnOutcome{State: TxnAbsent}, a.txns.Delete([]byte(f.ID))
}

// applyTxn decodes and applies a transaction command.
func (a *applier) applyTxn(c *Cmd) (Result, error) {
	var out *TxnOutcome
	var err error
	decode := func(v any) bool {
		if e := json.Unmarshal(c.Data, v); e != nil {
			// Validated before proposing; every replica fails alike.
			out = &TxnOutcome{Code: "invalid"}
			return false
		}
		return true
	}
	switch c.Kind {
	case CmdTxnPrepare:
		var p TxnPrepare
		if decode(&p) {
			out, err = a.prepare(&p)
		}
	case CmdTxnDecide:
		var d TxnDecide
		if decode(&d) {
			out, err = a.decide(&d)
		}
	case CmdTxnResolve:
		var r TxnResolve
		if decode(&r) {
			var writes []TxnWrite
			writes, err = a.resolve(r.ID, r.Commit)
			out = &TxnOutcome{Writes: writes}
		}
	case CmdTxnRecover:
		var r TxnRecover
		if decode(&r) {
			out, err = a.recover(&r)
		}
	case CmdTxnOnePhase:
		var t TxnOnePhase
		if decode(&t) {
			out, err = a.onePhase(&t)
		}
	case CmdTxnForget:
		var f TxnForget
		if decode(&f) {
			out, err = a.forget(&f)
		}
	case CmdDedupClaim:
		var c DedupClaim
		if decode(&c) {
			st, err := a.dedupClaim(&c)
			return Result{Version: a.index, Dedup: st}, err
		}
	case CmdDedupDone:
		var d DedupDone
		if decode(&d) {
			st, err := a.dedupDone(&d)
			return Result{Version: a.index, Dedup: st}, err
		}
	case CmdDedupRegister:
		var r DedupRegister
		if decode(&r) {
			st, err := a.dedupRegister(&r)
			return Result{Version: a.index, Dedup: st}, err
		}
	case CmdDedupGC:
		var g DedupGC
		if decode(&g) {
			return Result{Version: a.index}, a.dedupGC(&g)
		}
	}
	if err != nil {
		return Result{}, err
	}
	return Result{Version: a.index, Txn: out}, nil
}

// GetLocked returns key's committed item (found is false if absent) and
// the write lock a transaction holds on it, if any.
func (db *DB) GetLocked(key string) (it kvd.Item, found bool, lock *Lock, err error) {
	err = db.view(func(tx *bolt.Tx) error {
		if rec := tx.Bucket(bucketKV).Get([]byte(key)); rec != nil {
			it, found = kvd.Item{Key: key, Version: version(rec), Value: append([]byte{}, recValue(rec)...)}, true
		}
		if b := tx.Bucket(bucketLocks).Get([]byte(key)); b != nil {
			var ls LockSet
			if err := json.Unmarshal(b, &ls); err != nil {
				return fmt.Errorf("decode locks of %q: %w", key, err)
			}
			lock = ls.Write
		}
		return nil
	})
	if err != nil {
		return kvd.Item{}, false, nil, fmt.Errorf("get %q: %w", key, err)
	}
	return it, found, lock, nil
}

// WriteLocks returns the write locks held on keys selected by o (its
// Limit ignored), by key.
func (db *DB) WriteLocks(o kvd.ScanOptions) (map[string]Lock, error) {
	out := map[string]Lock{}
	err := db.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLocks).Cursor()
		for k, v := c.Seek([]byte(max(o.Start, o.Prefix))); k != nil; k, v = c.Next() {
			ks := string(k)
			if (o.End != "" && ks >= o.End) || len(ks) < len(o.Prefix) || ks[:len(o.Prefix)] != o.Prefix {
				break
			}
			var ls LockSet
			if err := json.Unmarshal(v, &ls); err != nil {
				return fmt.Errorf("decode locks of %q: %w", ks, err)
			}
			if ls.Write != nil {
				out[ks] = *ls.Write
			}
		}
		return nil
	})
	return out, err
}

// ExpiredLocks returns, one per transaction, the locks whose deadline is
// before now (Unix ns).
func (db *DB) ExpiredLocks(now int64) ([]Lock, error) {
	seen := map[string]bool{}
	var out []Lock
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLocks).ForEach(func(k, v []byte) error {
			var ls LockSet
			if err := json.Unmarshal(v, &ls); err != nil {
				return fmt.Errorf("decode locks of %q: %w", k, err)
			}
			all := ls.Reads
			if ls.Write != nil {
				all = append(all, *ls.Write)
			}
			for _, l := range all {
				if l.Deadline < now && !seen[l.Txn] {
					seen[l.Txn] = true
					l.Value = nil
					out = append(out, l)
				}
			}
			return nil
		})
	})
	return out, err
}

// Records returns the transaction records kept here, by id.
func (db *DB) Records() (map[string]TxnRecord, error) {
	out := map[string]TxnRecord{}
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTxns).ForEach(func(k, v []byte) error {
			var r TxnRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode record %s: %w", k, err)
			}
			out[string(k)] = r
			return nil
		})
	})
	return out, err
}

// Record returns transaction id's record, if this replica keeps it.
func (db *DB) Record(id string) (TxnRecord, bool, error) {
	var r TxnRecord
	found := false
	err := db.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTxns).Get([]byte(id))
		if b == nil {
			return nil
		}
		found = true
		return json.Unmarshal(b, &r)
	})
	return r, found, err
}

// TxnWriteKeys returns the keys transaction id holds write locks on here.
func (db *DB) TxnWriteKeys(id string) ([]string, error) {
	var out []string
	err := db.view(func(tx *bolt.Tx) error {
		kb := tx.Bucket(bucketTxnKeys).Get([]byte(id))
		if kb == nil {
			return nil
		}
		var keys []string
		if err := json.Unmarshal(kb, &keys); err != nil {
			return err
		}
		locks := tx.Bucket(bucketLocks)
		for _, k := range keys {
			var ls LockSet
			if b := locks.Get([]byte(k)); b != nil && json.Unmarshal(b, &ls) == nil && ls.Write != nil && ls.Write.Txn == id {
				out = append(out, k)
			}
		}
		return nil
	})
	return out, err
}

// KeyState is a key's committed state and the write lock on it, if any.
type KeyState struct {
	Key     string `json:"key"`
	Found   bool   `json:"found"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version,omitempty"`
	Lock    *Lock  `json:"lock,omitempty"`
}

// ReadKeys reads keys in one read transaction: a consistent view of them
// all at one point of the applied log.
func (db *DB) ReadKeys(keys []string) ([]KeyState, error) {
	out := make([]KeyState, len(keys))
	err := db.view(func(tx *bolt.Tx) error {
		kv, locks := tx.Bucket(bucketKV), tx.Bucket(bucketLocks)
		for i, k := range keys {
			st := KeyState{Key: k}
			if rec := kv.Get([]byte(k)); rec != nil {
				st.Found, st.Version, st.Value = true, version(rec), append([]byte(nil), recValue(rec)...)
			}
			if b := locks.Get([]byte(k)); b != nil {
				var ls LockSet
				if err := json.Unmarshal(b, &ls); err != nil {
					return fmt.Errorf("decode locks of %q: %w", k, err)
				}
				st.Lock = ls.Write
			}
			out[i] = st
		}
		return nil
	})
	return out, err
}
