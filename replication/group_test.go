package replication

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

func TestGroup_ElectsAndReplicates(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	_, _ = tg.leader()
	for i := range 20 {
		v, err := tg.put(fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		require.NoError(t, err)
		require.NotZero(t, v)
	}
	for i := range 3 {
		tg.waitValue(i, "k19", "v19")
		items, _, err := tg.reps[i].Store().Scan(kvd.ScanOptions{})
		require.NoError(t, err)
		require.Len(t, items, 20, "replica %d", i)
	}
}

func TestGroup_Propose_CoalescesConcurrentWrites(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	_, g := tg.leader()
	before := g.raft.LastIndex()
	const n = 400
	var wg sync.WaitGroup
	versions := make([]uint64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: fmt.Sprintf("c%d", i), Value: []byte("x")})
			if err == nil {
				versions[i] = r.Version
			}
		}()
	}
	wg.Wait()
	entries := g.raft.LastIndex() - before
	for i, v := range versions {
		require.NotZero(t, v, "write %d failed", i)
	}
	require.Less(t, entries, uint64(n), "%d writes should share log entries, used %d", n, entries)
	t.Logf("%d concurrent writes used %d log entries", n, entries)
}

func TestGroup_Propose_SameKeyGetsDistinctVersions(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	_, g := tg.leader()
	const n = 100
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[uint64]bool{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := g.Propose(context.Background(), store.Cmd{Kind: store.CmdPut, Key: "hot", Value: []byte("x")})
			require.NoError(t, err)
			mu.Lock()
			defer mu.Unlock()
			require.False(t, seen[r.Version], "version %d given twice", r.Version)
			seen[r.Version] = true
		}()
	}
	wg.Wait()
	require.Len(t, seen, n)
}

func TestGroup_LeaderKilled_NoAckedWriteLost(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, _ := tg.leader()

	var acked sync.Map
	var stop atomic.Bool
	var wg sync.WaitGroup
	// The workers use their own copy of the replicas: a closed replica
	// simply stops being a leader.
	reps := append([]*Group(nil), tg.reps...)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				var g *Group
				for _, r := range reps {
					if r.IsLeader() {
						g = r
					}
				}
				if g == nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				r, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: key, Value: []byte(key)})
				cancel()
				if err == nil && r.Err == nil {
					acked.Store(key, r.Version)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	tg.stop(li)
	killed := time.Now()

	// A new leader serves writes within a few seconds.
	var newLeader *Group
	require.Eventually(t, func() bool {
		for i, g := range reps {
			if i != li && g.IsLeader() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: "after", Value: []byte("1")})
				cancel()
				if err == nil {
					newLeader = g
					return true
				}
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond)
	t.Logf("new leader served a write %v after the old one died", time.Since(killed).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	require.NoError(t, newLeader.ReadBarrier(context.Background(), kvd.Linearizable))
	n := 0
	acked.Range(func(k, v any) bool {
		n++
		it, err := newLeader.Store().Get(k.(string))
		require.NoError(t, err, "acknowledged write %s lost", k)
		require.Equal(t, v.(uint64), it.Version)
		return true
	})
	require.Positive(t, n)
	t.Logf("%d acknowledged writes all present", n)
}

func TestGroup_RestartedReplicaCatchesUpFromItsOwnData(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, _ := tg.leader()
	f := (li + 1) % 3
	for i := range 50 {
		_, err := tg.put(fmt.Sprintf("a%d", i), "1")
		require.NoError(t, err)
	}
	tg.waitValue(f, "a49", "1")
	applied := tg.reps[f].Store().AppliedIndex()
	tg.stop(f)
	for i := range 50 {
		_, err := tg.put(fmt.Sprintf("b%d", i), "2")
		require.NoError(t, err)
	}
	tg.start(f, nil)
	require.GreaterOrEqual(t, tg.reps[f].Store().AppliedIndex(), applied, "state survives the restart")
	tg.waitValue(f, "b49", "2")
	items, _, err := tg.reps[f].Store().Scan(kvd.ScanOptions{})
	require.NoError(t, err)
	require.Len(t, items, 100)
}

// A follower that was down while the leader truncated its log catches up
// through a snapshot. raft-wal still reads entries of a truncated head
// from a segment it has not dropped (raft then sends them rather than a
// snapshot), so there the values are large enough to fill segments.
func TestGroup_LaggingReplicaCatchesUpThroughSnapshot(t *testing.T) {
	for _, kind := range []string{LogStoreBolt, LogStoreWAL} {
		t.Run(kind, func(t *testing.T) { testLaggingReplicaCatchesUp(t, kind) })
	}
}

func testLaggingReplicaCatchesUp(t *testing.T, kind string) {
	tg := newTestGroup(t, 3, func(c *Config) {
		c.LogStore = kind
		c.WALSegmentBytes = 64 << 10
		c.SnapshotThreshold = 16
		c.TrailingLogs = 4
		c.SnapshotInterval = 50 * time.Millisecond
	})
	li, lg := tg.leader()
	f := (li + 1) % 3
	tg.stop(f)
	pad := strings.Repeat("p", 2<<10)
	for i := range 200 {
		_, err := tg.put(fmt.Sprintf("s%03d", i), fmt.Sprintf("%d%s", i, pad))
		require.NoError(t, err)
	}
	require.NoError(t, lg.Snapshot())
	// The log the follower needs is gone: it can only catch up through a
	// snapshot.
	first, err := lg.logs.FirstIndex()
	require.NoError(t, err)
	require.Greater(t, first, uint64(10))

	tg.start(f, nil)
	tg.waitValue(f, "s199", "199"+pad)
	items, _, err := tg.reps[f].Store().Scan(kvd.ScanOptions{})
	require.NoError(t, err)
	require.Len(t, items, 200)
	require.Positive(t, tg.reps[f].Stats().SnapshotsInstalled, "the follower installed a snapshot")

	// And it keeps following afterwards.
	_, err = tg.put("after", "x")
	require.NoError(t, err)
	tg.waitValue(f, "after", "x")
}

func TestGroup_ReadBarrier(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, lg := tg.leader()
	f := tg.reps[(li+1)%3]
	ctx := context.Background()

	require.NoError(t, lg.ReadBarrier(ctx, kvd.Linearizable))
	err := f.ReadBarrier(ctx, kvd.Linearizable)
	require.ErrorIs(t, err, kvd.ErrNotLeader)
	require.Equal(t, nodeID(li), kvd.LeaderHint(err))

	// A follower read sees a write acknowledged before it started.
	for i := range 20 {
		key := fmt.Sprintf("r%d", i)
		_, err := tg.put(key, "v")
		require.NoError(t, err)
		require.NoError(t, f.ReadBarrier(ctx, kvd.Follower))
		it, err := f.Store().Get(key)
		require.NoError(t, err, "follower read missed an acknowledged write")
		require.Equal(t, "v", string(it.Value))
	}
	require.NoError(t, f.ReadBarrier(ctx, kvd.Stale))
}

func TestGroup_ReadBarrier_SharedRounds(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	_, lg := tg.leader()
	var rounds atomic.Int64
	inner := lg.leaderReads.round
	lg.leaderReads.round = func(ctx context.Context) (uint64, error) {
		rounds.Add(1)
		return inner(ctx)
	}
	const n = 200
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, lg.ReadBarrier(context.Background(), kvd.Linearizable))
		}()
	}
	wg.Wait()
	require.Less(t, rounds.Load(), int64(n), "concurrent reads should share rounds")
	t.Logf("%d reads used %d rounds", n, rounds.Load())
}

func TestGroup_NotLeaderIsDefinite(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, _ := tg.leader()
	f := tg.reps[(li+1)%3]
	_, err := f.Propose(context.Background(), store.Cmd{Kind: store.CmdPut, Key: "x", Value: []byte("1")})
	require.ErrorIs(t, err, kvd.ErrNotLeader)
	require.ErrorIs(t, err, kvd.ErrUnavailable)
	require.False(t, errors.Is(err, kvd.ErrUnknownOutcome))
}

func TestGroup_SingleNodeRestartKeepsData(t *testing.T) {
	tg := newTestGroup(t, 1, nil)
	v, err := tg.put("k", "v")
	require.NoError(t, err)
	tg.restart(0)
	_, g := tg.leader()
	require.NoError(t, g.ReadBarrier(context.Background(), kvd.Linearizable))
	it, err := g.Store().Get("k")
	require.NoError(t, err)
	require.Equal(t, v, it.Version)
}

func TestGroup_SeedsClusterMap(t *testing.T) {
	m := kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: "a", Raft: "b"}}, Groups: 1, Replicas: 1}.Map()
	tg := newTestGroup(t, 1, func(c *Config) { c.SeedMap = m })
	_, g := tg.leader()
	require.Eventually(t, func() bool { return g.Store().Map() != nil }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, m.Epoch, g.Store().Map().Epoch)
}

func TestGroup_StateBehindSnapshotIsRestoredAtStart(t *testing.T) {
	tg := newTestGroup(t, 1, nil)
	for i := range 30 {
		_, err := tg.put(fmt.Sprintf("k%02d", i), "v")
		require.NoError(t, err)
	}
	require.NoError(t, tg.reps[0].Snapshot())
	_, err := tg.put("after-snapshot", "v")
	require.NoError(t, err)
	tg.stop(0)

	// Lose the state file: the store is now behind the snapshot. raft
	// starts applying after the snapshot's index, so without a restore the
	// 30 keys would be silently gone.
	require.NoError(t, os.Remove(filepath.Join(tg.dirs[0], "state.db")))
	tg.start(0, nil)
	_, g := tg.leader()
	require.NoError(t, g.ReadBarrier(context.Background(), kvd.Linearizable))
	items, _, err := g.Store().Scan(kvd.ScanOptions{})
	require.NoError(t, err)
	require.Len(t, items, 31, "snapshot restored and the log after it replayed")
}

func TestGroup_LeadershipTransferUnderLoad_OutcomesAreKnown(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	_, _ = tg.leader()
	reps := append([]*Group(nil), tg.reps...)
	var acked, failed sync.Map
	var unknown, definite atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				var g *Group
				for _, r := range reps {
					if r.IsLeader() {
						g = r
					}
				}
				if g == nil {
					time.Sleep(2 * time.Millisecond)
					continue
				}
				key := fmt.Sprintf("w%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: key, Value: []byte("v")})
				cancel()
				switch {
				case err == nil:
					acked.Store(key, r.Version)
				case errors.Is(err, kvd.ErrUnknownOutcome):
					unknown.Add(1)
				default:
					definite.Add(1)
					failed.Store(key, err)
				}
			}
		}()
	}
	for range 5 {
		time.Sleep(150 * time.Millisecond)
		_, g := tg.leader()
		require.NoError(t, g.TransferLeadership())
	}
	time.Sleep(150 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	t.Logf("definite failures %d, unknown outcomes %d", definite.Load(), unknown.Load())
	require.Zero(t, unknown.Load(), "a replica that loses leadership learns the fate of its in-flight entries")

	_, g := tg.leader()
	require.NoError(t, g.ReadBarrier(context.Background(), kvd.Linearizable))
	n := 0
	acked.Range(func(k, v any) bool {
		n++
		it, err := g.Store().Get(k.(string))
		require.NoError(t, err, "acknowledged %s lost", k)
		require.Equal(t, v.(uint64), it.Version)
		return true
	})
	failed.Range(func(k, v any) bool {
		_, err := g.Store().Get(k.(string))
		require.ErrorIs(t, err, kvd.ErrNotFound, "%s failed definitely (%v) but was applied", k, v)
		return true
	})
	require.Positive(t, n)
	// Every byte counted in flight was given back, orphans included: a
	// later term's proposals are not held up by entries of an earlier one.
	for i, r := range reps {
		require.Eventually(t, func() bool { st := r.Stats(); return st.InflightBytes == 0 && st.QueuedBytes == 0 },
			5*time.Second, 10*time.Millisecond, "replica %d still counts bytes in flight: %+v", i, r.Stats())
	}
}
