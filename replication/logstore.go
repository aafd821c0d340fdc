package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// logStore wraps the Raft log (raft-wal or raft-boltdb) with:
//
//   - a cache of the newest entries bounded by bytes as well as by count
//     (raft's own LogCache holds a fixed number of entries, whatever their
//     size: 1024 entries of 1 MiB values held a gigabyte per group);
//   - the time each append takes (an fsync of raft.db), for metrics;
//   - the repair of an entry whose payload failed its checksum.
//
// An entry raft-boltdb cannot decode at all (its framing is damaged) is
// reported as an error, as raft-boltdb does: its term is unknown, and
// raft must never be told a wrong one (a wrong last term breaks the
// election rule). Open finds such entries before raft starts (see
// checkLog).
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

// GetLog implements raft.LogStore.
func (s *logStore) GetLog(idx uint64, out *raft.Log) error {
	s.mu.RLock()
	l, ok := s.entries[idx]
	s.mu.RUnlock()
	if ok {
		*out = *l
		return nil
	}
	return s.store.GetLog(idx, out)
}

// checkLog reads every entry from..to from the store itself, as raft
// reads them when it starts, and returns the first that cannot be
// trusted: one it cannot decode, or whose index or term cannot be right
// (terms never go down along a log, nor past the current term). raft-
// boltdb keeps no checksum of an entry's index and term, so a damaged
// term that still fits these rules goes unseen; the payload's own
// checksum covers the rest.
func (s *logStore) checkLog(from, to, currentTerm uint64) error {
	var prev uint64
	for idx := from; idx <= to && idx > 0; idx++ {
		var l raft.Log
		err := s.store.GetLog(idx, &l)
		switch {
		case errors.Is(err, raft.ErrLogNotFound):
			continue
		case err != nil:
			return fmt.Errorf("raft log entry %d cannot be read: %w", idx, err)
		case l.Index != idx:
			return fmt.Errorf("raft log entry %d says it is entry %d", idx, l.Index)
		case l.Term < prev || l.Term > currentTerm:
			return fmt.Errorf("raft log entry %d has term %d, after term %d, with the current term %d", idx, l.Term, prev, currentTerm)
		}
		prev = l.Term
	}
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

// errAppendOnly is repair's answer on a log that takes only appends
// (raft-wal): the damaged copy stays until a snapshot truncates it, and
// a replay meets it again and fetches the peer's copy again.
var errAppendOnly = errors.New("the log store takes only appends; the damaged copy stays until a snapshot truncates it")

// repair overwrites the entry at l.Index, which must be damaged here, with
// a peer's intact copy of the same committed entry.
func (s *logStore) repair(l *raft.Log) error {
	if isMonotonic(s.store) {
		return errAppendOnly
	}
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

// IsMonotonic implements raft.MonotonicLogStore as the store below does.
func (s *logStore) IsMonotonic() bool { return isMonotonic(s.store) }

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
		time.Sleep(diskBackoff.Delay(attempt))
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
