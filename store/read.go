package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
)

// The DB's reads of keys, locks, transaction records and expiries. Each
// runs in its own read-only transaction (see view) and sees only
// committed batches; what it returns is copied out of bbolt's memory.

// Get returns the item stored under key, or an error wrapping
// kvd.ErrNotFound.
func (db *DB) Get(key string) (kvd.Item, error) {
	var it kvd.Item
	err := db.view(func(tx *bolt.Tx) error {
		rec, err := bucketsOf(tx, db.opts.Keys).kv.get([]byte(key))
		if err != nil {
			return err
		}
		if rec == nil {
			return kvd.ErrNotFound
		}
		it = decodeItem([]byte(key), rec)
		return nil
	})
	if err != nil {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
	}
	return it, nil
}

// Scan returns the items selected by o in key order, at most o.Limit of
// them and at most o.MaxBytes of keys and values (but at least one), and,
// when more items follow the last one returned, the key of the next one
// ("" otherwise). Keys of slots the group does not serve reads of (see
// Readable: leftovers of a move, or copies still arriving) are skipped.
func (db *DB) Scan(o kvd.ScanOptions) ([]kvd.Item, string, error) {
	if err := db.sealedErr(); err != nil {
		return nil, "", fmt.Errorf("scan: %w", err)
	}
	var items []kvd.Item
	next := ""
	size := 0
	err := db.view(func(tx *bolt.Tx) error {
		p := db.placement.Load()
		c := bucketsOf(tx, db.opts.Keys).kv.cursor()
		seek := max(o.Start, o.Prefix)
		for k, v := c.seek([]byte(seek)); k != nil; k, v = c.next() {
			ks := string(k)
			if o.End != "" && ks >= o.End {
				break
			}
			if !strings.HasPrefix(ks, o.Prefix) {
				break
			}
			if p != nil && db.opts.Group != 0 && p.readable(db.opts.Group, kvd.Slot(ks)) != nil {
				continue
			}
			n := len(k) + len(recValue(v))
			if (o.Limit > 0 && len(items) == o.Limit) || (o.MaxBytes > 0 && len(items) > 0 && size+n > o.MaxBytes) {
				next = ks
				break
			}
			size += n
			items = append(items, decodeItem(k, v))
		}
		return c.err
	})
	if err != nil {
		return nil, "", fmt.Errorf("scan: %w", err)
	}
	return items, next, nil
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
		bs := bucketsOf(tx, db.opts.Keys)
		for i, k := range keys {
			st := KeyState{Key: k}
			rec, err := bs.kv.get([]byte(k))
			if err != nil {
				return err
			}
			if rec != nil {
				st.Found, st.Version, st.Value = true, version(rec), append([]byte(nil), recValue(rec)...)
			}
			ls, err := readLockSet(bs.locks, k)
			if err != nil {
				return err
			}
			st.Lock = ls.Write
			out[i] = st
		}
		return nil
	})
	return out, err
}

// GetLocked returns key's committed item (found is false if absent) and
// the write lock a transaction holds on it, if any.
func (db *DB) GetLocked(key string) (it kvd.Item, found bool, lock *Lock, err error) {
	it, _, found, lock, err = db.GetLockedExpiring(key)
	return it, found, lock, err
}

// GetLockedExpiring is GetLocked with when the item's TTL ends (zero:
// it has none), read with it.
func (db *DB) GetLockedExpiring(key string) (it kvd.Item, expires time.Time, found bool, lock *Lock, err error) {
	err = db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		rec, err := bs.kv.get([]byte(key))
		if err != nil {
			return err
		}
		if rec != nil {
			it, found = kvd.Item{Key: key, Version: version(rec), Value: append([]byte{}, recValue(rec)...)}, true
			if exp := recExpires(rec); exp != 0 {
				expires = time.Unix(0, exp).UTC()
			}
		}
		ls, err := readLockSet(bs.locks, key)
		if err != nil {
			return err
		}
		lock = ls.Write
		return nil
	})
	if err != nil {
		return kvd.Item{}, time.Time{}, false, nil, fmt.Errorf("get %q: %w", key, err)
	}
	return it, expires, found, lock, nil
}

// WriteLocks returns the write locks held on keys selected by o (its
// Limit ignored), by key.
func (db *DB) WriteLocks(o kvd.ScanOptions) (map[string]Lock, error) {
	out := map[string]Lock{}
	err := db.view(func(tx *bolt.Tx) error {
		c := bucketsOf(tx, db.opts.Keys).locks.cursor()
		for k, v := c.seek([]byte(max(o.Start, o.Prefix))); k != nil; k, v = c.next() {
			ks := string(k)
			if (o.End != "" && ks >= o.End) || !strings.HasPrefix(ks, o.Prefix) {
				break
			}
			var ls LockSet
			if err := json.Unmarshal(v, &ls); err != nil {
				return corruptf("decode locks of %q: %v", ks, err)
			}
			if ls.Write != nil {
				out[ks] = *ls.Write
			}
		}
		return c.err
	})
	return out, err
}

// ExpiredLocks returns, one per transaction, the locks whose deadline is
// before now (Unix ns).
func (db *DB) ExpiredLocks(now int64) ([]Lock, error) {
	seen := map[string]bool{}
	var out []Lock
	err := db.view(func(tx *bolt.Tx) error {
		return forEachLockSet(bucketsOf(tx, db.opts.Keys).locks, func(_ string, ls *LockSet) error {
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

// HeldLock is one lock a transaction holds on a key, as an operator sees
// it.
type HeldLock struct {
	Txn         string      `json:"txn"`
	Key         string      `json:"key"`
	Write       bool        `json:"write"`
	RecordGroup kvd.GroupID `json:"record_group"`
	Deadline    int64       `json:"deadline"`
}

// Locks returns every lock held here, in key order.
func (db *DB) Locks() ([]HeldLock, error) {
	var out []HeldLock
	err := db.view(func(tx *bolt.Tx) error {
		return forEachLockSet(bucketsOf(tx, db.opts.Keys).locks, func(key string, ls *LockSet) error {
			if ls.Write != nil {
				out = append(out, HeldLock{Txn: ls.Write.Txn, Key: key, Write: true, RecordGroup: ls.Write.RecordGroup, Deadline: ls.Write.Deadline})
			}
			for _, r := range ls.Reads {
				out = append(out, HeldLock{Txn: r.Txn, Key: key, RecordGroup: r.RecordGroup, Deadline: r.Deadline})
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
		return bucketsOf(tx, db.opts.Keys).txns.forEach(func(k, v []byte) error {
			var r TxnRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return corruptf("decode record %s: %v", k, err)
			}
			out[string(k)] = r
			return nil
		})
	})
	return out, err
}

// Record returns transaction id's record, if this replica keeps it.
func (db *DB) Record(id string) (TxnRecord, bool, error) {
	var r *TxnRecord
	err := db.view(func(tx *bolt.Tx) error {
		var err error
		r, err = readRecord(bucketsOf(tx, db.opts.Keys).txns, id)
		return err
	})
	if err != nil || r == nil {
		return TxnRecord{}, false, err
	}
	return *r, true, nil
}

// TxnWriteKeys returns the keys transaction id holds write locks on here.
func (db *DB) TxnWriteKeys(id string) ([]string, error) {
	var out []string
	err := db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		keys, err := readTxnKeys(bs.txnKeys, id)
		if err != nil {
			return err
		}
		for _, k := range keys {
			ls, err := readLockSet(bs.locks, k)
			if err != nil {
				return err
			}
			if ls.Write != nil && ls.Write.Txn == id {
				out = append(out, k)
			}
		}
		return nil
	})
	return out, err
}

// Expired returns up to limit keys whose TTL ran out at or before now
// (Unix ns), with the version the expiry applies to.
func (db *DB) Expired(now int64, limit int) ([]ExpiredKey, error) {
	var out []ExpiredKey
	err := db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		c := bs.expiry.Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if len(k) < 8 || int64(binary.BigEndian.Uint64(k[:8])) > now {
				break
			}
			key := string(k[8:])
			rec, err := bs.kv.get(k[8:])
			if err != nil {
				return err
			}
			if rec == nil {
				continue
			}
			out = append(out, ExpiredKey{Key: key, Version: version(rec)})
		}
		return nil
	})
	return out, err
}

// ExpiredKey is a key whose TTL has run out.
type ExpiredKey struct {
	Key     string
	Version uint64
}

// HasKeys tells whether the state holds any key (of any slot).
func (db *DB) HasKeys() (bool, error) {
	var has bool
	err := db.view(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketKV).Cursor().First()
		has = k != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("has keys: %w", err)
	}
	return has, nil
}
