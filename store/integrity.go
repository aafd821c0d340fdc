package store

import (
	"encoding/binary"
	"fmt"
	"github.com/kvd-project/kvd/internal/atrest"

	bolt "go.etcd.io/bbolt"
)

// The state hash is the sum (mod 2^64) of entryHash over every entry of
// the replicated buckets (kv, locks, txnkeys, txns, dedup): the data a
// command reads when it is applied. The history and the indexes derived
// from the data (expiry, dedup_at) are left out, since the history is
// pruned once per applied batch and batches differ between replicas.
//
// Apply keeps the hash up to date with every change and stores it with
// the applied index, in the same transaction. So:
//   - replicas at the same applied index hold the same hash, unless one
//     diverged (a non-deterministic apply) or was damaged and a read has
//     not met the damage yet: CmdHashCheck records the hash at one index
//     of the log, on every replica alike, for the leader to compare;
//   - Verify recomputes the sum from what is on disk and checks every
//     value's seal: a mismatch with the stored hash finds damage (a lost
//     or altered entry) without another replica.

// VerifyReport is what Verify found.
type VerifyReport struct {
	// Applied is the applied index of the state verified.
	Applied uint64 `json:"applied"`
	// Entries and Bytes count the values checked.
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	// Hash is the state hash recomputed from disk, Stored the one the
	// state recorded; they differ only if the state is damaged.
	Hash   uint64 `json:"hash"`
	Stored uint64 `json:"stored"`
}

// Verify reads the whole state in one read transaction: it checks every
// stored value's seal and recomputes the state hash. An error wrapping
// ErrCorrupt names the damage found.
func (db *DB) Verify() (VerifyReport, error) {
	var r VerifyReport
	err := db.view(func(tx *bolt.Tx) error {
		var err error
		r, err = verifyTx(tx, db.opts.Keys)
		return err
	})
	return r, err
}

func verifyTx(tx *bolt.Tx, keys *atrest.Keys) (VerifyReport, error) {
	var r VerifyReport
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return r, corruptf("bucket %s is missing", name)
		}
	}
	bs := bucketsOf(tx, keys)
	var err error
	if r.Applied, err = metaU64(bs.meta, metaApplied); err != nil {
		return r, err
	}
	stored, err := bs.meta.get(metaStateHash)
	if err != nil {
		return r, err
	}
	// The key-only indexes carry no seal: walking them reads every page,
	// so damage to their structure shows (as a bbolt panic, caught).
	for _, b := range []*bolt.Bucket{bs.expiry, bs.dedupAt} {
		if err := b.ForEach(func(k, _ []byte) error {
			if len(k) < 8 {
				return corruptf("index key %x is shorter than its time", k)
			}
			r.Entries++
			r.Bytes += int64(len(k))
			return nil
		}); err != nil {
			return r, err
		}
	}
	for _, b := range []bucket{bs.hist, bs.meta} {
		if err := b.b.ForEach(func(k, v []byte) error {
			if _, _, err := unseal(b.keys, b.tag, k, v); err != nil {
				return err
			}
			r.Entries++
			r.Bytes += int64(len(v))
			return nil
		}); err != nil {
			return r, err
		}
	}
	if r.Hash, err = sumBuckets(bs, true, &r); err != nil {
		return r, err
	}
	r.Stored = u64(stored)
	if stored == nil {
		r.Stored = r.Hash // written before state hashes existed: nothing to compare
	}
	if r.Hash != r.Stored {
		return r, corruptf("state hash at index %d is %016x, the state recorded %016x: an entry was lost or altered", r.Applied, r.Hash, r.Stored)
	}
	return r, nil
}

func sumBuckets(bs buckets, check bool, r *VerifyReport) (uint64, error) {
	var sum uint64
	for _, b := range []bucket{bs.kv, bs.locks, bs.txnKeys, bs.txns, bs.dedup, bs.restoreB} {
		err := b.b.ForEach(func(k, v []byte) error {
			var c uint32
			if check {
				var err error
				if _, c, err = unseal(b.keys, b.tag, k, v); err != nil {
					return err
				}
			} else {
				c = storedChecksum(b.tag, k, v)
			}
			sum += entryHash(b.tag, c)
			r.Entries++
			r.Bytes += int64(len(v))
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return sum, nil
}

// HashCheck returns the index and the state hash recorded by the last
// CmdHashCheck applied (0, 0 if none).
func (db *DB) HashCheck() (index, hash uint64, err error) {
	err = db.view(func(tx *bolt.Tx) error {
		b, err := bucketsOf(tx, db.opts.Keys).meta.get(metaHashCheck)
		if err != nil || b == nil {
			return err
		}
		if len(b) != 16 {
			return corruptf("hash check record of %d bytes", len(b))
		}
		index, hash = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("read hash check: %w", err)
	}
	return index, hash, nil
}
