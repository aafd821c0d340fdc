package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
)

// Bucket and meta key names; part of the on-disk format.
var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")

	metaApplied = []byte("applied")
	metaTerm    = []byte("applied_term")
	metaMap     = []byte("map")
)

// recordFormat is the first byte of every stored value record.
const recordFormat = 0x02

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
	// Logger receives the store's logs.
	Logger *slog.Logger
}

// appendFill is the fill percent of buckets whose keys only grow.
const appendFill = 0.95

// DefaultOptions returns the options used by kvd.
func DefaultOptions() Options {
	return Options{InitialMmapSize: 1 << 30, HistoryMax: 100000, HistoryMaxBytes: 64 << 20, Logger: slog.Default()}
}

// DB is one replica's state. It is safe for concurrent use, except that
// Apply and Restore must not run concurrently with each other (the
// replication layer calls both from Raft's single FSM goroutine).
type DB struct {
	path string
	opts Options
	log  *slog.Logger

	// handleMu protects h, which Restore swaps; readers hold it shared
	// for the length of their transaction.
	handleMu sync.RWMutex
	h        *handle
	// retiring counts goroutines closing handles Restore replaced; Close
	// waits for them.
	retiring sync.WaitGroup

	applied     atomic.Uint64 // index of the last applied entry
	appliedTerm atomic.Uint64 // term of the last applied entry
	clusterMap  atomic.Pointer[kvd.Map]

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

// Open opens (creating if needed) the state file at path.
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
	if err := db.openHandle(); err != nil {
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

// openHandle opens the bbolt file and loads the applied index and map.
// The caller holds handleMu or is the constructor.
func (db *DB) openHandle() error {
	bdb, err := bolt.Open(db.path, 0o600, db.boltOptions(false))
	if err != nil {
		return fmt.Errorf("open store %s: %w", db.path, err)
	}
	var applied, term uint64
	var m *kvd.Map
	err = bdb.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketLocks, bucketTxnKeys, bucketTxns, bucketHistory, bucketExpiry, bucketDedup, bucketDedupAt} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		applied = u64(meta.Get(metaApplied))
		term = u64(meta.Get(metaTerm))
		if b := meta.Get(metaMap); b != nil {
			m = new(kvd.Map)
			if err := json.Unmarshal(b, m); err != nil {
				return fmt.Errorf("decode stored cluster map: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		bdb.Close()
		return fmt.Errorf("open store %s: %w", db.path, err)
	}
	db.h = &handle{bdb: bdb}
	db.applied.Store(applied)
	db.appliedTerm.Store(term)
	db.clusterMap.Store(m)
	db.wake()
	return nil
}

// Close closes the state file. Snapshots must be closed first.
func (db *DB) Close() error {
	db.handleMu.Lock()
	h := db.h
	db.h = nil
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
		if err := syncDir(filepath.Dir(db.path)); err != nil {
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
		return syncDir(filepath.Dir(db.path))
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
	if err := syncDir(filepath.Dir(db.path)); err != nil {
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

// Path returns the state file's path.
func (db *DB) Path() string { return db.path }

// AppliedIndex returns the index of the last entry applied and committed to
// disk.
func (db *DB) AppliedIndex() uint64 { return db.applied.Load() }

// AppliedTerm returns the term of the last applied entry.
func (db *DB) AppliedTerm() uint64 { return db.appliedTerm.Load() }

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

// view runs fn in a read-only transaction.
func (db *DB) view(fn func(tx *bolt.Tx) error) error {
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return kvd.ErrClosed
	}
	return db.h.bdb.View(fn)
}

// Apply applies entries, in order, in one bbolt transaction, and records
// the last one's index and term in it. Entries at or below the applied
// index are skipped (their result is nil): this makes replay after a
// restart idempotent. It returns one result slice per entry, one Result per
// command. An error means the state could not be written; the caller must
// stop, since skipping an entry would make this replica diverge.
func (db *DB) Apply(entries []Entry) ([][]Result, error) {
	results := make([][]Result, len(entries))
	applied := db.applied.Load()
	last := applied
	var lastTerm uint64
	var newMap *kvd.Map
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return nil, kvd.ErrClosed
	}
	err := db.h.bdb.Update(func(tx *bolt.Tx) error {
		a := &applier{kv: tx.Bucket(bucketKV), meta: tx.Bucket(bucketMeta), locks: tx.Bucket(bucketLocks),
			txnKeys: tx.Bucket(bucketTxnKeys), txns: tx.Bucket(bucketTxns), hist: tx.Bucket(bucketHistory),
			expiry: tx.Bucket(bucketExpiry), dedup: tx.Bucket(bucketDedup), dedupAt: tx.Bucket(bucketDedupAt),
			histMax: db.opts.HistoryMax, histMaxBytes: db.opts.HistoryMaxBytes}
		// These buckets only grow at their end (keys are positions or
		// times): full pages on split, not bbolt's default half-full ones.
		a.hist.FillPercent, a.dedupAt.FillPercent = appendFill, appendFill
		for i, e := range entries {
			if e.Index <= last {
				continue
			}
			last, lastTerm = e.Index, e.Term
			if e.Batch == nil {
				continue
			}
			a.index, a.now, a.seq = e.Index, e.Batch.Time, 0
			res := make([]Result, len(e.Batch.Cmds))
			for j := range e.Batch.Cmds {
				r, m, err := a.apply(&e.Batch.Cmds[j])
				if err != nil {
					return fmt.Errorf("entry %d command %d: %w", e.Index, j, err)
				}
				if m != nil {
					newMap = m
				}
				res[j] = r
			}
			results[i] = res
		}
		if last == applied {
			return nil
		}
		if err := a.flushHistory(); err != nil {
			return err
		}
		if err := a.meta.Put(metaApplied, be64(last)); err != nil {
			return err
		}
		return a.meta.Put(metaTerm, be64(lastTerm))
	})
	if err != nil {
		return nil, fmt.Errorf("apply entries: %w", err)
	}
	if last != applied {
		if newMap != nil {
			db.clusterMap.Store(newMap)
		}
		db.appliedTerm.Store(lastTerm)
		db.applied.Store(last)
		db.wake()
	}
	return results, nil
}

// write applies a plain put or delete.
func (a *applier) write(c *Cmd) (Result, error) {
	if ls, err := a.locked(c.Key); err != nil || ls != nil {
		return Result{Err: kvd.ErrConflict, Locks: ls}, err
	}
	cur := version(a.kv.Get([]byte(c.Key)))
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

func (a *applier) apply(c *Cmd) (Result, *kvd.Map, error) {
	index := a.index
	switch c.Kind {
	case CmdNoop:
		return Result{}, nil, nil
	case CmdPut, CmdDelete:
		if r, done, err := a.replay(c.Idem); err != nil || done {
			return r, nil, err
		}
		r, err := a.write(c)
		if err != nil {
			return Result{}, nil, err
		}
		return r, nil, a.remember(c.Idem, r)
	case CmdExpire:
		rec := a.kv.Get([]byte(c.Key))
		if rec == nil || version(rec) != c.Cond.Version || recExpires(rec) == 0 || recExpires(rec) > a.now {
			return Result{}, nil, nil // rewritten or gone since
		}
		if ls, err := a.locked(c.Key); err != nil || ls != nil {
			return Result{Err: kvd.ErrConflict}, nil, err // a transaction holds it: later
		}
		return Result{Version: index, Deleted: true}, nil, a.delKey(c.Key)
	case CmdSetMap:
		m := new(kvd.Map)
		if err := json.Unmarshal(c.Data, m); err != nil {
			// Validated before proposing; a bad map is ignored alike on
			// every replica rather than stopping them all.
			return Result{Err: fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)}, nil, nil
		}
		var old kvd.Map
		if b := a.meta.Get(metaMap); b != nil {
			if err := json.Unmarshal(b, &old); err != nil {
				return Result{}, nil, fmt.Errorf("decode stored cluster map: %w", err)
			}
			if old.Epoch >= m.Epoch {
				return Result{Version: old.Epoch}, nil, nil
			}
		}
		if err := a.meta.Put(metaMap, append([]byte(nil), c.Data...)); err != nil {
			return Result{}, nil, err
		}
		return Result{Version: m.Epoch}, m, nil
	}
	if c.Kind.isTxn() {
		r, err := a.applyTxn(c)
		return r, nil, err
	}
	return Result{}, nil, fmt.Errorf("unknown command kind %d", c.Kind)
}

// Get returns the item stored under key, or an error wrapping
// kvd.ErrNotFound.
func (db *DB) Get(key string) (kvd.Item, error) {
	var it kvd.Item
	err := db.view(func(tx *bolt.Tx) error {
		rec := tx.Bucket(bucketKV).Get([]byte(key))
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

// Scan returns the items selected by o in key order and, when more items
// follow the last one returned, the key of the next one ("" otherwise).
func (db *DB) Scan(o kvd.ScanOptions) ([]kvd.Item, string, error) {
	var items []kvd.Item
	next := ""
	size := 0
	err := db.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketKV).Cursor()
		seek := max(o.Start, o.Prefix)
		for k, v := c.Seek([]byte(seek)); k != nil; k, v = c.Next() {
			ks := string(k)
			if o.End != "" && ks >= o.End {
				break
			}
			if !strings.HasPrefix(ks, o.Prefix) {
				break
			}
			if (o.Limit > 0 && len(items) == o.Limit) || (o.MaxBytes > 0 && size >= o.MaxBytes) {
				next = ks
				break
			}
			it := decodeItem(k, v)
			size += len(it.Key) + len(it.Value)
			items = append(items, it)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("scan: %w", err)
	}
	return items, next, nil
}

// encodeRecord builds a stored value record: format byte, version,
// expiry (Unix ns, 0: never), value.
func encodeRecord(ver uint64, expires int64, val []byte) []byte {
	rec := make([]byte, recordHeader+len(val))
	rec[0] = recordFormat
	binary.BigEndian.PutUint64(rec[1:9], ver)
	binary.BigEndian.PutUint64(rec[9:17], uint64(expires))
	copy(rec[recordHeader:], val)
	return rec
}

// recordHeader is the size of a record before its value.
const recordHeader = 17

// version returns the version of a stored record, 0 for none.
func version(rec []byte) uint64 {
	if len(rec) < recordHeader {
		return 0
	}
	return binary.BigEndian.Uint64(rec[1:9])
}

// recExpires returns when a record expires (Unix ns), 0 for never.
func recExpires(rec []byte) int64 {
	if len(rec) < recordHeader {
		return 0
	}
	return int64(binary.BigEndian.Uint64(rec[9:17]))
}

// recValue returns a record's value; it aliases the record.
func recValue(rec []byte) []byte {
	if len(rec) < recordHeader {
		return nil
	}
	return rec[recordHeader:]
}

// decodeItem copies a record out of bbolt's memory.
func decodeItem(k, rec []byte) kvd.Item {
	return kvd.Item{Key: string(k), Version: version(rec), Value: append([]byte{}, recValue(rec)...)}
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

var errBadSnapshot = errors.New("bad snapshot")
