package store

import (
	"encoding/json"
	"fmt"
	"strings"

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

// GetLocked returns key's committed item (found is false if absent) and
// the write lock a transaction holds on it, if any.
func (db *DB) GetLocked(key string) (it kvd.Item, found bool, lock *Lock, err error) {
	err = db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx)
		rec, err := bs.kv.get([]byte(key))
		if err != nil {
			return err
		}
		if rec != nil {
			it, found = kvd.Item{Key: key, Version: version(rec), Value: append([]byte{}, recValue(rec)...)}, true
		}
		ls, err := readLockSet(bs.locks, key)
		if err != nil {
			return err
		}
		lock = ls.Write
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
		c := bucketsOf(tx).locks.cursor()
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

// readLockSet reads key's locks (none if absent).
func readLockSet(locks bucket, key string) (*LockSet, error) {
	b, err := locks.get([]byte(key))
	ls := &LockSet{}
	if err != nil || b == nil {
		return ls, err
	}
	if err := json.Unmarshal(b, ls); err != nil {
		return nil, corruptf("decode locks of %q: %v", key, err)
	}
	return ls, nil
}

// readRecord reads transaction id's record (nil if absent).
func readRecord(txns bucket, id string) (*TxnRecord, error) {
	b, err := txns.get([]byte(id))
	if err != nil || b == nil {
		return nil, err
	}
	rec := &TxnRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, corruptf("decode record %s: %v", id, err)
	}
	return rec, nil
}

// forEachLockSet calls fn with every locked key and its locks.
func forEachLockSet(locks bucket, fn func(key string, ls *LockSet) error) error {
	return locks.forEach(func(k, v []byte) error {
		var ls LockSet
		if err := json.Unmarshal(v, &ls); err != nil {
			return corruptf("decode locks of %q: %v", k, err)
		}
		return fn(string(k), &ls)
	})
}

// ExpiredLocks returns, one per transaction, the locks whose deadline is
// before now (Unix ns).
func (db *DB) ExpiredLocks(now int64) ([]Lock, error) {
	seen := map[string]bool{}
	var out []Lock
	err := db.view(func(tx *bolt.Tx) error {
		return forEachLockSet(bucketsOf(tx).locks, func(_ string, ls *LockSet) error {
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
		return forEachLockSet(bucketsOf(tx).locks, func(key string, ls *LockSet) error {
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
		return bucketsOf(tx).txns.forEach(func(k, v []byte) error {
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
		r, err = readRecord(bucketsOf(tx).txns, id)
		return err
	})
	if err != nil || r == nil {
		return TxnRecord{}, false, err
	}
	return *r, true, nil
}

// readTxnKeys returns the keys transaction id holds locks on (nil if
// none).
func readTxnKeys(txnKeys bucket, id string) ([]string, error) {
	kb, err := txnKeys.get([]byte(id))
	if err != nil || kb == nil {
		return nil, err
	}
	keys := []string{}
	if err := json.Unmarshal(kb, &keys); err != nil {
		return nil, corruptf("decode keys of %s: %v", id, err)
	}
	return keys, nil
}

// TxnWriteKeys returns the keys transaction id holds write locks on here.
func (db *DB) TxnWriteKeys(id string) ([]string, error) {
	var out []string
	err := db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx)
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
		bs := bucketsOf(tx)
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
