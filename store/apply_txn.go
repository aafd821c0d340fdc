package store

import (
	"cmp"
	"encoding/json"
	"sort"
	"strconv"

	"github.com/kvd-project/kvd/internal/failpoint"
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

// lockSet reads key's locks (none if absent).
func (a *applier) lockSet(key string) (*LockSet, error) {
	return readLockSet(a.locks, key)
}

// putLockSet stores key's locks, deleting the entry when none are left.
func (a *applier) putLockSet(key string, ls *LockSet) error {
	if ls.empty() {
		return a.del(a.locks, []byte(key))
	}
	b, err := json.Marshal(ls)
	if err != nil {
		return err
	}
	return a.put(a.locks, []byte(key), b)
}

// txnRecord reads transaction id's record (nil if absent).
func (a *applier) txnRecord(id string) (*TxnRecord, error) {
	return readRecord(a.txns, id)
}

// putRecord stores transaction id's record.
func (a *applier) putRecord(id string, rec *TxnRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return a.put(a.txns, []byte(id), b)
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
func (a *applier) checkAndRead(compares []TxnCompare, ops []TxnOp, out *TxnOutcome) error {
	for i := range compares {
		rec, err := a.record(compares[i].Key)
		if err != nil {
			return err
		}
		if !compares[i].holds(rec) {
			out.Failed = append(out.Failed, compares[i].Index)
		}
	}
	for _, op := range ops {
		if op.Op != "get" {
			continue
		}
		rec, err := a.record(op.Key)
		if err != nil {
			return err
		}
		r := TxnRead{Index: op.Index}
		if rec != nil {
			r.Found, r.Version, r.Value = true, version(rec), append([]byte(nil), recValue(rec)...)
		}
		out.Reads = append(out.Reads, r)
	}
	return nil
}

// added returns what an add op would make of key's committed value.
func (a *applier) added(key string, delta int64) ([]byte, bool, error) {
	rec, err := a.record(key)
	if err != nil {
		return nil, false, err
	}
	v, ok := addTo(rec, delta)
	return v, ok, nil
}

// prepare applies a CmdTxnPrepare: in the record group it creates the
// pending record; then, if no other transaction's lock is in the way and
// the compares hold, it takes the locks, reads the gets and votes yes.
func (a *applier) prepare(p *TxnPrepare) (*TxnOutcome, error) {
	out := &TxnOutcome{}
	if a.now > p.Deadline {
		out.Code = CodeExpired
		return out, nil
	}
	isRecord := len(p.Participants) > 0
	if isRecord {
		open, err := a.openRecord(p, out)
		if err != nil {
			return nil, err
		}
		if !open {
			return out, nil
		}
	}
	keys, write, ok, err := a.evaluate(p.ID, p.Compares, p.Ops, out)
	if err != nil {
		return nil, err
	}
	if !ok {
		return out, a.abortRecordIf(isRecord, p.ID)
	}
	// The keys stay locked until resolution, so the sums computed now
	// are the sums then.
	added, ok, err := a.sums(p.Ops)
	if err != nil {
		return nil, err
	}
	if !ok {
		out.Code, out.Reads = CodeNotANumber, nil
		return out, a.abortRecordIf(isRecord, p.ID)
	}
	// With VersionAtPrepare a put or add takes this entry's version when
	// it is resolved (see Lock.Version), and the vote carries it. A key
	// this entry already changed (a plain write put before the prepare
	// in the same entry) has that version: refuse it, as a lock would.
	var ver uint64
	if p.VersionAtPrepare {
		ver = a.version()
		for k := range write {
			if _, changed := a.touched[k]; changed {
				out.Code = CodeConflict
				return out, a.abortRecordIf(isRecord, p.ID)
			}
		}
	}
	for _, op := range p.Ops {
		switch op.Op {
		case "delete":
			out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Deleted: a.exists(op.Key)})
		case "add":
			out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Value: added[op.Key], Version: ver})
		case "put":
			if ver != 0 {
				out.Writes = append(out.Writes, TxnWrite{Index: op.Index, Key: op.Key, Version: ver})
			}
		}
	}
	if err := a.lockKeys(p, keys, write, added); err != nil {
		return nil, err
	}
	out.Vote = true
	return out, nil
}

// openRecord creates, in the record group, a prepared transaction's
// pending record. It reports false, with out saying why, when the record
// was decided already: the transaction can no longer commit.
func (a *applier) openRecord(p *TxnPrepare, out *TxnOutcome) (bool, error) {
	rec, err := a.txnRecord(p.ID)
	if err != nil {
		return false, err
	}
	if rec != nil && rec.State != TxnPending {
		out.Code, out.State = CodeAborted, rec.State
		return false, nil
	}
	if rec == nil {
		rec = &TxnRecord{State: TxnPending, Deadline: p.Deadline, Participants: p.Participants}
		if err := a.putRecord(p.ID, rec); err != nil {
			return false, err
		}
	}
	out.State = TxnPending
	return true, nil
}

// evaluate checks transaction id (a one-phase transaction's is "")
// against the committed state: no other transaction's lock may stand in
// the way of the locks it needs (keys, the written ones in write), and its
// compares must hold. It reads the gets into out. When the transaction
// cannot go on, ok is false and out says why.
func (a *applier) evaluate(id string, compares []TxnCompare, ops []TxnOp, out *TxnOutcome) (keys []string, write map[string]*TxnOp, ok bool, err error) {
	keys, write = keyLocks(compares, ops)
	conf, err := a.conflicts(id, keys, write, false)
	if err != nil {
		return nil, nil, false, err
	}
	if len(conf) > 0 {
		out.Code, out.Conflicts = CodeConflict, conf
		return keys, write, false, nil
	}
	if err := a.checkAndRead(compares, ops, out); err != nil {
		return nil, nil, false, err
	}
	if len(out.Failed) > 0 {
		out.Code, out.Reads = CodeCompareFailed, nil
		return keys, write, false, nil
	}
	return keys, write, true, nil
}

// sums returns, by key, what the add ops make of their keys' committed
// values; ok is false if a value is not a decimal integer or a sum
// overflows.
func (a *applier) sums(ops []TxnOp) (added map[string][]byte, ok bool, err error) {
	added = map[string][]byte{}
	for _, op := range ops {
		if op.Op != "add" {
			continue
		}
		v, ok, err := a.added(op.Key, op.Delta)
		if err != nil || !ok {
			return nil, ok, err
		}
		added[op.Key] = v
	}
	return added, true, nil
}

// lockKeys takes prepared transaction p's locks on keys: a write lock,
// naming the new value, on those it writes, a read lock on the others.
func (a *applier) lockKeys(p *TxnPrepare, keys []string, write map[string]*TxnOp, added map[string][]byte) error {
	for _, k := range keys {
		ls, err := a.lockSet(k)
		if err != nil {
			return err
		}
		l := Lock{Txn: p.ID, RecordGroup: p.RecordGroup, Deadline: p.Deadline}
		if op, ok := write[k]; ok {
			l.Value, l.Delete, l.TTL = op.Value, op.Op == "delete", op.TTL
			if !l.Delete && p.VersionAtPrepare {
				l.Version = a.version()
			}
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
			return err
		}
	}
	kb, _ := json.Marshal(keys)
	return a.put(a.txnKeys, []byte(p.ID), kb)
}

// abortRecordIf aborts the record created by a record-group prepare that
// voted no: the transaction can no longer commit.
func (a *applier) abortRecordIf(isRecord bool, id string) error {
	if !isRecord {
		return nil
	}
	rec, err := a.txnRecord(id)
	if err != nil || rec == nil || rec.State != TxnPending {
		return err
	}
	rec.State, rec.Decided = TxnAborted, a.now
	return a.putRecord(id, rec)
}

// decide applies a CmdTxnDecide.
func (a *applier) decide(d *TxnDecide) (*TxnOutcome, error) {
	rec, err := a.txnRecord(d.ID)
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

// resolveCmd applies a CmdTxnResolve.
func (a *applier) resolveCmd(r *TxnResolve) (*TxnOutcome, error) {
	writes, err := a.resolve(r.ID, r.Commit)
	return &TxnOutcome{Writes: writes}, err
}

// resolve applies (commit) or drops transaction id's locks in this group.
func (a *applier) resolve(id string, commit bool) ([]TxnWrite, error) {
	keys, err := readTxnKeys(a.txnKeys, id)
	if err != nil || keys == nil {
		return nil, err // nothing here, or already resolved
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
					if w.Deleted = a.exists(k); w.Deleted {
						if err := a.delKey(k); err != nil {
							return nil, err
						}
					}
				} else {
					w.Version = cmp.Or(ls.Write.Version, a.version())
					if err := a.setKeyVersion(k, ls.Write.Value, ls.Write.TTL, w.Version); err != nil {
						return nil, err
					}
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
	return writes, a.del(a.txnKeys, []byte(id))
}

// recover applies a CmdTxnRecover.
func (a *applier) recover(r *TxnRecover) (*TxnOutcome, error) {
	rec, err := a.txnRecord(r.ID)
	if err != nil {
		return nil, err
	}
	switch {
	case rec == nil && (a.now > r.Deadline || r.Force):
		rec = &TxnRecord{State: TxnAborted, Deadline: r.Deadline, Decided: a.now}
		if r.Force {
			// Aborted ahead of its deadline: the record must outlive any
			// prepare still on its way, or that prepare would find no
			// record, create a pending one and let the coordinator commit
			// after the other groups' locks were dropped. No prepare can
			// carry a deadline past its own time plus MaxTxnLifetime.
			rec.Deadline = max(r.Deadline, a.now+int64(MaxTxnLifetime))
		}
		if err := a.putRecord(r.ID, rec); err != nil {
			return nil, err
		}
	case rec == nil:
		if failpoint.Mutant(failpoint.MutantAbsentRecordAborted) {
			return &TxnOutcome{State: TxnAborted}, nil // planted bug: nothing stops a later prepare
		}
		return &TxnOutcome{State: TxnAbsent}, nil
	case rec.State == TxnPending && (a.now > rec.Deadline || r.Force):
		rec.State, rec.Decided = TxnAborted, a.now
		if failpoint.Mutant(failpoint.MutantRecoverCommitsPending) && !r.Force {
			rec.State = TxnCommitted // planted bug: an abandoned transaction rolled forward
		}
		if err := a.putRecord(r.ID, rec); err != nil {
			return nil, err
		}
	case rec.State == TxnCommitted && failpoint.Mutant(failpoint.MutantRecoverAbortsCommitted):
		return &TxnOutcome{State: TxnAborted}, nil // planted bug: a committed transaction reported aborted
	}
	return &TxnOutcome{State: rec.State}, nil
}

// onePhase applies a CmdTxnOnePhase, once per idempotency key if it has
// one.
func (a *applier) onePhase(t *TxnOnePhase) (*TxnOutcome, error) {
	if t.Idem != nil {
		e, err := a.dedupGet(t.Idem.Key)
		if err != nil {
			return nil, err
		}
		if e != nil && !fpEqual(e.FP, t.Idem.FP) {
			return &TxnOutcome{Code: CodeIdempotencyMismatch}, nil
		}
		switch {
		case e != nil && e.Txn != "":
			// Claimed by a transaction over several groups: its outcome
			// is kept in another shape, by its coordinator. Not this
			// path's to run or to answer; nothing was applied.
			return &TxnOutcome{Code: CodeConflict}, nil
		case e != nil && !e.Reg: // a registration only: never run here
			out := &TxnOutcome{}
			if err := json.Unmarshal(e.Result, out); err != nil {
				return nil, corruptf("decode idempotency result of %q: %v", t.Idem.Key, err)
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

// onePhaseApply runs a one-phase transaction: its writes apply in this
// entry if no lock is in the way and its compares hold.
func (a *applier) onePhaseApply(t *TxnOnePhase) (*TxnOutcome, error) {
	out := &TxnOutcome{}
	_, _, ok, err := a.evaluate("", t.Compares, t.Ops, out)
	if err != nil {
		return nil, err
	}
	if !ok {
		return out, nil
	}
	added, ok, err := a.sums(t.Ops)
	if err != nil {
		return nil, err
	}
	if !ok {
		out.Code, out.Reads = CodeNotANumber, nil
		return out, nil
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
			w := TxnWrite{Index: op.Index, Key: op.Key, Version: a.version()}
			if op.Op == "add" {
				w.Value = v
			}
			out.Writes = append(out.Writes, w)
		case "delete":
			existed := a.exists(op.Key)
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

// forget applies a CmdTxnForget.
func (a *applier) forget(f *TxnForget) (*TxnOutcome, error) {
	rec, err := a.txnRecord(f.ID)
	if err != nil || rec == nil {
		return &TxnOutcome{State: TxnAbsent}, err
	}
	if rec.State == TxnPending || a.now <= rec.Deadline {
		// Until its deadline a prepare may still arrive: the decided
		// record must be there to refuse it.
		return &TxnOutcome{State: rec.State}, nil
	}
	return &TxnOutcome{State: TxnAbsent}, a.del(a.txns, []byte(f.ID))
}
