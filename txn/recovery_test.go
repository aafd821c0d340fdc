package txn

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

func TestRecovery_CoordinatorDiesBeforeTheDecision(t *testing.T) {
	m, c := newTestCoord(t, 3)
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
	m, c := newTestCoord(t, 2)
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

func TestRecovery_LateCommitLosesToRecovery(t *testing.T) {
	m, c := newTestCoord(t, 2)
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
