package store

import (
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
}

// put stores payload under key, sealed.
func (a *applier) put(b bucket, key, payload []byte) error {
	if b.hashed {
		if old := b.b.Get(key); old != nil {
			a.hash -= entryHash(b.tag, storedChecksum(b.tag, key, old))
		}
	}
	sealed, c := seal(b.tag, key, payload)
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

// owns reports whether this state may hold key.
func (a *applier) checker() checker {
	if a.group == 0 {
		return checker{now: a.now}
	}
	return checker{now: a.now, group: a.group, placement: a.placement}
}

// applyDocument decodes, checks and applies a command whose payload is a
// JSON document (transactions and idempotency records). A payload that
// does not decode or check is answered with an "invalid" outcome, alike on
// every replica.
func (a *applier) applyDocument(c *Cmd) (Result, error) {
	p, err := decodeDocument(c)
	if err == nil {
		err = a.checker().cmd(c, p)
	}
	if err != nil {
		return Result{Version: a.index, Err: err, Txn: &TxnOutcome{Code: CodeInvalid}}, nil
	}
	var out *TxnOutcome
	switch p := p.(type) {
	case *TxnPrepare:
		out, err = a.prepare(p)
	case *TxnDecide:
		out, err = a.decide(p)
	case *TxnResolve:
		var writes []TxnWrite
		writes, err = a.resolve(p.ID, p.Commit)
		out = &TxnOutcome{Writes: writes}
	case *TxnRecover:
		out, err = a.recover(p)
	case *TxnOnePhase:
		out, err = a.onePhase(p)
	case *TxnForget:
		out, err = a.forget(p)
	case *DedupClaim:
		st, err := a.dedupClaim(p)
		return Result{Version: a.index, Dedup: st}, err
	case *DedupDone:
		st, err := a.dedupDone(p)
		return Result{Version: a.index, Dedup: st}, err
	case *DedupRegister:
		st, err := a.dedupRegister(p)
		return Result{Version: a.index, Dedup: st}, err
	case *DedupGC:
		return Result{Version: a.index}, a.dedupGC(p)
	}
	if err != nil {
		return Result{}, err
	}
	return Result{Version: a.index, Txn: out}, nil
}
