package store

import (
	"encoding/json"
	"fmt"

	"github.com/kvd-project/kvd"
)

// write applies a plain put or delete (CmdPut, CmdDelete), once per
// idempotency key if it has one.
func (a *applier) write(c *Cmd) (Result, error) {
	if r, done, err := a.replay(c.Idem); err != nil || done {
		return r, err
	}
	r, err := a.condWrite(c)
	if err != nil {
		return Result{}, err
	}
	return r, a.remember(c.Idem, r)
}

// condWrite applies a plain put or delete, if its condition holds and no
// transaction holds a lock on its key.
func (a *applier) condWrite(c *Cmd) (Result, error) {
	if ls, err := a.locked(c.Key); err != nil || ls != nil {
		return Result{Err: kvd.ErrConflict, Locks: ls}, err
	}
	var cur uint64
	if c.Cond.Kind == kvd.CondNone {
		cur, _ = a.recordHead(c.Key)
	} else {
		rec, err := a.record(c.Key)
		if err != nil {
			return Result{}, err
		}
		cur = version(rec)
	}
	if !c.Cond.Holds(cur) {
		return Result{Version: cur, Err: kvd.ErrPreconditionFailed}, nil
	}
	if c.Kind == CmdPut {
		return Result{Version: a.index}, a.setKey(c.Key, c.Value, c.TTL)
	}
	if cur == 0 {
		return Result{}, nil
	}
	return Result{Version: a.index, Deleted: true}, a.delKey(c.Key)
}

// expire deletes a key whose TTL ran out (CmdExpire), if it still holds
// the version the expiry was proposed for.
func (a *applier) expire(c *Cmd) (Result, error) {
	rec, err := a.record(c.Key)
	if err != nil {
		return Result{}, err
	}
	if rec == nil || version(rec) != c.Cond.Version || recExpires(rec) == 0 || recExpires(rec) > a.now {
		return Result{}, nil // rewritten or gone since
	}
	if ls, err := a.locked(c.Key); err != nil || ls != nil {
		return Result{Err: kvd.ErrConflict}, err // a transaction holds it: later
	}
	return Result{Version: a.index, Deleted: true}, a.delKey(c.Key)
}

// hashCheck records the state hash at the current index (CmdHashCheck).
func (a *applier) hashCheck() (Result, error) {
	return Result{Version: a.index, Hash: a.hash}, putMeta(a.meta, metaHashCheck, append(be64(a.index), be64(a.hash)...))
}

// setMap stores the cluster map of a CmdSetMap if its epoch is newer than
// the stored one's; the keys the batch may write follow it from the next
// command on.
func (a *applier) setMap(c *Cmd) (Result, error) {
	m := new(kvd.Map)
	if err := json.Unmarshal(c.Data, m); err != nil {
		// Validated before proposing; a bad map is ignored alike on
		// every replica rather than stopping them all.
		return Result{Err: fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)}, nil
	}
	if err := m.Validate(); err != nil {
		return Result{Err: fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)}, nil
	}
	old, err := storedMap(a.meta)
	if err != nil {
		return Result{}, err
	}
	if old != nil && old.Epoch >= m.Epoch {
		return Result{Version: old.Epoch}, nil
	}
	if err := putMeta(a.meta, metaMap, c.Data); err != nil {
		return Result{}, err
	}
	a.newMap, a.placement = m, placementOf(m)
	return Result{Version: m.Epoch}, nil
}

// record returns key's stored record (nil if absent), checked.
func (a *applier) record(key string) ([]byte, error) { return a.kv.get([]byte(key)) }

// recordHead returns the version and expiry of key's stored record (0, 0
// if absent) without checking its seal: it reads the record's first bytes
// only, where checking would read (and map into memory) the whole value.
// It serves what overwrites a key whatever its value: the version of an
// unconditional write and the expiry index to clean up. Damage there
// leaves at worst a stale expiry entry, which expiry itself ignores
// (CmdExpire checks the record); any read of the value still checks it.
func (a *applier) recordHead(key string) (ver uint64, expires int64) {
	raw := a.kv.b.Get([]byte(key))
	if raw == nil {
		return 0, 0
	}
	rec := raw[sealOverhead(raw):]
	return version(rec), recExpires(rec)
}
