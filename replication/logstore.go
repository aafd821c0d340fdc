package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// corruptEntry is the payload logStore gives an entry that raft-boltdb
// cannot decode (its framing, not just its payload, is damaged). raft
// panics on a read error when it applies or replays the log, so the store
// hands raft this instead; the state machine finds it undecodable and
// repairs the entry from a peer. Its term is 0, which raft takes for a
// mismatch wherever it compares terms: a leader's copy then replaces it.
var corruptEntry = []byte{0xFF, 'd', 'a', 'm', 'a', 'g', 'e', 'd'}

// logStore wraps the Raft log (raft-boltdb) with:
//
//   - a cache of the newest entries bounded by bytes as well as by count
//     (raft's own LogCache holds a fixed number of entries, whatever their
//     size: 1024 entries of 1 MiB values held a gigabyte per group);
//   - reads that never fail on a damaged entry (see corruptEntry);
//   - the time each append takes (an fsync of raft.db), for metrics.
type logStore struct {
	store    raft.LogStore
	log      *slog.Logger
	maxBytes int
	maxCount int
	// onAppend, if set, is told how long each StoreLogs took.
	onAppend func(time.Duration)

	// mu protects the cache: entries lo..hi, contiguous.
	mu      sync.RWMutex
	entries map[uint64]*raft.Log
	lo, hi  uint64
	bytes   int

	damaged atomic.Uint64 // damaged entries met
}

var _ raft.LogStore = (*logStore)(nil)

func newLogStore(store raft.LogStore, maxBytes, maxCount int, log *slog.Logger) *logStore {
	return &logStore{store: store, maxBytes: maxBytes, maxCount: maxCount, log: log, entries: map[uint64]*raft.Log{}}
}

func entrySize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) + 64 }

// FirstIndex implements raft.LogStore.
func (s *logStore) FirstIndex() (uint64, error) { return s.store.FirstIndex() }

// LastIndex implements raft.LogStore.
func (s *logStore) LastIndex() (uint64, error) { return s.store.LastIndex() }

// GetLog implements raft.LogStore. An entry the store holds but cannot
// decode is returned as a damaged entry, not as an error.
func (s *logStore) GetLog(idx uint64, out *raft.Log) error {
	s.mu.RLock()
	l, ok := s.entries[idx]
	s.mu.RUnlock()
	if ok {
		*out = *l
		return nil
	}
	err := s.store.GetLog(idx, out)
	if err == nil || errors.Is(err, raft.ErrLogNotFound) {
		return err
	}
	s.damaged.Add(1)
	s.log.Error("raft log entry cannot be read; handing it on as damaged, to be repaired from a peer", "index", idx, "err", err)
	*out = raft.Log{Index: idx, Term: 0, Type: raft.LogCommand, Data: corruptEntry}
	return nil
}

// readStored reads an entry from the store itself, bypassing the cache.
func (s *logStore) readStored(idx uint64) (*raft.Log, error) {
	var l raft.Log
	if err := s.store.GetLog(idx, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// StoreLog implements raft.LogStore.
func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore.
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	if err := s.store.StoreLogs(logs); err != nil {
		return fmt.Errorf("append to raft log: %w", err)
	}
	if s.onAppend != nil {
		s.onAppend(time.Since(start))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range logs {
		if len(s.entries) > 0 && l.Index != s.hi+1 {
			s.clearLocked() // not contiguous: an overwrite after a conflict
		}
		if len(s.entries) == 0 {
			s.lo = l.Index
		}
		s.entries[l.Index] = l
		s.hi = l.Index
		s.bytes += entrySize(l)
	}
	for len(s.entries) > 1 && (s.bytes > s.maxBytes || len(s.entries) > s.maxCount) {
		if old, ok := s.entries[s.lo]; ok {
			s.bytes -= entrySize(old)
			delete(s.entries, s.lo)
		}
		s.lo++
	}
	return nil
}

// repair overwrites the entry at l.Index, which must be damaged here, with
// a peer's intact copy of the same committed entry.
func (s *logStore) repair(l *raft.Log) error {
	s.mu.Lock()
	if _, ok := s.entries[l.Index]; ok {
		s.clearLocked()
	}
	s.mu.Unlock()
	if err := s.store.StoreLogs([]*raft.Log{l}); err != nil {
		return fmt.Errorf("rewrite raft log entry %d: %w", l.Index, err)
	}
	return nil
}

// DeleteRange implements raft.LogStore.
func (s *logStore) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	s.clearLocked()
	s.mu.Unlock()
	return s.store.DeleteRange(min, max)
}

func (s *logStore) clearLocked() {
	clear(s.entries)
	s.lo, s.hi, s.bytes = 0, 0, 0
}

// cachedBytes returns the bytes the cache holds.
func (s *logStore) cachedBytes() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bytes
}

// stableStore wraps raft's stable store (term and vote). hashicorp/raft
// panics when it cannot persist a new term, so a full disk would stop the
// process; writes here are retried until they succeed instead, which only
// holds up raft (a leader elsewhere takes over meanwhile). When the replica
// is closing they are retried for closeRetry more, then fail.
type stableStore struct {
	raft.StableStore
	ctx context.Context
	log *slog.Logger
}

// closeRetry bounds the retries of a write left when the replica closes.
const closeRetry = 5 * time.Second

func (s *stableStore) retry(what string, fn func() error) error {
	var giveUp time.Time
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil {
			if attempt > 0 {
				s.log.Info("raft stable store writable again", "write", what, "attempts", attempt+1)
			}
			return nil
		}
		if s.ctx.Err() != nil {
			if giveUp.IsZero() {
				giveUp = time.Now().Add(closeRetry)
			} else if time.Now().After(giveUp) {
				return err
			}
		}
		if attempt%20 == 0 {
			s.log.Error("cannot write raft's term or vote; retrying until the disk takes it", "write", what, "err", err)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Set implements raft.StableStore.
func (s *stableStore) Set(key, val []byte) error {
	return s.retry(string(key), func() error { return s.StableStore.Set(key, val) })
}

// SetUint64 implements raft.StableStore.
func (s *stableStore) SetUint64(key []byte, val uint64) error {
	return s.retry(string(key), func() error { return s.StableStore.SetUint64(key, val) })
}
