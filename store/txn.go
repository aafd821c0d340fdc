package store

import (
	"encoding/json"

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
	// Version is the version the write takes when it is resolved: that
	// of the entry that prepared it (the lock keeps every other change
	// off the key until then, so versions still strictly grow), known
	// at the prepare so a transaction can be answered before its
	// resolution. 0 in a lock taken by an older kvd: the resolving
	// entry's version, as it was then.
	Version uint64 `json:"version,omitempty"`
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
