package client_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/faultproxy"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

func newClient(t *testing.T, c *testcluster.Cluster, tune func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.DefaultConfig(c.URL(0))
	if tune != nil {
		tune(&cfg)
	}
	cl, err := client.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

func totalRequests(cl *client.Client) int64 {
	var n int64
	for _, s := range cl.Stats() {
		n += s.Requests
	}
	return n
}

func TestClient_Operations(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newClient(t, c, nil)
	ctx := context.Background()

	_, err := cl.Get(ctx, "missing")
	require.ErrorIs(t, err, client.ErrNotFound)

	v1, err := cl.Put(ctx, "k", []byte("v1"))
	require.NoError(t, err)
	it, err := cl.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v1", string(it.Value))
	require.Equal(t, v1, it.Version)

	_, err = cl.Put(ctx, "k", []byte("v2"), client.IfVersion(v1+1000))
	require.ErrorIs(t, err, client.ErrPreconditionFailed)
	var ce *client.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, 412, ce.Status)
	v2, err := cl.Put(ctx, "k", []byte("v2"), client.IfVersion(v1))
	require.NoError(t, err)
	require.Greater(t, v2, v1)
	_, err = cl.Put(ctx, "k", []byte("v3"), client.CreateOnly())
	require.ErrorIs(t, err, client.ErrPreconditionFailed)
	_, err = cl.Put(ctx, "fresh", []byte("x"), client.CreateOnly())
	require.NoError(t, err)
	_, err = cl.Put(ctx, "absent", []byte("x"), client.IfExists())
	require.ErrorIs(t, err, client.ErrPreconditionFailed)

	deleted, err := cl.Delete(ctx, "k", client.IfVersion(v2))
	require.NoError(t, err)
	require.True(t, deleted)
	deleted, err = cl.Delete(ctx, "k")
	require.NoError(t, err)
	require.False(t, deleted)

	_, err = cl.Put(ctx, "", []byte("x"))
	require.ErrorIs(t, err, client.ErrInvalid)

	for _, consistency := range []kvd.Consistency{kvd.Linearizable, kvd.Follower, kvd.Stale} {
		_, err := cl.Put(ctx, "c/"+string(consistency), []byte(consistency))
		require.NoError(t, err)
		if consistency == kvd.Stale {
			// A stale read may lag; it sees the write eventually.
			require.Eventually(t, func() bool {
				it, err := cl.Get(ctx, "c/stale", client.WithConsistency(consistency))
				return err == nil && string(it.Value) == "stale"
			}, 5*time.Second, 10*time.Millisecond)
			continue
		}
		it, err := cl.Get(ctx, "c/"+string(consistency), client.WithConsistency(consistency))
		require.NoError(t, err)
		require.Equal(t, string(consistency), string(it.Value))
	}
}

func TestClient_WritesGoStraightToTheLeader(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	// Warm up: the client learns every leader.
	for i := range 30 {
		_, err := cl.Put(ctx, fmt.Sprintf("warm%d", i), []byte("x"))
		require.NoError(t, err)
	}
	before := totalRequests(cl)
	for i := range 100 {
		_, err := cl.Put(ctx, fmt.Sprintf("w%d", i), []byte("x"))
		require.NoError(t, err)
		_, err = cl.Get(ctx, fmt.Sprintf("w%d", i))
		require.NoError(t, err)
	}
	// One attempt per call: no refusals, no forwarding.
	require.Equal(t, int64(200), totalRequests(cl)-before)
}

func TestClient_ScanMergesEveryGroup(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	var want []string
	for i := range 50 {
		k := fmt.Sprintf("s/%02d", i)
		want = append(want, k)
		_, err := cl.Put(ctx, k, []byte(k))
		require.NoError(t, err)
	}
	_, err := cl.Put(ctx, "t/other", []byte("x"))
	require.NoError(t, err)
	for _, consistency := range []kvd.Consistency{kvd.Linearizable, kvd.Follower, kvd.Stale} {
		var got []string
		o := kvd.ScanOptions{Prefix: "s/", Limit: 8}
		for range 20 {
			p, err := cl.Scan(ctx, o, client.WithConsistency(consistency))
			require.NoError(t, err)
			for _, it := range p.Items {
				got = append(got, it.Key)
			}
			if !p.More {
				break
			}
			require.Len(t, p.Items, 8)
			o.Start = p.Next
		}
		require.Equal(t, want, got, string(consistency))
	}
}

// readShares sends n follower reads and returns each node's share of them.
func readShares(t *testing.T, cl *client.Client, n int, consistency kvd.Consistency) map[string]float64 {
	t.Helper()
	ctx := context.Background()
	_, err := cl.Put(ctx, "spread", []byte("x"))
	require.NoError(t, err)
	before := cl.Stats()
	if consistency == kvd.Stale {
		// Wait until every replica has applied the write: a run of
		// stale reads spread over them all succeeds.
		require.Eventually(t, func() bool {
			for range 30 {
				if _, err := cl.Get(ctx, "spread", client.WithConsistency(consistency)); err != nil {
					return false
				}
			}
			return true
		}, 5*time.Second, 10*time.Millisecond)
		before = cl.Stats()
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := cl.Get(ctx, "spread", client.WithConsistency(consistency)); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, failed.Load(), "%v", firstErr.Load())
	shares := map[string]float64{}
	for id, s := range cl.Stats() {
		shares[id] = float64(s.Requests-before[id].Requests) / float64(n)
	}
	return shares
}

func TestClient_ReadPoliciesSpreadReads(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	for _, p := range []client.Policy{client.Random, client.RoundRobin, client.PowerOfTwo} {
		// Requests are counted: with coalescing, one may carry many reads.
		cl := newClient(t, c, func(cfg *client.Config) { cfg.ReadPolicy = p; cfg.BatchLanes = -1 })
		for _, consistency := range []kvd.Consistency{kvd.Follower, kvd.Stale} {
			shares := readShares(t, cl, 600, consistency)
			t.Logf("%s %s: %v", p, consistency, shares)
			// random and round-robin spread evenly; p2c favours the
			// faster replicas but starves none.
			floor := 0.2
			if p == client.PowerOfTwo {
				floor = 0.02
			}
			for i := range 3 {
				require.Greater(t, shares[testcluster.NodeID(i)], floor, "%s %s: node %d starved: %v", p, consistency, i, shares)
			}
		}
	}
}

func TestClient_PowerOfTwoAvoidsASlowReplica(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	slow := (leader + 1) % 3
	proxy, err := faultproxy.New("127.0.0.1:0", c.URL(slow)[len("http://"):])
	require.NoError(t, err)
	t.Cleanup(func() { proxy.Close() })
	proxy.SetDelay(15 * time.Millisecond)
	through := func(cfg *client.Config) {
		cfg.NodeURLs = map[string]string{testcluster.NodeID(slow): "http://" + proxy.Addr()}
		cfg.BatchLanes = -1 // requests are counted
	}
	slowID := testcluster.NodeID(slow)

	rnd := newClient(t, c, func(cfg *client.Config) { through(cfg); cfg.ReadPolicy = client.Random })
	randomShare := readShares(t, rnd, 600, kvd.Follower)[slowID]
	p2c := newClient(t, c, func(cfg *client.Config) { through(cfg); cfg.ReadPolicy = client.PowerOfTwo })
	p2cShare := readShares(t, p2c, 600, kvd.Follower)[slowID]
	t.Logf("share of reads on the slow replica: random %.2f, p2c %.2f", randomShare, p2cShare)
	require.Greater(t, randomShare, 0.2, "random ignores latency")
	require.Less(t, p2cShare, 0.12, "p2c should send clearly fewer reads to a slow replica")
	require.Less(t, p2cShare, randomShare/2)
}

func TestClient_KilledReplicaIsEjectedAndProbedBack(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	victim := (leader + 1) % 3
	// The first backoff outlasts the 200 reads even on a slow, loaded
	// machine: once it ends the replica is back on trial until the next
	// probe, and the Ejected check below would race with that.
	cl := newClient(t, c, func(cfg *client.Config) {
		cfg.ReadPolicy = client.RoundRobin
		cfg.EjectBackoff = 2 * time.Second
	})
	ctx := context.Background()
	_, err := cl.Put(ctx, "k", []byte("v"))
	require.NoError(t, err)
	c.Stop(victim)
	for range 200 {
		it, err := cl.Get(ctx, "k", client.WithConsistency(kvd.Follower))
		require.NoError(t, err, "reads keep succeeding while a replica is down")
		require.Equal(t, "v", string(it.Value))
	}
	vid := testcluster.NodeID(victim)
	st := cl.Stats()[vid]
	require.True(t, st.Ejected, "%+v", st)
	require.Positive(t, st.Failures)
	require.Less(t, st.Failures, int64(20), "an ejected replica is not hammered")

	c.Restart(victim)
	require.Eventually(t, func() bool { return !cl.Stats()[vid].Ejected }, 15*time.Second, 50*time.Millisecond, "probed back")
	before := cl.Stats()[vid].Requests
	require.Eventually(t, func() bool {
		_, err := cl.Get(ctx, "k", client.WithConsistency(kvd.Follower))
		require.NoError(t, err)
		return cl.Stats()[vid].Requests > before
	}, 5*time.Second, 10*time.Millisecond, "the replica serves reads again")
}

func TestClient_FollowsLeaderChangeWithoutErrors(t *testing.T) {
	c := testcluster.New(t, 3, 1, func(cfg *server.Config) { cfg.LeaderBalanceInterval = 0 })
	cl := newClient(t, c, nil)
	ctx := context.Background()
	_, err := cl.Put(ctx, "k", []byte("v"))
	require.NoError(t, err)
	leader := c.Leader(1)
	var stop atomic.Bool
	var reads, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := cl.Get(rctx, "k")
				cancel()
				reads.Add(1)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	c.Stop(leader)
	next := c.Leader(1)
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	require.Zero(t, failures.Load(), "linearizable reads must ride through a leader change: %v (stopped %d, next %d) %+v", firstErr.Load(), leader, next, cl.Stats())
	require.Equal(t, testcluster.NodeID(next), cl.CachedMap().Groups[0].Leader)
	t.Logf("%d reads across the leader change", reads.Load())
	// Writes follow too.
	_, err = cl.Put(ctx, "k2", []byte("v"))
	require.NoError(t, err)
}

func TestClient_UnknownOutcomeIsNotRetried(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	proxy, err := faultproxy.New("127.0.0.1:0", c.URL(leader)[len("http://"):])
	require.NoError(t, err)
	t.Cleanup(func() { proxy.Close() })
	lid := testcluster.NodeID(leader)
	cl := newClient(t, c, func(cfg *client.Config) {
		cfg.NodeURLs = map[string]string{lid: "http://" + proxy.Addr()}
	})
	ctx := context.Background()
	_, err = cl.Put(ctx, "k", []byte("v"))
	require.NoError(t, err)

	proxy.SetMode(faultproxy.Drop) // the request leaves, no answer comes back
	before := cl.Stats()[lid].Requests
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = cl.Put(wctx, "k", []byte("maybe"))
	cancel()
	require.ErrorIs(t, err, client.ErrUnknownOutcome)
	require.False(t, errors.Is(err, client.ErrUnavailable))
	require.Equal(t, int64(1), cl.Stats()[lid].Requests-before, "a write with an unknown outcome is never resent")

	// A refused connection is definite: the write moves on and succeeds
	// once the client learns there is no way through.
	proxy.SetMode(faultproxy.Pass)
}

func TestClient_Transactions(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	resp, err := cl.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{kvd.Exists("t/a", false)},
		Ops: []kvd.Op{kvd.OpPut("t/a", []byte("1")), kvd.OpPut("t/b", []byte("2")), kvd.OpPut("t/c", []byte("3"))}})
	require.NoError(t, err)
	require.True(t, resp.Committed)

	_, err = cl.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs("t/a", []byte("1")), kvd.VersionIs("t/b", 1)},
		Ops: []kvd.Op{kvd.OpDelete("t/a")}})
	require.ErrorIs(t, err, client.ErrCompareFailed)
	var te *client.TxnError
	require.ErrorAs(t, err, &te)
	require.Equal(t, []int{1}, te.Failed)

	// Optimistic: a read whose key changes before commit fails the commit.
	tx := cl.Begin()
	it, err := tx.Get(ctx, "t/a")
	require.NoError(t, err)
	require.Equal(t, "1", string(it.Value))
	_, err = tx.Get(ctx, "t/missing")
	require.ErrorIs(t, err, client.ErrNotFound)
	tx.Put("t/a", []byte("from-tx"))
	got, err := tx.Get(ctx, "t/a")
	require.NoError(t, err)
	require.Equal(t, "from-tx", string(got.Value), "a transaction reads its own buffered writes")
	_, err = cl.Put(ctx, "t/a", []byte("sneaky"))
	require.NoError(t, err)
	_, err = tx.Commit(ctx)
	require.ErrorIs(t, err, client.ErrCompareFailed)

	// Update retries until it commits: concurrent increments add up.
	_, err = cl.Put(ctx, "t/counter", []byte("0"))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				uctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := cl.Update(uctx, func(ctx context.Context, tx *client.Tx) error {
					it, err := tx.Get(ctx, "t/counter")
					if err != nil {
						return err
					}
					n, _ := strconv.Atoi(string(it.Value))
					tx.Put("t/counter", []byte(strconv.Itoa(n+1)))
					return nil
				})
				cancel()
				require.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	it, err = cl.Get(ctx, "t/counter")
	require.NoError(t, err)
	require.Equal(t, "30", string(it.Value))
}
