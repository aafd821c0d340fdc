package client

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

func TestClient_StaleMapIsRefreshedOnWrongGroup(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl, err := New(context.Background(), DefaultConfig(c.URL(1)))
	require.NoError(t, err)
	defer cl.Close()

	// Pretend the cached map is older than the cluster's, and scrambled:
	// every slot routed to group 1.
	old := cl.route.Load()
	stale := *old
	stale.epoch = 0
	for i := range stale.slots {
		stale.slots[i] = 1
	}
	cl.route.Store(&stale)
	cl.refreshedAt = cl.refreshedAt.Add(-1e9)

	key := "a-key-of-another-group"
	for kvd.Slot(key) <= 341 { // keep looking until it belongs elsewhere
		key += "x"
	}
	_, err = cl.Put(context.Background(), key, []byte("v"))
	require.NoError(t, err, "a 421 makes the client refresh its map and retry")
	require.Equal(t, old.epoch, cl.route.Load().epoch)
	it, err := cl.Get(context.Background(), key)
	require.NoError(t, err)
	require.Equal(t, "v", string(it.Value))
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"": PowerOfTwo, "p2c": PowerOfTwo, "random": Random, "round-robin": RoundRobin} {
		got, err := ParsePolicy(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := ParsePolicy("fastest")
	require.ErrorIs(t, err, kvd.ErrInvalid)
}

func TestNew_RejectsBadConfig(t *testing.T) {
	_, err := New(context.Background(), Config{})
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = New(context.Background(), Config{Endpoints: []string{"127.0.0.1:1"}, ReadPolicy: "nope"})
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = New(context.Background(), Config{Endpoints: []string{"127.0.0.1:1"}, Consistency: "eventual"})
	require.ErrorIs(t, err, kvd.ErrInvalid)
	// Nothing listens there: unavailable, promptly.
	_, err = New(context.Background(), Config{Endpoints: []string{"127.0.0.1:1"}})
	require.ErrorIs(t, err, kvd.ErrUnavailable)
}

// BenchmarkPickReplica measures the router's choice of a replica for a
// follower read (p2c over three healthy replicas).
func BenchmarkPickReplica(b *testing.B) {
	for _, p := range []Policy{PowerOfTwo, Random, RoundRobin} {
		b.Run(string(p), func(b *testing.B) {
			c := &Client{cfg: Config{ReadPolicy: p}}
			g := &groupRoute{id: 1, members: []*node{{id: "n1"}, {id: "n2"}, {id: "n3"}}}
			b.ReportAllocs()
			for b.Loop() {
				if c.pickReplica(g, nil) == nil {
					b.Fatal("no replica")
				}
			}
		})
	}
}
