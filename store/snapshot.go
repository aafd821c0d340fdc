package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
)

// snapshotMagic opens every snapshot stream.
const snapshotMagic = "KVDSNAP1"

// snapshotHeaderSize is the size of the header: magic, applied index,
// applied term.
const snapshotHeaderSize = len(snapshotMagic) + 16

// Snapshot is a consistent, point-in-time view of the state, fixed when it
// was taken; later applies do not change what it streams. Close it when
// done: it holds a bbolt read transaction.
type Snapshot struct {
	tx      *bolt.Tx
	keys    *atrest.Keys
	h       *handle
	applied uint64
	term    uint64
	group   kvd.GroupID
}

// Snapshot fixes the current state. Call it from the goroutine that calls
// Apply, so the snapshot is labelled with exactly the entries applied so far.
func (db *DB) Snapshot() (*Snapshot, error) {
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return nil, fmt.Errorf("snapshot: %w", db.noHandle())
	}
	tx, err := db.h.bdb.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot: begin read transaction: %w", err)
	}
	meta := bucketsOf(tx, db.opts.Keys).meta
	applied, err := metaU64(meta, metaApplied)
	var term uint64
	if err == nil {
		term, err = metaU64(meta, metaTerm)
	}
	if err != nil {
		tx.Rollback()
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	db.h.pins.Add(1)
	return &Snapshot{tx: tx, keys: db.opts.Keys, h: db.h, applied: applied, term: term, group: db.opts.Group}, nil
}

// AppliedIndex returns the index of the last entry the snapshot contains.
func (s *Snapshot) AppliedIndex() uint64 { return s.applied }

// WriteTo streams the snapshot: a header naming its applied index, then a
// copy of the bbolt file. It may run concurrently with Apply.
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) {
	hdr := make([]byte, 0, snapshotHeaderSize)
	hdr = append(hdr, snapshotMagic...)
	hdr = binary.BigEndian.AppendUint64(hdr, s.applied)
	hdr = binary.BigEndian.AppendUint64(hdr, s.term)
	n, err := w.Write(hdr)
	if err != nil {
		return int64(n), fmt.Errorf("write snapshot header: %w", err)
	}
	m, err := s.tx.WriteTo(w)
	if err != nil {
		return int64(n) + m, fmt.Errorf("write snapshot: %w", err)
	}
	return int64(n) + m, nil
}

// Close releases the snapshot's read transaction.
func (s *Snapshot) Close() error {
	if s.tx == nil {
		return nil
	}
	err := s.tx.Rollback()
	s.tx = nil
	s.h.pins.Done()
	return err
}

// errBadSnapshot means a snapshot is not one this version can restore.
var errBadSnapshot = errors.New("bad snapshot")

// ReadSnapshotHeader reads the applied index and term from the start of a
// snapshot stream.
func ReadSnapshotHeader(r io.Reader) (applied, term uint64, err error) {
	hdr := make([]byte, snapshotHeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, 0, fmt.Errorf("%w: read header: %v", errBadSnapshot, err)
	}
	if string(hdr[:len(snapshotMagic)]) != snapshotMagic {
		return 0, 0, fmt.Errorf("%w: not a kvd snapshot", errBadSnapshot)
	}
	p := hdr[len(snapshotMagic):]
	return binary.BigEndian.Uint64(p[:8]), binary.BigEndian.Uint64(p[8:]), nil
}

// Restore replaces the whole state with the snapshot read from r,
// atomically: the stream goes to a temporary file, which is synced, opened
// and checked, and only then renamed over the state file. A crash at any
// point leaves either the old state or the new one, never a mix. Restore
// must not run concurrently with Apply.
func (db *DB) Restore(r io.Reader) error { return db.RestoreAtLeast(r, 0) }

// RestoreIfNewer is Restore for a snapshot raft sends: one that holds
// nothing newer than the state (a repair took the state past it) is left
// unread, and the state kept; it reports whether it restored.
func (db *DB) RestoreIfNewer(r io.Reader) (bool, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	hdr, err := br.Peek(snapshotHeaderSize)
	if err != nil {
		return false, fmt.Errorf("restore: %w: read header: %v", errBadSnapshot, err)
	}
	applied, _, err := ReadSnapshotHeader(bytes.NewReader(hdr))
	if err != nil {
		return false, fmt.Errorf("restore: %w", err)
	}
	if applied <= db.AppliedIndex() {
		db.log.Info("kept the state: the snapshot received is not newer", "snapshot_applied", applied, "applied", db.AppliedIndex())
		return false, nil
	}
	return true, db.RestoreAtLeast(br, 0)
}

// RestoreAtLeast is Restore, refusing (before writing anything) a
// snapshot whose applied index is below minApplied: a repair must never
// take the state back in time.
func (db *DB) RestoreAtLeast(r io.Reader, minApplied uint64) error {
	br := bufio.NewReaderSize(r, 1<<20)
	applied, term, err := ReadSnapshotHeader(br)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if applied < minApplied {
		return fmt.Errorf("restore: %w: snapshot at index %d, %d needed", errBadSnapshot, applied, minApplied)
	}
	tmp := db.path + ".restore"
	if err := writeSynced(tmp, br); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: %w", err)
	}
	if err := db.verify(tmp, applied); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: %w", err)
	}

	// The old file stays open (and readable by snapshots still streaming
	// it) until they are done; the new one takes its name and its place.
	db.handleMu.Lock()
	defer db.handleMu.Unlock()
	old := db.h
	if old == nil && db.closed {
		os.Remove(tmp)
		return fmt.Errorf("restore: %w", kvd.ErrClosed)
	}
	if err := os.Rename(tmp, db.path); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	db.h = nil
	if old != nil {
		db.retire(old)
	}
	syncErr := fsutil.SyncDir(filepath.Dir(db.path))
	if err := db.openHandle(); err != nil {
		// Not open: reads and applies fail (not as closed) until Reopen
		// succeeds; the replication layer retries it.
		return fmt.Errorf("restore: reopen: %w", err)
	}
	if syncErr != nil {
		return fmt.Errorf("restore: %w", syncErr)
	}
	db.log.Info("restored state from snapshot", "applied", applied, "term", term)
	return nil
}

// verify opens a restored file read-only and checks it whole (see
// Verify): every value's seal, the state hash, and an applied index that
// matches the snapshot header. A snapshot damaged in transit or on disk
// is refused before it replaces anything.
func (db *DB) verify(path string, applied uint64) error {
	o := db.boltOptions(true)
	o.InitialMmapSize = 0
	bdb, err := openBolt(path, o)
	if err != nil {
		return fmt.Errorf("%w: open: %w", errBadSnapshot, err)
	}
	defer bdb.Close()
	return guard(func() error {
		return bdb.View(func(tx *bolt.Tx) error {
			r, err := verifyTx(tx, db.opts.Keys)
			if err != nil {
				return fmt.Errorf("%w: %w", errBadSnapshot, err)
			}
			if r.Applied != applied {
				return fmt.Errorf("%w: applied index %d, header says %d", errBadSnapshot, r.Applied, applied)
			}
			return nil
		})
	})
}

func writeSynced(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
