package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"

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
		return Result{Version: a.version()}, a.setKey(c.Key, c.Value, c.TTL)
	}
	if cur == 0 {
		return Result{}, nil
	}
	return Result{Version: a.version(), Deleted: true}, a.delKey(c.Key)
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
	return Result{Version: a.version(), Deleted: true}, a.delKey(c.Key)
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
	return a.storeMap(m, 0, false)
}

// MapChange is the payload of a CmdChangeMap: Map replaces the stored map
// if the stored map's epoch is Expect, and Map's epoch is Expect + 1.
type MapChange struct {
	Expect uint64   `json:"expect"`
	Map    *kvd.Map `json:"map"`
}

// changeMap applies a CmdChangeMap: a compare-and-set of the stored map
// on its epoch. A stale expectation is answered kvd.ErrConflict with the
// stored epoch as Version.
func (a *applier) changeMap(c *Cmd) (Result, error) {
	var mc MapChange
	if err := json.Unmarshal(c.Data, &mc); err != nil || mc.Map == nil {
		return Result{Err: fmt.Errorf("%w: cluster map change: %v", kvd.ErrInvalid, err)}, nil
	}
	if mc.Map.Epoch != mc.Expect+1 {
		return Result{Err: fmt.Errorf("%w: cluster map change from epoch %d to %d", kvd.ErrInvalid, mc.Expect, mc.Map.Epoch)}, nil
	}
	return a.storeMap(mc.Map, mc.Expect, true)
}

// storeMap stores m if its epoch is newer than the stored map's (and, if
// cas, the stored epoch is expect).
func (a *applier) storeMap(m *kvd.Map, expect uint64, cas bool) (Result, error) {
	if err := m.Validate(); err != nil {
		return Result{Err: fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)}, nil
	}
	old, err := storedMap(a.meta)
	if err != nil {
		return Result{}, err
	}
	var stored uint64
	if old != nil {
		stored = old.Epoch
	}
	if cas && stored != expect {
		return Result{Err: fmt.Errorf("%w: the cluster map changed meanwhile (epoch %d, not %d)", kvd.ErrConflict, stored, expect), Version: stored}, nil
	}
	if stored >= m.Epoch {
		return Result{Version: stored}, nil
	}
	data, err := json.Marshal(m)
	if err != nil {
		return Result{Err: fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)}, nil
	}
	if err := putMeta(a.meta, metaMap, data); err != nil {
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
	if raw[0] == encryptedMark {
		// An encrypted record's head is read by opening it.
		var err error
		if rec, _, err = unseal(a.kv.keys, tagKV, []byte(key), raw); err != nil {
			return 0, 0
		}
	}
	return version(rec), recExpires(rec)
}

// exists reports whether key holds a committed value. Whether a record
// is there does not depend on its bytes, so its seal is not checked
// (which would read the whole value): a damaged value is found by what
// reads it.
func (a *applier) exists(key string) bool {
	return a.kv.b.Get([]byte(key)) != nil
}

func expiryKey(at int64, key string) []byte {
	b := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(b, uint64(at))
	return append(b, key...)
}

// setKey writes key's value at the current index, with a TTL if ttl > 0,
// keeping the expiry index and the history in step.
func (a *applier) setKey(key string, val []byte, ttl int64) error {
	return a.setKeyVersion(key, val, ttl, a.version())
}

// setKeyVersion is setKey with the version the value takes: a transaction's
// write takes its prepare's (see Lock.Version).
func (a *applier) setKeyVersion(key string, val []byte, ttl int64, ver uint64) error {
	if _, exp := a.recordHead(key); exp != 0 {
		if err := a.expiry.Delete(expiryKey(exp, key)); err != nil {
			return err
		}
	}
	var exp int64
	if ttl > 0 {
		exp = a.now + ttl
		if exp < a.now { // past the clock's range: never, in effect
			exp = math.MaxInt64
		}
		if err := a.expiry.Put(expiryKey(exp, key), nil); err != nil {
			return err
		}
	}
	if err := a.put(a.kv, []byte(key), encodeRecord(ver, exp, val)); err != nil {
		return err
	}
	a.touch(key)
	return a.logChangeAt(false, key, val, ver)
}

// touch records that the current entry changed key.
func (a *applier) touch(key string) {
	if a.touched == nil {
		a.touched = map[string]struct{}{}
	}
	a.touched[key] = struct{}{}
}

// delKey deletes key (which must exist) at the current index.
func (a *applier) delKey(key string) error {
	if _, exp := a.recordHead(key); exp != 0 {
		if err := a.expiry.Delete(expiryKey(exp, key)); err != nil {
			return err
		}
	}
	if err := a.del(a.kv, []byte(key)); err != nil {
		return err
	}
	a.touch(key)
	return a.logChange(true, key, nil)
}
