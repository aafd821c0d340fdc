package txn

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// memGroups is a cluster of groups in one process: each group is a real
// store applying commands in order, as its Raft log would, without Raft
// (replication is tested elsewhere). Keys route by prefix: "g2/x" lives in
// group 2. Faults can be injected per proposal.
type memGroups struct {
	mu    sync.Mutex // serializes applies (one log per group)
	dbs   map[kvd.GroupID]*store.DB
	index map[kvd.GroupID]uint64
	now   time.Time
	// fault, if set, may fail a proposal before or after it applies.
	fault func(g kvd.GroupID, c store.Cmd) (before, after error)
}

func newMemGroups(t *testing.T, n int) *memGroups {
	m := &memGroups{dbs: map[kvd.GroupID]*store.DB{}, index: map[kvd.GroupID]uint64{}, now: time.Unix(1000, 0)}
	for g := 1; g <= n; g++ {
		db, err := store.Open(filepath.Join(t.TempDir(), "state.db"), store.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		m.dbs[kvd.GroupID(g)] = db
	}
	return m
}

func (m *memGroups) GroupOf(key string) (kvd.GroupID, error) {
	var g kvd.GroupID
	if _, err := fmt.Sscanf(key, "g%d/", &g); err != nil {
		return 1, nil // like a slot: every string has a group
	}
	if m.dbs[g] == nil {
		return 0, fmt.Errorf("%w: no group for %q", kvd.ErrInvalid, key)
	}
	return g, nil
}

func (m *memGroups) Propose(ctx context.Context, g kvd.GroupID, c store.Cmd) (store.Result, error) {
	var before, after error
	m.mu.Lock()
	fault := m.fault
	m.mu.Unlock()
	if fault != nil {
		before, after = fault(g, c)
	}
	if before != nil {
		return store.Result{}, before
	}
	if err := ctx.Err(); err != nil { // as a real proposal: nothing applied
		return store.Result{}, fmt.Errorf("propose: %v: %w", err, kvd.ErrUnavailable)
	}
	m.mu.Lock()
	m.index[g]++
	res, err := m.dbs[g].Apply([]store.Entry{{Index: m.index[g], Term: 1, Batch: &store.Batch{Time: m.now.UnixNano(), Cmds: []store.Cmd{c}}}})
	m.mu.Unlock()
	if err != nil {
		return store.Result{}, err
	}
	if after != nil {
		return store.Result{}, after
	}
	return res[0][0], nil
}

func (m *memGroups) Read(ctx context.Context, g kvd.GroupID, keys []string) ([]store.KeyState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dbs[g].ReadKeys(keys)
}

func (m *memGroups) setFault(f func(g kvd.GroupID, c store.Cmd) (before, after error)) {
	m.mu.Lock()
	m.fault = f
	m.mu.Unlock()
}

func (m *memGroups) advance(d time.Duration) {
	m.mu.Lock()
	m.now = m.now.Add(d)
	m.mu.Unlock()
}

func (m *memGroups) clock() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

func (m *memGroups) value(t *testing.T, key string) (string, bool) {
	g, err := m.GroupOf(key)
	require.NoError(t, err)
	it, err := m.dbs[g].Get(key)
	if errors.Is(err, kvd.ErrNotFound) {
		return "", false
	}
	require.NoError(t, err)
	return string(it.Value), true
}

// settled waits until no lock is left on keys: a committed transaction
// is answered before its resolution, which follows in the background.
func (m *memGroups) settled(t *testing.T, keys ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, k := range keys {
			if m.locked(t, k) {
				return false
			}
		}
		return true
	}, 5*time.Second, time.Millisecond, "locks left on %v", keys)
}

func (m *memGroups) locked(t *testing.T, key string) bool {
	g, _ := m.GroupOf(key)
	_, _, l, err := m.dbs[g].GetLocked(key)
	require.NoError(t, err)
	return l != nil
}

// newTestCoord returns n in-memory groups and a coordinator over them,
// closed when the test ends.
func newTestCoord(t *testing.T, n int) (*memGroups, *Coordinator) {
	m := newMemGroups(t, n)
	c := newCoord(m)
	t.Cleanup(c.Close)
	return m, c
}

func newCoord(m *memGroups) *Coordinator {
	cfg := DefaultConfig()
	cfg.Timeout = 5 * time.Second
	cfg.Now = m.clock
	return New(m, cfg)
}

func put(k, v string) Op   { return Op{Op: "put", Key: k, Value: []byte(v)} }
func get(k string) Op      { return Op{Op: "get", Key: k} }
func ver(v uint64) *uint64 { return &v }

// hangUpDuringPrepare makes the caller give up (cancel) while group 2
// prepares, once the locks may be taken.
func hangUpDuringPrepare(m *memGroups, cancel context.CancelFunc) {
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 2 && cmd.Kind == store.CmdTxnPrepare {
			cancel()
		}
		return nil, nil
	})
}

// pauseAfterPrepare starts on c a transaction writing g1/a and g2/b that
// stops after prepare, holding their locks, until release is closed, and
// then goes on (after nil) or stops there (after an error: its coordinator
// died). It returns once the locks are held; the channel gets the
// transaction's error.
func pauseAfterPrepare(t *testing.T, m *memGroups, c *Coordinator, release <-chan struct{}, after error) <-chan error {
	t.Helper()
	c.cfg.AfterPrepare = func(string) error { <-release; return after }
	done := make(chan error, 1)
	go func() {
		_, err := c.Do(context.Background(), Request{Ops: []Op{put("g1/a", "x"), put("g2/b", "y")}}, nil)
		done <- err
	}()
	require.Eventually(t, func() bool { return m.locked(t, "g1/a") }, time.Second, time.Millisecond)
	return done
}

func lockOf(t *testing.T, m *memGroups, key string) store.Lock {
	g, _ := m.GroupOf(key)
	_, _, l, err := m.dbs[g].GetLocked(key)
	require.NoError(t, err)
	require.NotNil(t, l)
	return *l
}
