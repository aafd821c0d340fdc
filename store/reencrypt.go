package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd/internal/atrest"
)

// metaSealedUnder records the key every encrypted value of the state was
// last found sealed under (its id), once Reencrypt made it so: what the
// file holds, so it travels with a snapshot of the file. Part of the
// on-disk format.
var metaSealedUnder = []byte("sealed_under")

// reencryptBatch bounds the values one transaction of Reencrypt rewrites.
const (
	reencryptBatch      = 256
	reencryptBatchBytes = 4 << 20
)

// SealedUnder returns the key id every value was under when Reencrypt
// last finished, and whether it did since the state was written (false:
// values may be under any key, or none).
func (db *DB) SealedUnder() (atrest.KeyID, bool, error) {
	var id atrest.KeyID
	var ok bool
	err := db.view(func(tx *bolt.Tx) error {
		b, err := bucketsOf(tx, db.opts.Keys).meta.get(metaSealedUnder)
		if err != nil || len(b) != len(id) {
			return err
		}
		copy(id[:], b)
		ok = true
		return nil
	})
	return id, ok, err
}

// Reencrypt rewrites every value of the state that is not sealed as the
// store's keys seal now: under the active key, or, for values written
// before encryption was on, encrypted for the first time. It runs beside
// Apply, a batch per write transaction; a value keeps its plaintext and
// checksum, so the state hash does not change. It repeats until a pass
// finds nothing to rewrite (an Apply that began before a key changed may
// have sealed under the old one), then records the active key (see
// SealedUnder), and returns how many values it rewrote. A value under a
// key the ring lacks fails it with atrest.ErrUnknownKey.
//
// room, if set, is asked before each write: a pass stops with its error
// (a disk short of the space it must keep) and is run again later.
func (db *DB) Reencrypt(ctx context.Context, room func() error) (int, error) {
	ring := db.opts.Keys.Ring()
	if ring == nil {
		return 0, nil
	}
	active := ring.Active()
	if id, ok, err := db.SealedUnder(); err != nil || (ok && id == active) {
		return 0, err
	}
	total := 0
	for {
		update := db.update
		if room != nil {
			update = func(fn func(*bolt.Tx) error) error {
				if err := room(); err != nil {
					return err
				}
				return db.update(fn)
			}
		}
		n, err := reencryptBuckets(ctx, db.view, update, db.opts.Keys)
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			break
		}
	}
	if db.opts.Keys.Ring().Active() != active {
		return total, fmt.Errorf("reencrypt: %w", errKeyChanged)
	}
	err := db.update(func(tx *bolt.Tx) error {
		return putMeta(bucketsOf(tx, db.opts.Keys).meta, metaSealedUnder, active[:])
	})
	return total, err
}

// errKeyChanged means the active key changed while Reencrypt ran: run it
// again.
var errKeyChanged = errors.New("the active key changed meanwhile")

// encryptedBuckets are the buckets whose values are encrypted.
var encryptedBuckets = [][]byte{bucketKV, bucketLocks, bucketTxnKeys, bucketTxns, bucketDedup, bucketHistory, bucketRestore}

// txFunc runs fn in a transaction of a bbolt file (a read one for view,
// a write one for update).
type txFunc func(fn func(*bolt.Tx) error) error

// reencryptBuckets makes one pass over the encrypted buckets of a file
// and returns how many values it rewrote. It looks in read transactions
// and writes only the values that need it: a pass that finds nothing to
// do takes no write transaction from Apply.
func reencryptBuckets(ctx context.Context, view, update txFunc, keys *atrest.Keys) (int, error) {
	n := 0
	for _, name := range encryptedBuckets {
		k, err := reencryptBucket(ctx, view, update, keys, name)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// reencryptScan bounds the entries one read transaction of a pass walks.
const reencryptScan = 4096

// reencryptBucket rewrites the values of one bucket that need it, a
// batch at a time.
func reencryptBucket(ctx context.Context, view, update txFunc, keys *atrest.Keys, name []byte) (int, error) {
	var after []byte
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var stale [][]byte
		var next []byte
		err := view(func(tx *bolt.Tx) error {
			c := bucketOf(tx, name, keys).b.Cursor()
			k, raw := c.First()
			if after != nil {
				if k, raw = c.Seek(after); k != nil && bytes.Equal(k, after) {
					k, raw = c.Next()
				}
			}
			size := 0
			for seen := 0; k != nil && seen < reencryptScan && len(stale) < reencryptBatch && size < reencryptBatchBytes; k, raw = c.Next() {
				seen++
				next = append(next[:0], k...)
				if !sealedUnder(keys, raw) {
					stale = append(stale, append([]byte(nil), k...))
					size += len(raw)
				}
			}
			if k == nil {
				next = nil
			}
			return nil
		})
		if err == nil && len(stale) > 0 {
			err = update(func(tx *bolt.Tx) error {
				b := bucketOf(tx, name, keys)
				for _, k := range stale {
					raw := b.b.Get(k)
					if raw == nil || sealedUnder(keys, raw) {
						continue // changed since: sealed as keys seal now
					}
					p, _, err := unseal(b.keys, b.tag, k, raw)
					if err != nil {
						return err
					}
					sealed, _ := seal(b.keys, b.tag, k, p)
					if err := b.b.Put(k, sealed); err != nil {
						return err
					}
					total++
				}
				return nil
			})
		}
		if err != nil {
			return total, fmt.Errorf("reencrypt bucket %s: %w", name, err)
		}
		if next == nil {
			return total, nil
		}
		after = next
	}
}

// bucketOf returns one of the store's encrypted buckets in tx.
func bucketOf(tx *bolt.Tx, name []byte, keys *atrest.Keys) bucket {
	bs := bucketsOf(tx, keys)
	switch string(name) {
	case string(bucketKV):
		return bs.kv
	case string(bucketLocks):
		return bs.locks
	case string(bucketTxnKeys):
		return bs.txnKeys
	case string(bucketTxns):
		return bs.txns
	case string(bucketDedup):
		return bs.dedup
	case string(bucketHistory):
		return bs.hist
	case string(bucketRestore):
		return bs.restoreB
	}
	panic(fmt.Sprintf("store: no encrypted bucket %s", name))
}

// update runs fn in a write transaction of the current handle, beside
// Apply (bbolt runs one write transaction at a time).
func (db *DB) update(fn func(tx *bolt.Tx) error) error {
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return db.noHandle()
	}
	err := guard(func() error { return db.h.bdb.Update(fn) })
	if err != nil && isCorrupt(err) && db.opts.OnCorrupt != nil {
		db.opts.OnCorrupt(err)
	}
	return err
}

// ReencryptSnapshot copies the snapshot read from r to w (see
// Snapshot.WriteTo) with every value sealed under keys' active key,
// recorded as such (SealedUnder). The state goes through a temporary file
// in dir, removed before it returns.
func ReencryptSnapshot(ctx context.Context, r io.Reader, w io.Writer, dir string, keys *atrest.Keys) error {
	ring := keys.Ring()
	if ring == nil {
		return errors.New("reencrypt snapshot: no keys")
	}
	applied, term, err := ReadSnapshotHeader(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "reencrypt-*.db")
	if err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	path := f.Name()
	defer os.Remove(path)
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("reencrypt snapshot: copy it: %w", err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, NoFreelistSync: true})
	if err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	defer bdb.Close()
	update := txFunc(func(fn func(*bolt.Tx) error) error { return guard(func() error { return bdb.Update(fn) }) })
	view := txFunc(func(fn func(*bolt.Tx) error) error { return guard(func() error { return bdb.View(fn) }) })
	if err := view(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return corruptf("snapshot lacks bucket %s", name)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	if _, err := reencryptBuckets(ctx, view, update, keys); err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	active := ring.Active()
	if err := update(func(tx *bolt.Tx) error {
		return putMeta(bucketsOf(tx, keys).meta, metaSealedUnder, active[:])
	}); err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	hdr := make([]byte, 0, snapshotHeaderSize)
	hdr = append(hdr, snapshotMagic...)
	hdr = binary.BigEndian.AppendUint64(hdr, applied)
	hdr = binary.BigEndian.AppendUint64(hdr, term)
	if _, err := w.Write(hdr); err != nil {
		return fmt.Errorf("reencrypt snapshot: %w", err)
	}
	return guard(func() error {
		return bdb.View(func(tx *bolt.Tx) error {
			_, err := tx.WriteTo(w)
			return err
		})
	})
}
