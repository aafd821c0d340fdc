package txn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

func TestCoordinator_CrossGroupCommit(t *testing.T) {
	m, c := newTestCoord(t, 3)
	ctx := context.Background()
	resp, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "2"), put("g3/c", "3")}}, nil)
	require.NoError(t, err)
	require.True(t, resp.Committed)
	for i, r := range resp.Results {
		require.NotZero(t, r.Version, "op %d", i)
	}
	m.settled(t, "g1/a", "g2/b", "g3/c") // resolution follows the answer
	for i, k := range []string{"g1/a", "g2/b", "g3/c"} {
		got, ok := m.value(t, k)
		require.True(t, ok)
		require.Equal(t, fmt.Sprint(i+1), got)
		g, _ := m.GroupOf(k)
		it, err := m.dbs[g].Get(k)
		require.NoError(t, err)
		require.Equal(t, resp.Results[i].Version, it.Version, "the answered version is the one the write took")
	}
	resp, err = c.Do(ctx, Request{
		Compares: []Compare{{Key: "g1/a", Value: []byte("1")}, {Key: "g3/c", Version: ver(resp.Results[2].Version)}},
		Ops:      []Op{get("g1/a"), get("g2/b"), {Op: "delete", Key: "g3/c"}, put("g2/n", "new")},
	}, nil)
	require.NoError(t, err)
	require.Equal(t, "1", string(resp.Results[0].Value))
	require.Equal(t, "2", string(resp.Results[1].Value))
	require.True(t, resp.Results[2].Deleted)
	m.settled(t, "g3/c")
	_, ok := m.value(t, "g3/c")
	require.False(t, ok)
}

// A caller that gives up after the locks are taken must not leave them
// behind until the deadline: the protocol runs to its end without it.
func TestCoordinator_CallerGivingUpLeavesNoLocks(t *testing.T) {
	m, c := newTestCoord(t, 2)
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

func TestCoordinator_CompareFailureAbortsEverywhere(t *testing.T) {
	m, c := newTestCoord(t, 2)
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
	m, c := newTestCoord(t, 2)
	resp, err := c.Do(context.Background(), Request{Ops: []Op{put("g1/a", "1"), put("g1/b", "2"), get("g1/a")}}, nil)
	require.NoError(t, err)
	require.False(t, resp.Results[2].Found, "gets see the state before the transaction's writes")
	require.Equal(t, uint64(1), m.index[1], "one entry in one group")
	require.Zero(t, m.index[2])
}

func TestCoordinator_ConflictsFailFast(t *testing.T) {
	m, c := newTestCoord(t, 2)
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
	m, c := newTestCoord(t, 2)
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

func TestCoordinator_UnknownPrepareAborts(t *testing.T) {
	m, c := newTestCoord(t, 2)
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
	m, c := newTestCoord(t, 2)
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
	m.settled(t, "g2/b")
	v, _ := m.value(t, "g2/b")
	require.Equal(t, "y", v)
}

// A cross-group transaction is answered after the decision, in two
// rounds: the answer does not wait for the other groups' resolution, and
// carries the version each write takes when it is resolved.
func TestCoordinator_AnswersBeforeTheResolution(t *testing.T) {
	m, c := newTestCoord(t, 2)
	release := make(chan struct{})
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 2 && cmd.Kind == store.CmdTxnResolve {
			<-release
		}
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "x"), put("g2/b", "y")}}, nil)
	require.NoError(t, err)
	require.True(t, resp.Committed)
	require.True(t, m.locked(t, "g2/b"), "answered while group 2 is not resolved")
	require.NotZero(t, resp.Results[1].Version)
	close(release)
	m.settled(t, "g2/b")
	it, err := m.dbs[2].Get("g2/b")
	require.NoError(t, err)
	require.Equal(t, "y", string(it.Value))
	require.Equal(t, resp.Results[1].Version, it.Version)
}
