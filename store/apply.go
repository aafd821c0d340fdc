package store

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kvd-project/kvd"
)

// applier applies commands inside one bbolt write transaction. Every
// change to a bucket goes through put and del, which seal the value and
// keep the state hash in step.
type applier struct {
	buckets
	histMax, histMaxBytes int
	index                 uint64
	now                   int64
	// seq numbers the changes within the current entry, for history.
	seq uint32
	// touched holds the keys the current entry changed so far: a
	// prepare taking versions at prepare refuses such a key, whose
	// version it would share.
	touched map[string]struct{}
	// histCount and histSize track the history's size during the batch
	// (loaded on first use); flushHistory prunes and stores them once.
	histLoaded          bool
	histCount, histSize uint64
	// group and placement decide which keys this state may hold: those
	// whose slot the stored map gives to group (no check if either is
	// unset), and which groups a transaction may name.
	group     kvd.GroupID
	placement *placement
	// hash is the state hash after the changes made so far.
	hash uint64
	// newMap is the cluster map the batch stored, if any.
	newMap *kvd.Map
	// gate is the group's freeze and restore (see backup.go);
	// gateChanged tells that the batch changed it.
	gate        *gate
	gateChanged bool
	// newTokens is the token table the batch stored, if any.
	newTokens *[]TokenRecord
	// base is the version base (loaded on first use; see version).
	baseLoaded bool
	base       uint64
}

// version returns the version of a change made by the current entry: its
// index plus the group's version base. The base is 0 until a slot move
// brings in keys whose versions (given by their former group) are above
// the index; it then rises so that every later change's version is above
// every version the group holds, and a key's version never goes back.
func (a *applier) version() uint64 {
	if !a.baseLoaded {
		a.base, _ = metaU64(a.meta, metaVersionBase)
		a.baseLoaded = true
	}
	return a.index + a.base
}

// raiseBase raises the version base so that the changes of later entries
// get versions above v.
func (a *applier) raiseBase(v uint64) error {
	if a.version() >= v {
		return nil
	}
	a.base = v - a.index
	return putMeta(a.meta, metaVersionBase, be64(a.base))
}

// Apply applies entries, in order, in one bbolt transaction, and records
// the last one's index and term in it. Entries at or below the applied
// index are skipped (their result is nil): this makes replay after a
// restart idempotent. It returns one result slice per entry, one Result per
// command.
//
// A command that is not valid (a forged or damaged one that got into the
// log) is not applied: its Result carries kvd.ErrInvalid or
// kvd.ErrWrongGroup, alike on every replica. An error means nothing was
// applied: ErrCorrupt when the state read back is damaged (the replica
// must be repaired), kvd.ErrClosed, or the error of the disk (ENOSPC,
// EIO); the caller must not skip the entries, since this replica would
// diverge, and may try again.
func (db *DB) Apply(entries []Entry) ([][]Result, error) {
	// A command that bbolt refuses as input (a key or value it cannot
	// store) fails alike on every replica: it is answered as invalid and
	// the batch applied again without it, rather than retried for ever.
	// The checks before it should leave nothing for this to catch.
	var refused map[cmdPos]error
	for {
		res, err := db.apply(entries, refused)
		var ce *cmdError
		if err != nil && errors.As(err, &ce) && bboltInputError(ce.err) {
			if refused == nil {
				refused = map[cmdPos]error{}
			}
			if _, again := refused[ce.pos]; !again {
				db.log.Error("a command the store cannot write is answered as invalid", "index", ce.pos.index, "command", ce.pos.cmd, "err", ce.err)
				refused[ce.pos] = fmt.Errorf("%w: cannot be stored: %v", kvd.ErrInvalid, ce.err)
				continue
			}
		}
		return res, err
	}
}

// cmdPos names a command: its entry's index and its place in the entry.
type cmdPos struct {
	index uint64
	cmd   int
}

// cmdError is the failure of one command of an entry.
type cmdError struct {
	pos cmdPos
	err error
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("entry %d command %d: %v", e.pos.index, e.pos.cmd, e.err)
}

func (e *cmdError) Unwrap() error { return e.err }

// bboltInputError reports an error bbolt returns for what it was given,
// not for the disk: the same on every replica.
func bboltInputError(err error) bool {
	for _, e := range []error{berrors.ErrKeyRequired, berrors.ErrKeyTooLarge, berrors.ErrValueTooLarge, berrors.ErrIncompatibleValue, berrors.ErrBucketNotFound} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// apply is one attempt of Apply, with the commands bbolt refused so far
// answered as invalid.
func (db *DB) apply(entries []Entry, refused map[cmdPos]error) ([][]Result, error) {
	applied := db.applied.Load()
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return nil, db.noHandle()
	}
	var a *applier
	var results [][]Result
	var last, lastTerm uint64
	err := guard(func() error {
		return db.h.bdb.Update(func(tx *bolt.Tx) error {
			a = db.newApplier(tx)
			var err error
			results, last, lastTerm, err = a.applyEntries(entries, applied, refused)
			if err != nil || last == applied {
				return err
			}
			return a.finish(last, lastTerm)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("apply entries: %w", err)
	}
	if last != applied {
		if a.newMap != nil {
			db.setMap(a.newMap, a.placement)
		}
		if a.gateChanged {
			db.gate.Store(a.gate)
		}
		if a.newTokens != nil {
			db.tokenTable.Store(a.newTokens)
		}
		db.stateHash.Store(a.hash)
		db.appliedTerm.Store(lastTerm)
		db.applied.Store(last)
		db.wake()
	}
	return results, nil
}

// newApplier starts applying in tx, from the state the DB has published.
func (db *DB) newApplier(tx *bolt.Tx) *applier {
	a := &applier{buckets: bucketsOf(tx, db.opts.Keys), histMax: db.opts.HistoryMax, histMaxBytes: db.opts.HistoryMaxBytes,
		group: db.opts.Group, placement: db.placement.Load(), hash: db.stateHash.Load(), gate: db.gate.Load()}
	if a.gate == nil {
		a.gate = &gate{}
	}
	// These buckets only grow at their end (keys are positions or
	// times): full pages on split, not bbolt's default half-full ones.
	a.hist.b.FillPercent, a.dedupAt.FillPercent = appendFill, appendFill
	return a
}

// applyEntries applies the entries past index applied, in order, and
// returns their results (nil for those skipped) and the index and term of
// the last entry.
func (a *applier) applyEntries(entries []Entry, applied uint64, refused map[cmdPos]error) (results [][]Result, last, lastTerm uint64, err error) {
	results = make([][]Result, len(entries))
	last = applied
	for i, e := range entries {
		if e.Index <= last {
			continue
		}
		last, lastTerm = e.Index, e.Term
		if e.Batch == nil {
			continue
		}
		a.index, a.now, a.seq = e.Index, e.Batch.Time, 0
		clear(a.touched)
		res := make([]Result, len(e.Batch.Cmds))
		for j := range e.Batch.Cmds {
			if err, ok := refused[cmdPos{e.Index, j}]; ok {
				res[j] = Result{Err: err}
				continue
			}
			r, err := a.apply(&e.Batch.Cmds[j])
			if err != nil {
				return nil, 0, 0, &cmdError{pos: cmdPos{e.Index, j}, err: err}
			}
			res[j] = r
		}
		results[i] = res
	}
	return results, last, lastTerm, nil
}

// finish ends a batch that applied entries up to index last: it prunes
// the history and records the applied index, its term and the state hash.
func (a *applier) finish(last, lastTerm uint64) error {
	if err := a.flushHistory(); err != nil {
		return err
	}
	if err := putMeta(a.meta, metaApplied, be64(last)); err != nil {
		return err
	}
	if err := putMeta(a.meta, metaStateHash, be64(a.hash)); err != nil {
		return err
	}
	return putMeta(a.meta, metaTerm, be64(lastTerm))
}

// apply applies one command: the one place that dispatches on a
// command's kind, for every kind. A command whose document does not
// decode, or that fails the checks (see CheckCmd), is not applied: its
// Result says why, alike on every replica. An error is the disk's or
// damage found, and stops the whole batch.
func (a *applier) apply(c *Cmd) (Result, error) {
	doc, err := decodeDocument(c)
	if err == nil {
		err = a.checker().cmd(c, doc)
	}
	if err == nil {
		err = a.paused(c, doc)
	}
	if err != nil {
		return a.invalid(c, err), nil
	}
	switch c.Kind {
	case CmdNoop:
		return Result{}, nil
	case CmdPut, CmdDelete:
		return a.write(c)
	case CmdExpire:
		return a.expire(c)
	case CmdHashCheck:
		return a.hashCheck()
	case CmdSetMap:
		return a.setMap(c)
	case CmdChangeMap:
		return a.changeMap(c)
	case CmdTxnPrepare:
		return a.txnResult(a.prepare(doc.(*TxnPrepare)))
	case CmdTxnDecide:
		return a.txnResult(a.decide(doc.(*TxnDecide)))
	case CmdTxnResolve:
		return a.txnResult(a.resolveCmd(doc.(*TxnResolve)))
	case CmdTxnRecover:
		return a.txnResult(a.recover(doc.(*TxnRecover)))
	case CmdTxnOnePhase:
		return a.txnResult(a.onePhase(doc.(*TxnOnePhase)))
	case CmdTxnForget:
		return a.txnResult(a.forget(doc.(*TxnForget)))
	case CmdDedupClaim:
		return a.dedupResult(a.dedupClaim(doc.(*DedupClaim)))
	case CmdDedupDone:
		return a.dedupResult(a.dedupDone(doc.(*DedupDone)))
	case CmdDedupRegister:
		return a.dedupResult(a.dedupRegister(doc.(*DedupRegister)))
	case CmdDedupGC:
		return Result{Version: a.index}, a.dedupGC(doc.(*DedupGC))
	case CmdMoveIngest:
		return a.moveIngest(doc.(*MoveIngest))
	case CmdDropKeys:
		return a.dropKeys(doc.(*DropKeys))
	case CmdFreeze:
		return a.freeze(doc.(*Freeze))
	case CmdRestore:
		return a.restore(doc.(*RestoreOp))
	case CmdTokens:
		return a.tokens(doc.(*TokenOp))
	}
	return Result{Err: fmt.Errorf("%w: unknown command kind %d", kvd.ErrInvalid, c.Kind)}, nil
}

// invalid answers a command that was refused. A command with a document
// also gets an outcome that says so, for callers that read only the
// outcome.
func (a *applier) invalid(c *Cmd, err error) Result {
	if c.Kind.hasDocument() {
		code := CodeInvalid
		if errors.Is(err, kvd.ErrWrongGroup) || errors.Is(err, kvd.ErrUnavailable) {
			code = CodeMoving
		}
		return Result{Version: a.index, Err: err, Txn: &TxnOutcome{Code: code}}
	}
	return Result{Err: err}
}

// txnResult answers a transaction command.
func (a *applier) txnResult(out *TxnOutcome, err error) (Result, error) {
	if err != nil {
		return Result{}, err
	}
	return Result{Version: a.index, Txn: out}, nil
}

// dedupResult answers an idempotency command.
func (a *applier) dedupResult(st *DedupState, err error) (Result, error) {
	return Result{Version: a.index, Dedup: st}, err
}

// put stores payload under key, sealed.
func (a *applier) put(b bucket, key, payload []byte) error {
	if b.hashed {
		if old := b.b.Get(key); old != nil {
			a.hash -= entryHash(b.tag, storedChecksum(b.tag, key, old))
		}
	}
	sealed, c := seal(b.keys, b.tag, key, payload)
	if b.hashed {
		a.hash += entryHash(b.tag, c)
	}
	return b.b.Put(key, sealed)
}

// del deletes key.
func (a *applier) del(b bucket, key []byte) error {
	if b.hashed {
		old := b.b.Get(key)
		if old == nil {
			return nil
		}
		a.hash -= entryHash(b.tag, storedChecksum(b.tag, key, old))
	}
	return b.b.Delete(key)
}

// checker returns the checks of the commands of the current entry: at
// its time, against the map stored so far.
func (a *applier) checker() checker {
	if a.group == 0 {
		return checker{now: a.now}
	}
	return checker{now: a.now, group: a.group, placement: a.placement}
}
