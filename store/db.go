package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
)

// Bucket names; part of the on-disk format.
var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")
	// bucketExpiry orders keys with a TTL by expiry time (8-byte Unix ns,
	// then the key), so finding the expired ones reads only those.
	bucketExpiry = []byte("expiry")
)

// Options configure a DB.
type Options struct {
	// InitialMmapSize is the initial size of bbolt's memory map. A large
	// value avoids remapping, which would wait for a long snapshot's read
	// transaction to end and so stall applies.
	InitialMmapSize int
	// NoSync skips the fsync of each applied batch (lazy state sync).
	// The Raft log is then the only durable record of recent writes: the
	// state file is marked dirty while open (path + ".dirty") and synced
	// and unmarked by Close, and a state found dirty at Open (the last
	// run did not close it) is discarded, for the replication layer to
	// rebuild from the newest snapshot and the log. Without NoSync every
	// applied batch is fsynced; a dirty marker is honoured either way.
	NoSync bool
	// HistoryMax and HistoryMaxBytes bound the retained history of
	// changes (for watches), in events and in bytes. Every replica of a
	// group must use the same values.
	HistoryMax      int
	HistoryMaxBytes int
	// Group is the group this state belongs to. When set, applying a
	// command on a key whose slot the stored cluster map gives to another
	// group fails (kvd.ErrWrongGroup) instead of writing it.
	Group kvd.GroupID
	// OnCorrupt, if set, is told when a read (not Apply, whose caller
	// gets the error) finds damaged data, so the replica can stop serving
	// and repair itself. It must not block.
	OnCorrupt func(error)
	// Logger receives the store's logs.
	Logger *slog.Logger
	// Keys, if set, encrypt the values the store writes (see seal.go);
	// Reencrypt brings values written before under the active key.
	Keys *atrest.Keys
}

// appendFill is the fill percent of buckets whose keys only grow.
const appendFill = 0.95

// DefaultOptions returns the options used by kvd.
func DefaultOptions() Options {
	return Options{InitialMmapSize: 1 << 30, HistoryMax: 100000, HistoryMaxBytes: 64 << 20, Logger: slog.Default()}
}

// DB is one replica's state. It is safe for concurrent use, except that
// Apply and Restore must not run concurrently with each other (the
// replication layer serialises them).
type DB struct {
	path string
	opts Options
	log  *slog.Logger

	// handleMu protects h, which Restore swaps, and closed; readers hold
	// it shared for the length of their transaction.
	handleMu sync.RWMutex
	h        *handle
	closed   bool
	// retiring counts goroutines closing handles Restore replaced; Close
	// waits for them.
	retiring sync.WaitGroup

	applied     atomic.Uint64 // index of the last applied entry
	appliedTerm atomic.Uint64 // term of the last applied entry
	stateHash   atomic.Uint64 // the state hash at the applied index
	clusterMap  atomic.Pointer[kvd.Map]
	placement   atomic.Pointer[placement]
	// gate is the stored freeze and restore (see backup.go).
	gate atomic.Pointer[gate]
	// tokenTable is the stored access token table (see tokens.go).
	tokenTable atomic.Pointer[[]TokenRecord]
	// strayClean is the placement under which StrayKeys last found no
	// leftover keys; served is ServedSlots' last answer.
	strayClean atomic.Pointer[placement]
	served     atomic.Pointer[servedSlots]

	// notifyMu protects notify, closed and replaced each time the
	// applied index advances.
	notifyMu sync.Mutex
	notify   chan struct{}
}

// Entry is one Raft log entry handed to Apply.
type Entry struct {
	// Index and Term are the entry's position in the log.
	Index, Term uint64
	// Batch holds the entry's commands; nil for an entry without any
	// (a Raft configuration change), which only advances the index.
	Batch *Batch
}

// Open opens (creating if needed) the state file at path. A file that
// bbolt cannot open (its meta pages are damaged) is moved aside, to
// path + ".corrupt-<time>", and an empty state takes its place, for the
// replication layer to rebuild from the snapshot and the log.
func Open(path string, opts Options) (*DB, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	def := DefaultOptions()
	if opts.HistoryMax <= 0 {
		opts.HistoryMax = def.HistoryMax
	}
	if opts.HistoryMaxBytes <= 0 {
		opts.HistoryMaxBytes = def.HistoryMaxBytes
	}
	db := &DB{path: path, opts: opts, log: opts.Logger, notify: make(chan struct{})}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// A crash during Restore can leave a temporary file behind; it was
	// never renamed into place, so it is garbage.
	_ = os.Remove(path + ".restore")
	if err := db.checkDirty(); err != nil {
		return nil, err
	}
	err := db.openHandle()
	if err != nil && isCorrupt(err) {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405"))
		db.log.Error("state file is damaged; moving it aside to rebuild the state from the snapshot and the log", "path", path, "moved_to", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("open store: move damaged state aside: %w (after %v)", rerr, err)
		}
		err = db.openHandle()
	}
	if err != nil {
		return nil, err
	}
	return db, nil
}

func (db *DB) boltOptions(readOnly bool) *bolt.Options {
	return &bolt.Options{
		Timeout:         0,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: db.opts.InitialMmapSize,
		NoSync:          db.opts.NoSync,
		ReadOnly:        readOnly,
	}
}

// handle is one open bbolt file. Open snapshots pin it: a handle that
// Restore replaced is closed only once its last snapshot is released,
// because closing bbolt waits for every open read transaction, and raft
// may hold a snapshot's while the FSM goroutine restores.
type handle struct {
	bdb  *bolt.DB
	pins sync.WaitGroup
}

// allBuckets are created in every store.
var allBuckets = [][]byte{bucketKV, bucketMeta, bucketLocks, bucketTxnKeys, bucketTxns, bucketHistory, bucketExpiry, bucketDedup, bucketDedupAt, bucketRestore}

// openBolt opens a bbolt file, turning the errors of a damaged file
// (bbolt's own checks, or a panic while reading its pages) into ErrCorrupt.
func openBolt(path string, o *bolt.Options) (bdb *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			bdb, err = nil, corruptf("open %s: %v", path, r)
		}
	}()
	bdb, err = bolt.Open(path, 0o600, o)
	if err != nil && (errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch)) {
		return nil, corruptf("open %s: %v", path, err)
	}
	return bdb, err
}

// openHandle opens the bbolt file and loads the applied index, the state
// hash and the map. The caller holds handleMu or is the constructor.
func (db *DB) openHandle() error {
	bdb, err := openBolt(db.path, db.boltOptions(false))
	if err != nil {
		return fmt.Errorf("open store %s: %w", db.path, err)
	}
	var applied, term, hash uint64
	var m *kvd.Map
	var gt *gate
	var toks []TokenRecord
	err = guard(func() error {
		return bdb.Update(func(tx *bolt.Tx) error {
			for _, b := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			bs := bucketsOf(tx, db.opts.Keys)
			var err error
			if applied, err = metaU64(bs.meta, metaApplied); err != nil {
				return err
			}
			if term, err = metaU64(bs.meta, metaTerm); err != nil {
				return err
			}
			if m, err = storedMap(bs.meta); err != nil {
				return err
			}
			if gt, err = loadGate(bs.meta); err != nil {
				return err
			}
			if toks, err = loadTokens(bs.meta); err != nil {
				return err
			}
			raw, err := bs.meta.get(metaStateHash)
			if err != nil {
				return err
			}
			if raw == nil {
				// A state written before state hashes existed, or a new
				// one: compute it once.
				if hash, err = sumBuckets(bs, false, &VerifyReport{}); err != nil {
					return err
				}
				return putMeta(bs.meta, metaStateHash, be64(hash))
			}
			hash = u64(raw)
			return nil
		})
	})
	if err != nil {
		bdb.Close()
		return fmt.Errorf("open store %s: %w", db.path, err)
	}
	db.h = &handle{bdb: bdb}
	db.applied.Store(applied)
	db.appliedTerm.Store(term)
	db.stateHash.Store(hash)
	db.setMap(m, placementOf(m))
	db.gate.Store(gt)
	db.tokenTable.Store(&toks)
	db.wake()
	return nil
}

// setMap publishes the stored cluster map and its slot table.
func (db *DB) setMap(m *kvd.Map, p *placement) {
	db.clusterMap.Store(m)
	db.placement.Store(p)
}

// Close closes the state file. Snapshots must be closed first.
func (db *DB) Close() error {
	db.handleMu.Lock()
	h := db.h
	db.h = nil
	db.closed = true
	db.handleMu.Unlock()
	db.retiring.Wait()
	if h == nil {
		return nil
	}
	h.pins.Wait()
	if db.opts.NoSync {
		if err := h.bdb.Sync(); err != nil {
			h.bdb.Close()
			return fmt.Errorf("close store: sync: %w", err) // stays dirty: rebuilt at next start
		}
	}
	if err := h.bdb.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	if db.opts.NoSync {
		if err := os.Remove(db.path + ".dirty"); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("close store: unmark: %w", err)
		}
		if err := fsutil.SyncDir(filepath.Dir(db.path)); err != nil {
			return fmt.Errorf("close store: %w", err)
		}
	}
	return nil
}

// checkDirty discards a state file the last run left dirty (lazy sync,
// not closed: a crash), since after a power loss it may hold torn or
// stale pages; it then marks the state dirty for this run.
func (db *DB) checkDirty() error {
	marker := db.path + ".dirty"
	if _, err := os.Stat(marker); err == nil {
		db.log.Warn("state was not closed cleanly; discarding it to rebuild it from the snapshot and the log", "path", db.path)
		if err := os.Remove(db.path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("open store: discard dirty state: %w", err)
		}
	}
	if !db.opts.NoSync {
		if err := os.Remove(marker); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("open store: %w", err)
		}
		return fsutil.SyncDir(filepath.Dir(db.path))
	}
	f, err := os.OpenFile(marker, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open store: mark dirty: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("open store: mark dirty: %w", err)
	}
	f.Close()
	if err := fsutil.SyncDir(filepath.Dir(db.path)); err != nil {
		return fmt.Errorf("open store: mark dirty: %w", err)
	}
	return nil
}

// retire closes h once no snapshot pins it any more.
func (db *DB) retire(h *handle) {
	db.retiring.Add(1)
	go func() {
		defer db.retiring.Done()
		h.pins.Wait()
		if err := h.bdb.Close(); err != nil {
			db.log.Warn("close replaced state file", "err", err)
		}
	}()
}

// errNoHandle means the state file is not open although the DB was not
// closed: reopening it after a restore failed (see Reopen).
var errNoHandle = fmt.Errorf("state file not open after a failed reopen: %w", kvd.ErrUnavailable)

// noHandle is the error for a nil handle. The caller holds handleMu.
func (db *DB) noHandle() error {
	if db.closed {
		return kvd.ErrClosed
	}
	return errNoHandle
}

// Reopen opens the state file again if a restore left it closed (its
// reopen failed, say for lack of disk space); it does nothing otherwise.
func (db *DB) Reopen() error {
	db.handleMu.Lock()
	defer db.handleMu.Unlock()
	if db.h != nil || db.closed {
		return nil
	}
	return db.openHandle()
}

// Path returns the state file's path.
func (db *DB) Path() string { return db.path }

// Size returns the size of the state file in bytes.
func (db *DB) Size() int64 {
	fi, err := os.Stat(db.path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// AppliedIndex returns the index of the last entry applied and committed to
// disk.
func (db *DB) AppliedIndex() uint64 { return db.applied.Load() }

// AppliedTerm returns the term of the last applied entry.
func (db *DB) AppliedTerm() uint64 { return db.appliedTerm.Load() }

// StateHash returns the state hash at the applied index (see Verify).
func (db *DB) StateHash() uint64 { return db.stateHash.Load() }

// Map returns the stored cluster map, or nil if none has been applied.
// The caller must not modify it.
func (db *DB) Map() *kvd.Map { return db.clusterMap.Load() }

// AppliedCh returns a channel that is closed once the applied index moves
// past its current value. Check AppliedIndex after taking the channel.
func (db *DB) AppliedCh() <-chan struct{} {
	db.notifyMu.Lock()
	defer db.notifyMu.Unlock()
	return db.notify
}

func (db *DB) wake() {
	db.notifyMu.Lock()
	close(db.notify)
	db.notify = make(chan struct{})
	db.notifyMu.Unlock()
}

// guard runs fn, turning a panic (bbolt panics on some damaged pages)
// into ErrCorrupt.
func guard(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = corruptf("reading the state file: %v", r)
		}
	}()
	return fn()
}

// view runs fn in a read-only transaction. Damage it meets is reported
// to Options.OnCorrupt.
func (db *DB) view(fn func(tx *bolt.Tx) error) error {
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return db.noHandle()
	}
	err := guard(func() error { return db.h.bdb.View(fn) })
	if err != nil && isCorrupt(err) && db.opts.OnCorrupt != nil {
		db.opts.OnCorrupt(err)
	}
	return err
}

// buckets are the store's buckets in one transaction.
type buckets struct {
	kv, locks, txnKeys, txns, dedup, hist, meta, restoreB bucket
	expiry, dedupAt                                       *bolt.Bucket
}

// bucketsOf returns the store's buckets in tx, their values encrypted
// under keys (if set) but for meta's.
func bucketsOf(tx *bolt.Tx, keys *atrest.Keys) buckets {
	return buckets{
		kv:      bucket{b: tx.Bucket(bucketKV), tag: tagKV, hashed: true, keys: keys},
		locks:   bucket{b: tx.Bucket(bucketLocks), tag: tagLocks, hashed: true, keys: keys},
		txnKeys: bucket{b: tx.Bucket(bucketTxnKeys), tag: tagTxnKeys, hashed: true, keys: keys},
		txns:    bucket{b: tx.Bucket(bucketTxns), tag: tagTxns, hashed: true, keys: keys},
		dedup:   bucket{b: tx.Bucket(bucketDedup), tag: tagDedup, hashed: true, keys: keys},
		hist:    bucket{b: tx.Bucket(bucketHistory), tag: tagHistory, keys: keys},
		meta:    bucket{b: tx.Bucket(bucketMeta), tag: tagMeta},
		// Keys a restore staged (see backup.go).
		restoreB: bucket{b: tx.Bucket(bucketRestore), tag: tagRestore, hashed: true, keys: keys},
		expiry:   tx.Bucket(bucketExpiry),
		dedupAt:  tx.Bucket(bucketDedupAt),
	}
}
