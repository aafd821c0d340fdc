package replication

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd/store"
)

// fsm adapts a store.DB to raft's BatchingFSM: each batch of committed log
// entries is applied in one bbolt transaction (one fsync), together with
// the index of the last entry.
type fsm struct {
	db  *store.DB
	log *slog.Logger
	// fatal stops the process: an entry that cannot be applied must never
	// be skipped, or this replica diverges from the others.
	fatal func(error)
	// applied, if set, is told of every applied batch and its results.
	applied func(entries []store.Entry, results [][]store.Result)
}

var _ raft.BatchingFSM = (*fsm)(nil)

// applyResult is what the FSM returns for a command entry: one result per
// command of its batch, or the error that made the whole entry a no-op.
type applyResult struct {
	results []store.Result
	err     error
}

// Apply applies one entry; raft calls it only when batching is off.
func (f *fsm) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries in one store transaction. raft
// passes command and configuration entries; configuration entries only
// advance the applied index. It runs on raft's FSM goroutine, never
// concurrently with Snapshot or Restore.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	entries := make([]store.Entry, len(logs))
	bad := make([]error, len(logs))
	for i, l := range logs {
		entries[i] = store.Entry{Index: l.Index, Term: l.Term}
		if l.Type != raft.LogCommand {
			continue
		}
		b, err := store.DecodeBatch(l.Data)
		if err != nil {
			// Every replica decodes the same bytes and fails alike, so
			// treating the entry as empty keeps them identical.
			f.log.Error("undecodable log entry applied as empty", "index", l.Index, "err", err)
			bad[i] = err
			continue
		}
		entries[i].Batch = b
	}
	res, err := f.db.Apply(entries)
	if err != nil {
		f.fatal(fmt.Errorf("apply entries %d..%d: %w", logs[0].Index, logs[len(logs)-1].Index, err))
		return make([]any, len(logs)) // not reached with a fatal that stops the process
	}
	if f.applied != nil {
		f.applied(entries, res)
	}
	out := make([]any, len(logs))
	for i := range logs {
		out[i] = applyResult{results: res[i], err: bad[i]}
	}
	return out
}

// Snapshot fixes the current state. It runs on the FSM goroutine, so the
// read transaction it opens holds exactly the entries raft has applied.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	s, err := f.db.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{s: s}, nil
}

// Restore replaces the state with a snapshot, atomically.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.db.Restore(rc)
}

type fsmSnapshot struct{ s *store.Snapshot }

// Persist streams the snapshot; it runs concurrently with later applies.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.s.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release ends the snapshot's read transaction.
func (s *fsmSnapshot) Release() { s.s.Close() }
