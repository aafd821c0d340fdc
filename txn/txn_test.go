package txn

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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

func (m *memGroups) locked(t *testing.T, key string) bool {
	g, _ := m.GroupOf(key)
	_, _, l, err := m.dbs[g].GetLocked(key)
	require.NoError(t, err)
	return l != nil
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

func TestCoordinator_CrossGroupCommit(t *testing.T) {
	m := newMemGroups(t, 3)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	resp, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "2"), put("g3/c", "3")}}, nil)
	require.NoError(t, err)
	require.True(t, resp.Committed)
	for i, r := range resp.Results {
		require.NotZero(t, r.Version, "op %d", i)
	}
	for k, v := range map[string]string{"g1/a": "1", "g2/b": "2", "g3/c": "3"} {
		got, ok := m.value(t, k)
		require.True(t, ok)
		require.Equal(t, v, got)
		require.False(t, m.locked(t, k), "resolved before the answer")
	}
	resp, err = c.Do(ctx, Request{
		Compares: []Compare{{Key: "g1/a", Value: []byte("1")}, {Key: "g3/c", Version: ver(resp.Results[2].Version)}},
		Ops:      []Op{get("g1/a"), get("g2/b"), {Op: "delete", Key: "g3/c"}, put("g2/n", "new")},
	}, nil)
	require.NoError(t, err)
	require.Equal(t, "1", string(resp.Results[0].Value))
	require.Equal(t, "2", string(resp.Results[1].Value))
	require.True(t, resp.Results[2].Deleted)
	_, ok := m.value(t, "g3/c")
	require.False(t, ok)
}

// A caller that gives up after the locks are taken must not leave them
// behind until the deadline: the protocol runs to its end without it.
func TestCoordinator_CallerGivingUpLeavesNoLocks(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hangUpDuringPrepare(m, cancel)
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "2")}}, nil)
	if err != nil {
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
	}
	// Every group prepares, so the transaction commits and resolves
	// without its caller: values in place, no locks left.
	require.Eventually(t, func() bool {
		for k, v := range map[string]string{"g1/a": "1", "g2/b": "2"} {
			if got, ok := m.value(t, k); !ok || got != v || m.locked(t, k) {
				return false
			}
		}
		return true
	}, 2*time.Second, 10*time.Millisecond, "an abandoned transaction did not finish")
}

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

func TestCoordinator_CompareFailureAbortsEverywhere(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "1")}}, nil)
	require.NoError(t, err)
	resp, err := c.Do(ctx, Request{
		Compares: []Compare{{Key: "g1/a", Value: []byte("1")}, {Key: "g2/b", Value: []byte("nope")}},
		Ops:      []Op{put("g1/a", "2"), put("g2/b", "2")},
	}, nil)
	require.ErrorIs(t, err, kvd.ErrCompareFailed)
	require.Equal(t, []int{1}, resp.Failed)
	for _, k := range []string{"g1/a", "g2/b"} {
		require.Eventually(t, func() bool { return !m.locked(t, k) }, 5*time.Second, time.Millisecond, "resolved in the background")
		v, _ := m.value(t, k)
		require.Equal(t, "1", v, "all or nothing")
	}
}

func TestCoordinator_OnePhase(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	resp, err := c.Do(context.Background(), Request{Ops: []Op{put("g1/a", "1"), put("g1/b", "2"), get("g1/a")}}, nil)
	require.NoError(t, err)
	require.False(t, resp.Results[2].Found, "gets see the state before the transaction's writes")
	require.Equal(t, uint64(1), m.index[1], "one entry in one group")
	require.Zero(t, m.index[2])
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

func TestCoordinator_ConflictsFailFast(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	// A transaction stuck after prepare holds g1/a's lock.
	stuck := make(chan struct{})
	done := pauseAfterPrepare(t, m, c, stuck, errors.New("coordinator died"))
	c2 := newCoord(m)
	defer c2.Close()
	start := time.Now()
	_, err := c2.Do(context.Background(), Request{Ops: []Op{get("g1/a"), put("g2/z", "1")}}, nil)
	require.ErrorIs(t, err, kvd.ErrConflict)
	require.Less(t, time.Since(start), 500*time.Millisecond, "no waiting on locks")
	_, err = c2.Do(context.Background(), Request{Ops: []Op{put("g1/a", "1")}}, nil)
	require.ErrorIs(t, err, kvd.ErrConflict, "one-phase honours other transactions' locks")
	close(stuck)
	require.Error(t, <-done)
}

func TestCoordinator_OnePhaseWaitsBrieflyForLocks(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	// A cross-group transaction pauses after prepare, holding g1/a.
	release := make(chan struct{})
	done := pauseAfterPrepare(t, m, c, release, nil)
	c2 := newCoord(m)
	defer c2.Close()
	add := make(chan error, 1)
	go func() {
		_, err := c2.Do(ctx, Request{Ops: []Op{{Op: "add", Key: "g1/n", Delta: 1}, put("g1/a", "after")}}, nil)
		add <- err
	}()
	time.Sleep(50 * time.Millisecond)
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, <-add, "the one-phase transaction waited for the lock and then applied")
	v, _ := m.value(t, "g1/a")
	require.Equal(t, "after", v)

	// A lock whose coordinator died is settled once past its deadline.
	c.cfg.AfterPrepare = func(string) error { return errors.New("coordinator died") }
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "lost"), put("g2/b", "lost")}}, nil)
	require.Error(t, err)
	require.True(t, m.locked(t, "g1/a"))
	m.advance(10 * time.Second)
	_, err = c2.Do(ctx, Request{Ops: []Op{put("g1/a", "mine")}}, nil)
	require.NoError(t, err, "the expired transaction was aborted and its lock released")
	v, _ = m.value(t, "g1/a")
	require.Equal(t, "mine", v)
}

func TestIdempotent_AConflictIsNotRememberedARetryRuns(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	release := make(chan struct{})
	done := pauseAfterPrepare(t, m, c, release, nil)
	c2 := newCoord(m)
	defer c2.Close()
	req := Request{Ops: []Op{put("g1/a", "mine"), put("g2/c", "mine")}}
	idem := &kvd.Idem{Key: "K", FP: []byte("fp")}
	_, err := c2.Do(ctx, req, idem)
	require.ErrorIs(t, err, kvd.ErrConflict, "the lock is held")
	close(release)
	require.NoError(t, <-done)
	resp, err := c2.Do(ctx, req, idem)
	require.NoError(t, err, "the retry runs: the conflict applied nothing and was not remembered")
	require.True(t, resp.Committed)
	v, _ := m.value(t, "g1/a")
	require.Equal(t, "mine", v)
	again, err := c2.Do(ctx, req, idem)
	require.NoError(t, err)
	require.Equal(t, resp.Results, again.Results, "and now the outcome is remembered")
}

// An idempotency key is registered in its home group when the request
// writes elsewhere, so a reuse is caught whichever groups it writes.
func TestIdempotent_AKeyReusedInAnotherGroupIsRefused(t *testing.T) {
	m := newMemGroups(t, 3)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	idem := func(fp string) *kvd.Idem { return &kvd.Idem{Key: "g3/token", FP: []byte(fp)} }
	first := Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "1")}}
	r1, err := c.Do(ctx, first, idem("first"))
	require.NoError(t, err)
	m.mu.Lock()
	require.Equal(t, uint64(1), m.index[3], "registered in group 3, the key's home")
	m.mu.Unlock()
	r2, err := c.Do(ctx, first, idem("first"))
	require.NoError(t, err, "the same request again")
	require.Equal(t, r1.Results, r2.Results)

	_, err = c.Do(ctx, Request{Ops: []Op{put("g2/x", "2")}}, idem("second"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "a one-group transaction in another group")
	_, err = c.Do(ctx, Request{Ops: []Op{put("g1/x", "2"), put("g2/y", "2")}}, idem("third"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "a cross-group transaction")
	for _, k := range []string{"g2/x", "g1/x", "g2/y"} {
		_, ok := m.value(t, k)
		require.False(t, ok, "%s: refused before anything was written", k)
		require.False(t, m.locked(t, k), "%s: nor locked", k)
	}
	require.NoError(t, Register(ctx, m, idem("first"), 1))
	require.ErrorIs(t, Register(ctx, m, idem("fourth"), 2), kvd.ErrIdempotencyMismatch)
	require.NoError(t, Register(ctx, m, idem("fourth"), 3), "in the home group the write's own record decides")

	// A home group that cannot be reached does not stop the write (its own
	// group still answers its retries); a caller that is gone does.
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 3 {
			return fmt.Errorf("group 3 is down: %w", kvd.ErrUnavailable), nil
		}
		return nil, nil
	})
	require.NoError(t, Register(ctx, m, &kvd.Idem{Key: "g3/other", FP: []byte("x")}, 1))
	gone, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, Register(gone, m, &kvd.Idem{Key: "g3/other", FP: []byte("x")}, 1), kvd.ErrUnavailable)
	m.setFault(nil)
}

// The outcome of an idempotent transaction whose caller gave up is still
// recorded when it finishes, so a repeat gets it without waiting for the
// deadline.
func TestIdempotent_OutcomeRecordedAfterTheCallerLeft(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hangUpDuringPrepare(m, cancel)
	req := Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "2")}}
	idem := &kvd.Idem{Key: "g1/token", FP: []byte("fp")}
	_, err := c.Do(ctx, req, idem)
	if err != nil {
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
	}
	m.setFault(nil)
	rctx, rcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer rcancel()
	resp, err := c.Do(rctx, req, idem) // the fake clock stands still: no deadline passes
	require.NoError(t, err)
	require.True(t, resp.Committed)
	require.Len(t, resp.Results, 2)
	for i, r := range resp.Results {
		require.NotZero(t, r.Version, "result %d carries its version", i)
	}
}

func TestIdempotent_ARepeatTakesOverAnAbortedFirstAttempt(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	req := Request{Ops: []Op{put("g1/a", "v"), put("g2/b", "v")}}
	idem := &kvd.Idem{Key: "K2", FP: []byte("fp")}
	// The first attempt's coordinator dies after prepare.
	c.cfg.AfterPrepare = func(string) error { return errors.New("coordinator died") }
	_, err := c.Do(ctx, req, idem)
	require.Error(t, err)
	// Past its deadline, a repeat aborts it through its record and runs.
	m.advance(10 * time.Second)
	c2 := newCoord(m)
	defer c2.Close()
	resp, err := c2.Do(ctx, req, idem)
	if errors.Is(err, kvd.ErrConflict) {
		// The dead attempt's locks were still there; the repeat settled
		// them on its way out and released the key: retry.
		resp, err = c2.Do(ctx, req, idem)
	}
	require.NoError(t, err)
	require.True(t, resp.Committed)
	v, _ := m.value(t, "g2/b")
	require.Equal(t, "v", v)
}

func TestRecovery_CoordinatorDiesBeforeTheDecision(t *testing.T) {
	m := newMemGroups(t, 3)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "old"), put("g2/b", "old")}}, nil)
	require.NoError(t, err)

	c.cfg.AfterPrepare = func(string) error { return errors.New("coordinator died") }
	_, err = c.Do(ctx, Request{Ops: []Op{put("g1/a", "new"), put("g2/b", "new")}}, nil)
	require.Error(t, err)
	require.True(t, m.locked(t, "g1/a"))
	require.True(t, m.locked(t, "g2/b"))

	// Before the deadline the janitors leave it alone.
	for g := kvd.GroupID(1); g <= 3; g++ {
		require.NoError(t, NewJanitor(m, m.dbs[g], g, nil).Sweep(ctx))
	}
	require.True(t, m.locked(t, "g2/b"))

	// After it, g2's janitor recovers through g1's record: aborted.
	m.advance(10 * time.Second)
	j := NewJanitor(m, m.dbs[2], 2, nil)
	j.Now = m.clock
	require.NoError(t, j.Sweep(ctx))
	require.False(t, m.locked(t, "g2/b"))
	v, _ := m.value(t, "g2/b")
	require.Equal(t, "old", v)
	// g1's janitor finishes the record: resolves everyone, forgets it.
	j = NewJanitor(m, m.dbs[1], 1, nil)
	j.Now = m.clock
	require.NoError(t, j.Sweep(ctx))
	require.False(t, m.locked(t, "g1/a"))
	v, _ = m.value(t, "g1/a")
	require.Equal(t, "old", v, "all or nothing: nothing")
	recs, err := m.dbs[1].Records()
	require.NoError(t, err)
	require.Empty(t, recs, "the record is forgotten once resolved everywhere")
}

func TestRecovery_CoordinatorDiesAfterCommitting(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	// The coordinator commits, then dies before resolving group 2.
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 2 && cmd.Kind == store.CmdTxnResolve {
			return kvd.ErrUnavailable, nil
		}
		return nil, nil
	})
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	resp, err := c.Do(cctx, Request{Ops: []Op{put("g1/a", "new"), put("g2/b", "new")}}, nil)
	cancel()
	require.NoError(t, err, "committed: the answer does not wait for a group it cannot reach")
	require.True(t, resp.Committed)
	c.Close() // dies: its background resolution stops
	require.True(t, m.locked(t, "g2/b"))
	m.setFault(nil)

	// A reader meeting the intent consults the record: committed.
	st, err := Recover(ctx, m, store.Lock{Txn: lockOf(t, m, "g2/b").Txn, RecordGroup: 1, Deadline: lockOf(t, m, "g2/b").Deadline})
	require.NoError(t, err)
	require.Equal(t, store.TxnCommitted, st)

	m.advance(10 * time.Second)
	j := NewJanitor(m, m.dbs[2], 2, nil)
	j.Now = m.clock
	require.NoError(t, j.Sweep(ctx))
	v, ok := m.value(t, "g2/b")
	require.True(t, ok)
	require.Equal(t, "new", v, "all or nothing: all")
}

func lockOf(t *testing.T, m *memGroups, key string) store.Lock {
	g, _ := m.GroupOf(key)
	_, _, l, err := m.dbs[g].GetLocked(key)
	require.NoError(t, err)
	require.NotNil(t, l)
	return *l
}

func TestRecovery_LateCommitLosesToRecovery(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	// The coordinator stalls after prepare; past the deadline recovery
	// aborts; then the coordinator wakes up and tries to commit.
	var id string
	c.cfg.AfterPrepare = func(txn string) error {
		id = txn
		m.advance(10 * time.Second)
		st, err := Recover(ctx, m, store.Lock{Txn: txn, RecordGroup: 1, Deadline: m.clock().Add(-time.Second).UnixNano()})
		require.NoError(t, err)
		require.Equal(t, store.TxnAborted, st)
		return nil
	}
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "x"), put("g2/b", "y")}}, nil)
	require.ErrorIs(t, err, kvd.ErrConflict, "the late commit loses")
	require.NotEmpty(t, id)
	c.Close()
	_, ok := m.value(t, "g1/a")
	require.False(t, ok)
	_, ok = m.value(t, "g2/b")
	require.False(t, ok)
}

func TestCoordinator_UnknownPrepareAborts(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	// Group 2 applies the prepare but the answer is lost.
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 2 && cmd.Kind == store.CmdTxnPrepare {
			return nil, kvd.ErrUnknownOutcome
		}
		return nil, nil
	})
	_, err := c.Do(context.Background(), Request{Ops: []Op{put("g1/a", "x"), put("g2/b", "y")}}, nil)
	require.Error(t, err)
	require.False(t, errors.Is(err, kvd.ErrUnknownOutcome), "not committed, and the coordinator knows it")
	m.setFault(nil)
	require.Eventually(t, func() bool { return !m.locked(t, "g2/b") }, 5*time.Second, time.Millisecond, "the lock the lost prepare took is released")
	_, ok := m.value(t, "g2/b")
	require.False(t, ok)
}

func TestCoordinator_UnknownDecisionIsRetried(t *testing.T) {
	m := newMemGroups(t, 2)
	c := newCoord(m)
	defer c.Close()
	lost := 0
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if cmd.Kind == store.CmdTxnDecide && lost < 2 {
			lost++
			return nil, kvd.ErrUnknownOutcome // applied, answer lost
		}
		return nil, nil
	})
	resp, err := c.Do(context.Background(), Request{Ops: []Op{put("g1/a", "x"), put("g2/b", "y")}}, nil)
	require.NoError(t, err)
	require.True(t, resp.Committed)
	v, _ := m.value(t, "g2/b")
	require.Equal(t, "y", v)
}

func TestReadOnly_SeesCommittedTransactionsAtomically(t *testing.T) {
	m := newMemGroups(t, 3)
	c := newCoord(m)
	defer c.Close()
	ctx := context.Background()
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "1"), put("g3/c", "1")}}, nil)
	require.NoError(t, err)
	before := m.index[1] + m.index[2] + m.index[3]
	resp, err := c.Do(ctx, Request{Ops: []Op{get("g1/a"), get("g2/b"), get("g3/c"), get("g1/none")}}, nil)
	require.NoError(t, err)
	require.Equal(t, before, m.index[1]+m.index[2]+m.index[3], "a read-only transaction writes nothing")
	for i := range 3 {
		require.Equal(t, "1", string(resp.Results[i].Value))
	}
	require.False(t, resp.Results[3].Found)

	// A committed transaction whose resolution did not reach group 2: the
	// read finds the intent, settles it through the record, and sees it.
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 2 && cmd.Kind == store.CmdTxnResolve {
			return kvd.ErrUnavailable, nil
		}
		return nil, nil
	})
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.Do(cctx, Request{Ops: []Op{put("g1/a", "2"), put("g2/b", "2")}}, nil)
	cancel()
	require.NoError(t, err)
	c.Close() // the coordinator dies before resolving group 2
	c = newCoord(m)
	defer c.Close()
	m.setFault(nil)
	require.True(t, m.locked(t, "g2/b"))
	resp, err = c.Do(ctx, Request{Ops: []Op{get("g1/a"), get("g2/b")}}, nil)
	require.NoError(t, err)
	require.Equal(t, "2", string(resp.Results[0].Value))
	require.Equal(t, "2", string(resp.Results[1].Value), "never half a transaction")

	// Compares are evaluated on the same snapshot.
	_, err = c.Do(ctx, Request{Compares: []Compare{{Key: "g3/c", Value: []byte("9")}}, Ops: []Op{get("g1/a")}}, nil)
	require.ErrorIs(t, err, kvd.ErrCompareFailed)
}

func TestValidate(t *testing.T) {
	l := kvd.DefaultLimits()
	l.MaxTxnKeys = 3
	bad := []Request{
		{},
		{Ops: []Op{{Op: "incr", Key: "a"}}},
		{Ops: []Op{put("a", "1"), put("a", "2")}},
		{Ops: []Op{put("", "1")}},
		{Compares: []Compare{{Key: "a"}}},
		{Compares: []Compare{{Key: "a", Version: ver(1), Exists: new(bool)}}},
		{Ops: []Op{get("a"), get("b"), get("c"), get("d")}},
		{Ops: []Op{put(strings.Repeat("k", 2000), "1")}},
		{Ops: []Op{get("a"), get("a")}},                                                         // one get answers for both: a repeat only multiplies the answer
		{Ops: []Op{{Op: "put", Key: "a", Value: []byte("1"), TTL: 200 * 365 * 24 * time.Hour}}}, // past kvd.MaxTTL
	}
	for i, r := range bad {
		require.Error(t, Validate(r, l), "request %d", i)
	}
	require.NoError(t, Validate(Request{Ops: []Op{get("a"), put("b", "1"), {Op: "delete", Key: "c"}}}, l))
	require.NoError(t, Validate(Request{Ops: []Op{get("a"), put("a", "1")}}, l), "a key may be read and written")
}
