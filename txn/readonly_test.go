package txn

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

func TestReadOnly_SeesCommittedTransactionsAtomically(t *testing.T) {
	m, c := newTestCoord(t, 3)
	ctx := context.Background()
	_, err := c.Do(ctx, Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "1"), put("g3/c", "1")}}, nil)
	require.NoError(t, err)
	m.settled(t, "g1/a", "g2/b", "g3/c")
	m.mu.Lock()
	before := m.index[1] + m.index[2] + m.index[3]
	m.mu.Unlock()
	resp, err := c.Do(ctx, Request{Ops: []Op{get("g1/a"), get("g2/b"), get("g3/c"), get("g1/none")}}, nil)
	require.NoError(t, err)
	m.mu.Lock()
	require.Equal(t, before, m.index[1]+m.index[2]+m.index[3], "a read-only transaction writes nothing")
	m.mu.Unlock()
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
