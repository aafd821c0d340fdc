package replication

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd/store"
)

// fsm adapts a store.DB to raft's BatchingFSM: each batch of committed log
// entries is applied in one bbolt transaction, together with the index of
// the last entry.
//
// A committed entry is never skipped and never stops the process:
//   - an invalid command is applied as an error result by the store, alike
//     on every replica;
//   - a disk error (ENOSPC, EIO) is retried until the disk takes the write;
//   - damage (an entry that fails its checksum, a stored value that fails
//     its seal) is repaired from a peer, or from the local snapshot and log,
//     before the batch goes on (see repair.go).
//
// Only a replica that closes while one of these is unresolved leaves
// entries unapplied; it then applies nothing more and takes no snapshot,
// and the next start replays them from the log.
type fsm struct {
	g *Group
	// mu serialises what changes the state (applies, raft's snapshot
	// installs, repairs) and the opening of snapshots, so that a
	// snapshot's label always matches its contents.
	mu sync.Mutex
	// broken is set once entries raft handed over could not be applied
	// before the replica closed.
	broken bool
}

var _ raft.BatchingFSM = (*fsm)(nil)

// applyResult is what the FSM returns for a command entry: one result per
// command of its batch, or the error that kept the entry from being
// applied here.
type applyResult struct {
	results []store.Result
	err     error
}

// maxApplyBytes bounds the entries applied in one bbolt transaction.
const maxApplyBytes = 8 << 20

// Apply applies one entry; raft calls it only when batching is off.
func (f *fsm) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries. raft passes command and
// configuration entries; configuration entries only advance the applied
// index. It runs on raft's FSM goroutine.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()
	out := make([]any, len(logs))
	if f.broken {
		for i := range out {
			out[i] = applyResult{err: errNotApplied}
		}
		return out
	}
	entries := make([]store.Entry, len(logs))
	bad := make([]error, len(logs))
	for i, l := range logs {
		entries[i] = store.Entry{Index: l.Index, Term: l.Term}
		if l.Type == raft.LogCommand {
			entries[i].Batch, bad[i] = store.DecodeBatch(l.Data)
		}
	}
	for i := 0; i < len(logs); {
		// A run of decodable entries, at most maxApplyBytes of them (at
		// least one): bbolt keeps a transaction's dirty pages in memory
		// until it commits, so a batch of large values is applied in
		// several transactions.
		j, size := i, 0
		for j < len(logs) && bad[j] == nil && (j == i || size+len(logs[j].Data) <= maxApplyBytes) {
			size += len(logs[j].Data)
			j++
		}
		if j > i {
			res, err := f.apply(entries[i:j])
			if err != nil {
				f.breakOff(out[i:], err)
				return out
			}
			for k := i; k < j; k++ {
				out[k] = applyResult{results: res[k-i]}
			}
			f.g.onApplied(entries[i:j], res)
			f.g.noteAppliedBytes(size)
			i = j
			continue
		}
		l := logs[i]
		if l.Index <= f.g.db.AppliedIndex() {
			out[i] = applyResult{} // applied already, by a restore
			i++
			continue
		}
		b, err := f.g.repairEntry(l, bad[i])
		if err != nil {
			f.breakOff(out[i:], err)
			return out
		}
		if b != nil {
			entries[i].Batch, bad[i] = b, nil // repaired: apply it
			continue
		}
		// The state was restored past the entry instead.
		out[i] = applyResult{}
		i++
	}
	if f.g.cfg.Observer.Apply != nil {
		f.g.cfg.Observer.Apply(time.Since(start))
	}
	return out
}

// apply applies entries, waiting out disk errors and repairing damaged
// state, until it succeeds or the replica closes.
func (f *fsm) apply(entries []store.Entry) ([][]store.Result, error) {
	for attempt := 0; ; attempt++ {
		res, err := f.g.db.Apply(entries)
		if err == nil {
			f.g.clearStall()
			return res, nil
		}
		if f.g.ctx.Err() != nil {
			return nil, err // closing
		}
		if errors.Is(err, store.ErrCorrupt) {
			if err := f.g.repairState(f.g.db.AppliedIndex(), err); err != nil {
				return nil, err
			}
			continue
		}
		// The disk refused (ENOSPC, EIO), or the state file could not be
		// reopened after a restore: wait, reopen it if need be, retry.
		f.g.stall(err, attempt)
		if !f.g.pause(diskBackoff.Delay(attempt)) {
			return nil, err
		}
		if err := f.g.db.Reopen(); err != nil {
			f.g.stall(err, attempt)
		}
	}
}

func (f *fsm) breakOff(out []any, err error) {
	f.broken = true
	f.g.log.Error("replica closing with committed entries not applied; the next start applies them from the log", "err", err)
	for i := range out {
		out[i] = applyResult{err: fmt.Errorf("%w: %v", errNotApplied, err)}
	}
}

// Snapshot fixes the current state. It runs on the FSM goroutine, so the
// read transaction it opens holds exactly the entries raft has applied.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return nil, fmt.Errorf("snapshot: %w", errNotApplied)
	}
	s, err := f.g.db.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{s: s, g: f.g}, nil
}

// Restore replaces the state with a snapshot raft received from the
// leader, atomically; a snapshot that fails its checks is refused.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	// After a repair the state can be ahead of what the leader sends:
	// keep it rather than go back.
	if f.g.cfg.Keys != nil {
		f.g.forgetReencrypted() // its values are under the sender's keys
	}
	restored, err := f.g.db.RestoreIfNewer(rc)
	if err != nil {
		f.g.noteRestoreFailed(err)
		return err
	}
	if restored {
		f.g.stats.snapshotsInstalled.Add(1)
	}
	if f.g.cfg.Keys != nil {
		f.g.Reencrypt()
	}
	return nil
}

type fsmSnapshot struct {
	s *store.Snapshot
	g *Group
}

// Persist streams the snapshot; it runs concurrently with later applies.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.s.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return err
	}
	s.g.stats.snapshotsTaken.Add(1)
	return nil
}

// Release ends the snapshot's read transaction.
func (s *fsmSnapshot) Release() { s.s.Close() }
