package replication

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// The Raft log and stable stores a replica may keep (Config.LogStore).
const (
	// LogStoreBolt is raft-boltdb: the log and raft's term and vote in
	// one bbolt file, raft.db.
	LogStoreBolt = "boltdb"
	// LogStoreWAL is hashicorp/raft-wal: the log in append-only segment
	// files, term and vote in a small bbolt file, all under wal/. One
	// fsync per append, and a truncation drops whole segments.
	LogStoreWAL = "wal"
)

// File names of the stores in a replica's directory.
const (
	boltLogFile = "raft.db"
	walLogDir   = "wal"
)

// raftStore is what a replica keeps raft's log and stable state in.
type raftStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// StoredLogStore returns the kind of Raft log the replica directory dir
// holds ("" if none).
func StoredLogStore(dir string) string {
	if _, err := os.Stat(filepath.Join(dir, boltLogFile)); err == nil {
		return LogStoreBolt
	}
	if st, err := os.Stat(filepath.Join(dir, walLogDir)); err == nil && st.IsDir() {
		return LogStoreWAL
	}
	return ""
}

// openRaftStore opens (or creates) the log of kind in dir.
func openRaftStore(kind, dir string, segmentBytes int, hlog hclog.Logger) (raftStore, error) {
	switch kind {
	case LogStoreWAL:
		if segmentBytes <= 0 {
			segmentBytes = DefaultConfig().WALSegmentBytes
		}
		path := filepath.Join(dir, walLogDir)
		if err := os.MkdirAll(path, 0o755); err != nil {
			return nil, fmt.Errorf("raft log: %w", err)
		}
		meta := &metadb.BoltMetaDB{}
		w, err := raftwal.Open(path, raftwal.WithSegmentSize(segmentBytes), raftwal.WithLogger(hlog.Named("wal")), raftwal.WithMetaStore(meta))
		if err != nil {
			meta.Close()
			return nil, fmt.Errorf("raft log (wal): %w", err)
		}
		return &walStore{WAL: w, meta: meta}, nil
	case LogStoreBolt, "":
		b, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, boltLogFile)})
		if err != nil {
			return nil, fmt.Errorf("raft log: %w", err)
		}
		return b, nil
	}
	return nil, errors.New("unknown log store " + kind)
}

// walStore is raft-wal's WAL with its meta store, which WAL.Close leaves
// open (raft-wal v0.4.0): the file's lock would then stop the replica
// from opening again in the same process.
type walStore struct {
	*raftwal.WAL
	meta *metadb.BoltMetaDB
}

// Close closes the WAL, then its meta store.
func (w *walStore) Close() error {
	return errors.Join(w.WAL.Close(), w.meta.Close())
}

// isMonotonic tells whether s takes only consecutive indexes (raft-wal):
// raft then drops the whole log when it installs a snapshot, rather than
// keep entries around a gap.
func isMonotonic(s raft.LogStore) bool {
	m, ok := s.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}
