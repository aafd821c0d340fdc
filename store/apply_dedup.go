package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Idempotency records live in the dedup bucket of the group that applies
// the write (for a cross-group transaction, its record group), written in
// the same entry as the write they describe, so a retry finds exactly
// what happened. A repeat of the same request (same fingerprint) within
// the retention window gets the first outcome back and applies nothing;
// a different request under the same key is refused. The leader removes
// records older than the window (CmdDedupGC).
//
// One group is the key's home: the group its own slot maps to. A request
// whose write lands in another group first registers its fingerprint
// there (CmdDedupRegister), so every use of a key meets every other use
// in the home group, whichever groups they write: a reuse for a
// different request is refused before anything is written.

var (
	bucketDedup = []byte("dedup")
	// bucketDedupAt orders idempotency records by creation time (8-byte
	// Unix ns, then the token), so collecting old ones reads only those.
	bucketDedupAt = []byte("dedup_at")
)

// dedupEntry is a stored idempotency record.
type dedupEntry struct {
	FP  []byte `json:"fp"`
	At  int64  `json:"at"`
	Txn string `json:"txn,omitempty"`
	// Done is set once Result holds the outcome.
	Done   bool            `json:"done"`
	Result json.RawMessage `json:"result,omitempty"`
	// Reg marks a registration only: the request writes in another group,
	// where its outcome is kept.
	Reg bool `json:"reg,omitempty"`
}

// storedResult is a plain write's outcome, as remembered.
type storedResult struct {
	Version uint64 `json:"version,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
	Err     string `json:"err,omitempty"`
}

// dedupGet reads key's idempotency record (nil if absent).
func (a *applier) dedupGet(key string) (*dedupEntry, error) {
	b, err := a.dedup.get([]byte(key))
	if err != nil || b == nil {
		return nil, err
	}
	e := &dedupEntry{}
	if err := json.Unmarshal(b, e); err != nil {
		return nil, corruptf("decode idempotency record %q: %v", key, err)
	}
	return e, nil
}

// dedupCreate stores a new record and indexes it by time.
func (a *applier) dedupCreate(key string, e *dedupEntry) error {
	if err := a.dedupAt.Put(dedupAtKey(e.At, key), nil); err != nil {
		return err
	}
	return a.dedupPut(key, e)
}

func dedupAtKey(at int64, key string) []byte {
	k := make([]byte, 8+len(key))
	binary.BigEndian.PutUint64(k, uint64(at))
	copy(k[8:], key)
	return k
}

// dedupPut stores a record (an update, or after dedupCreate).
func (a *applier) dedupPut(key string, e *dedupEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return a.put(a.dedup, []byte(key), b)
}

func fpEqual(a, b []byte) bool { return string(a) == string(b) }

// replay looks up a plain write's idempotency record: done is set when
// the write must not apply, and r is then its answer.
func (a *applier) replay(i *Idem) (r Result, done bool, err error) {
	if i == nil {
		return Result{}, false, nil
	}
	e, err := a.dedupGet(i.Key)
	if err != nil || e == nil {
		return Result{}, false, err
	}
	if !fpEqual(e.FP, i.FP) {
		return Result{Err: kvd.ErrIdempotencyMismatch}, true, nil
	}
	if e.Reg {
		return Result{}, false, nil // registered here, never run here
	}
	if e.Txn != "" || !e.Done {
		// Held by a transaction over several groups, whose outcome its
		// coordinator keeps: nothing is applied here.
		return Result{Err: kvd.ErrConflict}, true, nil
	}
	var sr storedResult
	if err := json.Unmarshal(e.Result, &sr); err != nil {
		return Result{}, false, corruptf("decode idempotency result of %q: %v", i.Key, err)
	}
	return Result{Version: sr.Version, Deleted: sr.Deleted, Err: api.ErrOfCode(sr.Err)}, true, nil
}

// remember stores a plain write's outcome under its idempotency key.
// Conflicts are not remembered: nothing applied, and a retry should try
// again.
func (a *applier) remember(i *Idem, r Result) error {
	if i == nil || errors.Is(r.Err, kvd.ErrConflict) {
		return nil
	}
	sr := storedResult{Version: r.Version, Deleted: r.Deleted}
	if errors.Is(r.Err, kvd.ErrPreconditionFailed) {
		// The only refusal remembered: the bytes are state, alike on
		// every replica and every version of kvd.
		sr.Err = api.CodePreconditionFailed
	}
	b, _ := json.Marshal(sr)
	return a.dedupCreate(i.Key, &dedupEntry{FP: i.FP, At: a.now, Done: true, Result: b})
}

// dedupClaim applies a CmdDedupClaim.
func (a *applier) dedupClaim(c *DedupClaim) (*DedupState, error) {
	e, err := a.dedupGet(c.Idem.Key)
	if err != nil {
		return nil, err
	}
	if e != nil && !fpEqual(e.FP, c.Idem.FP) {
		return &DedupState{Status: DedupMismatch}, nil
	}
	if e == nil || e.Reg {
		return &DedupState{Status: DedupNew, Txn: c.Txn}, a.dedupCreate(c.Idem.Key, &dedupEntry{FP: c.Idem.FP, At: a.now, Txn: c.Txn})
	}
	return &DedupState{Status: DedupExisting, Txn: e.Txn, At: e.At, Done: e.Done, Response: e.Result}, nil
}

// dedupDone applies a CmdDedupDone.
func (a *applier) dedupDone(d *DedupDone) (*DedupState, error) {
	e, err := a.dedupGet(d.Idem.Key)
	if err != nil {
		return nil, err
	}
	if e == nil || !fpEqual(e.FP, d.Idem.FP) || e.Done || e.Reg {
		return &DedupState{Status: DedupExisting}, nil
	}
	if d.Release {
		// The transaction did not run (a conflict: nothing applied, and
		// it was aborted): free the key so a retry runs it afresh.
		if e.Txn != d.Txn {
			return &DedupState{Status: DedupExisting, Txn: e.Txn, At: e.At}, nil
		}
		return &DedupState{Status: DedupReleased}, a.del(a.dedup, []byte(d.Idem.Key))
	}
	e.Done, e.Result = true, d.Response
	return &DedupState{Status: DedupExisting, Txn: e.Txn, Done: true, Response: e.Result}, a.dedupPut(d.Idem.Key, e)
}

// dedupRegister applies a CmdDedupRegister.
func (a *applier) dedupRegister(r *DedupRegister) (*DedupState, error) {
	e, err := a.dedupGet(r.Idem.Key)
	switch {
	case err != nil:
		return nil, err
	case e == nil:
		return &DedupState{Status: DedupNew}, a.dedupCreate(r.Idem.Key, &dedupEntry{FP: r.Idem.FP, At: a.now, Reg: true})
	case !fpEqual(e.FP, r.Idem.FP):
		return &DedupState{Status: DedupMismatch}, nil
	}
	return &DedupState{Status: DedupExisting, At: e.At}, nil
}

// dedupGC applies a CmdDedupGC.
func (a *applier) dedupGC(g *DedupGC) error {
	c := a.dedupAt.Cursor()
	for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k[:8])) < g.Before; k, _ = c.First() {
		key := string(k[8:])
		e, err := a.dedupGet(key)
		if err != nil {
			return err
		}
		// A released and re-created record has a newer entry of its own
		// in the index: leave it.
		if e != nil && e.At == int64(binary.BigEndian.Uint64(k[:8])) {
			if err := a.del(a.dedup, []byte(key)); err != nil {
				return err
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}
