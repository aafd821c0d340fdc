package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testkit/damage"
	"github.com/kvd-project/kvd/store"
)

// staleValue reads key from replica r as a stale read would.
func staleValue(r *Group, key string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.ReadBarrier(ctx, kvd.Stale); err != nil {
		return "", err
	}
	it, err := r.Store().Get(key)
	if err != nil {
		return "", err
	}
	return string(it.Value), nil
}

// A log entry damaged on a follower's disk (its payload, whose checksum
// fails) is found when the follower replays it, fetched intact from a peer
// and applied: the wrong value is never served. raft-boltdb's copy is
// rewritten; raft-wal takes only appends, so its damaged copy stays until
// a snapshot truncates it, and a peer asking for it is told so.
func TestGroup_DamagedLogEntryIsRepairedFromAPeer(t *testing.T) {
	for _, kind := range []string{LogStoreBolt, LogStoreWAL} {
		t.Run(kind, func(t *testing.T) { testDamagedLogEntryIsRepaired(t, kind) })
	}
}

func testDamagedLogEntryIsRepaired(t *testing.T, kind string) {
	tg := newTestGroup(t, 3, func(c *Config) { c.LogStore = kind })
	li, _ := tg.leader()
	f := (li + 1) % 3
	const val = "the-value-in-the-log-that-gets-damaged"
	_, err := tg.put("victim", val)
	require.NoError(t, err)
	for i := range 20 {
		_, err := tg.put(fmt.Sprintf("k%d", i), "v")
		require.NoError(t, err)
	}
	tg.waitValue(f, "k19", "v")
	tg.stop(f)
	// Replay everything at the next start (as after a crash with lazy
	// sync), with the entry damaged in the log.
	require.NoError(t, os.Remove(filepath.Join(tg.dirs[f], "state.db")))
	logFile := filepath.Join(tg.dirs[f], boltLogFile)
	if kind == LogStoreWAL {
		segs, err := filepath.Glob(filepath.Join(tg.dirs[f], walLogDir, "*.wal"))
		require.NoError(t, err)
		require.Len(t, segs, 1)
		logFile = segs[0]
	}
	require.Positive(t, damage.Flip(t, logFile, val))
	tg.start(f, nil)
	r := tg.reps[f]
	require.Eventually(t, func() bool {
		v, err := staleValue(r, "victim")
		if err == nil {
			require.Equal(t, val, v, "a damaged entry must never be applied")
		}
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	st := r.Stats()
	require.Positive(t, st.Damaged)
	require.Positive(t, st.Repairs)
	tg.waitValue(f, "k19", "v")

	var found bool
	for idx := uint64(1); idx <= r.Store().AppliedIndex(); idx++ {
		l, err := r.LogEntry(idx)
		if err == nil && bytes.Contains(l.Data, []byte(val)) {
			found = true
		}
	}
	if kind == LogStoreBolt {
		require.True(t, found, "the repaired entry is readable from the local log")
	} else {
		require.False(t, found, "a damaged entry is never handed to a peer")
	}
}

// A value damaged in a follower's state file is never served: the read
// that meets it fails, and the replica rebuilds its state from a peer's
// snapshot.
func TestGroup_DamagedStateIsRepairedFromAPeer(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, _ := tg.leader()
	f := (li + 1) % 3
	const val = "a-value-whose-bytes-rot-on-the-follower-disk"
	_, err := tg.put("victim", val)
	require.NoError(t, err)
	_, err = tg.put("other", "fine")
	require.NoError(t, err)
	tg.waitValue(f, "other", "fine")
	tg.stop(f)
	require.Positive(t, damage.Flip(t, filepath.Join(tg.dirs[f], "state.db"), val))
	tg.start(f, nil)
	r := tg.reps[f]
	require.Eventually(t, func() bool {
		v, err := staleValue(r, "victim")
		if err == nil {
			require.Equal(t, val, v, "a damaged value must never be served")
			return true
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	require.Positive(t, r.Stats().Damaged)
	require.Positive(t, r.Stats().Repairs)
	require.Eventually(t, func() bool { return r.Health().State == "ok" }, 10*time.Second, 20*time.Millisecond)
	_, err = r.Store().Verify()
	require.NoError(t, err, "the repaired state checks out whole")
	require.GreaterOrEqual(t, readFloor(tg.dirs[f]), r.Store().AppliedIndex()-1,
		"the index the repair installed is recorded, for the next start's catch-up")
	_, err = tg.put("after", "x")
	require.NoError(t, err)
	tg.waitValue(f, "after", "x")
}

// A single replica has no peer: it rebuilds a damaged state from its own
// snapshot and log.
func TestGroup_SingleReplicaRebuildsDamagedStateLocally(t *testing.T) {
	tg := newTestGroup(t, 1, nil)
	_, err := tg.put("before", "snap")
	require.NoError(t, err)
	require.NoError(t, tg.reps[0].Snapshot())
	const val = "written-after-the-snapshot-and-damaged-later"
	_, err = tg.put("victim", val)
	require.NoError(t, err)
	tg.stop(0)
	require.Positive(t, damage.Flip(t, filepath.Join(tg.dirs[0], "state.db"), val))
	tg.start(0, nil)
	r := tg.reps[0]
	require.Eventually(t, func() bool {
		v, err := staleValue(r, "victim")
		if err == nil {
			require.Equal(t, val, v)
			return true
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	v, err := staleValue(r, "before")
	require.NoError(t, err)
	require.Equal(t, "snap", v)
	require.Positive(t, r.Stats().Repairs)
}

// The scrub finds damage no read has met: a state changed behind the
// store's back no longer adds up to its hash.
func TestGroup_IntegrityCheck_ScrubFindsDamageAndRepairs(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, _ := tg.leader()
	f := (li + 1) % 3
	const val = "quietly-damaged-value-nobody-reads"
	_, err := tg.put("quiet", val)
	require.NoError(t, err)
	_, err = tg.put("last", "x")
	require.NoError(t, err)
	tg.waitValue(f, "last", "x")
	tg.stop(f)
	require.Positive(t, damage.Flip(t, filepath.Join(tg.dirs[f], "state.db"), val))
	tg.start(f, nil)
	r := tg.reps[f]
	require.Eventually(t, func() bool { return r.Serving() == nil }, 10*time.Second, 20*time.Millisecond)
	c := r.CheckIntegrity(context.Background())
	require.False(t, c.OK, "the scrub finds the damage")
	require.Contains(t, c.Alarm, "scrub")
	require.Eventually(t, func() bool {
		v, err := staleValue(r, "quiet")
		return err == nil && v == val
	}, 20*time.Second, 20*time.Millisecond)
	require.True(t, r.CheckIntegrity(context.Background()).OK)
}

// divergentRemote answers one node's state hash wrongly: that replica has
// diverged.
type divergentRemote struct {
	*testGroup
	odd string
}

func (d divergentRemote) HashAt(ctx context.Context, node string, g kvd.GroupID, index uint64) (uint64, error) {
	h, err := d.testGroup.HashAt(ctx, node, g, index)
	if node == d.odd {
		h ^= 0xdead
	}
	return h, err
}

func TestGroup_IntegrityCheck_LeaderComparesStateHashes(t *testing.T) {
	tg := newTestGroup(t, 3, nil)
	li, lg := tg.leader()
	for i := range 10 {
		_, err := tg.put(fmt.Sprintf("k%d", i), "v")
		require.NoError(t, err)
	}
	c := lg.CheckIntegrity(context.Background())
	require.True(t, c.OK, "%+v", c)
	require.Len(t, c.Hashes, 3, "every replica answered")
	require.Positive(t, c.Index)
	seen := map[string]bool{}
	for _, h := range c.Hashes {
		seen[h] = true
	}
	require.Len(t, seen, 1, "equal states, equal hashes")

	odd := nodeID((li + 2) % 3)
	lg.cfg.Remote = divergentRemote{tg, odd}
	c = lg.CheckIntegrity(context.Background())
	require.False(t, c.OK)
	require.Contains(t, c.Alarm, odd, "the alarm names the replica that differs")
	require.Equal(t, "ok", lg.Health().State, "an alarm does not stop the leader")
	require.False(t, lg.Health().Integrity.OK)
	require.Positive(t, lg.Stats().ChecksFailed)
}

// After a restart a replica serves no stale read older than what it had
// applied before it stopped, even when its state is rebuilt from an old
// snapshot and the log.
func TestGroup_RestartedReplicaServesNothingOlder(t *testing.T) {
	tg := newTestGroup(t, 3, func(c *Config) {
		c.SnapshotThreshold = 8
		c.TrailingLogs = 1000
		c.SnapshotInterval = 20 * time.Millisecond
	})
	li, _ := tg.leader()
	f := (li + 1) % 3
	for i := range 30 {
		_, err := tg.put("k", fmt.Sprint(i))
		require.NoError(t, err)
	}
	require.NoError(t, tg.reps[f].Snapshot())
	var last uint64
	for i := 30; i < 300; i++ {
		last, _ = tg.put("k", fmt.Sprint(i))
	}
	tg.waitValue(f, "k", "299")
	tg.stop(f)
	// As after a crash with lazy state sync: the state is discarded and
	// rebuilt from the (older) snapshot and the log.
	require.NoError(t, os.WriteFile(filepath.Join(tg.dirs[f], "state.db.dirty"), nil, 0o600))
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the leader keeps writing meanwhile
		defer wg.Done()
		for i := 300; !stop.Load(); i++ {
			if _, g := tg.currentLeader(); g != nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: "k", Value: []byte(fmt.Sprint(i))})
				cancel()
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	tg.start(f, nil)
	r := tg.reps[f]
	served := 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := r.ReadBarrier(ctx, kvd.Stale)
		cancel()
		if err != nil {
			// Not sent to the leader either: what it serves now, this
			// replica may not have yet when it serves the next read.
			var nl *kvd.NotLeaderError
			require.False(t, errors.As(err, &nl), "%v", err)
			require.ErrorIs(t, err, kvd.ErrUnavailable)
			continue
		}
		it, err := r.Store().Get("k")
		require.NoError(t, err, "a restarted replica answered 404 for a key it held")
		require.GreaterOrEqual(t, it.Version, last, "a restarted replica went back in time")
		served++
	}
	require.Positive(t, served, "it serves once caught up")
}

func TestGroup_ProposalsAreShedWhenTheQueueIsFull(t *testing.T) {
	tg := newTestGroup(t, 3, func(c *Config) {
		c.MaxQueueBytes = 256 << 10
		c.MaxInflightBytes = 256 << 10
	})
	_, lg := tg.leader()
	val := bytes.Repeat([]byte("v"), 64<<10)
	var ok, shed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := lg.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: fmt.Sprintf("big%d", i), Value: val})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, kvd.ErrOverloaded):
				require.ErrorIs(t, err, kvd.ErrUnavailable, "overloaded is a definite failure")
				shed.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	require.Positive(t, ok.Load())
	require.Positive(t, shed.Load(), "past the queue's bytes, proposals are refused")
	t.Logf("%d applied, %d shed in %v", ok.Load(), shed.Load(), time.Since(start))
	st := lg.Stats()
	require.Zero(t, st.QueuedBytes)
	require.Zero(t, st.InflightBytes)
}

func TestGroup_LogCacheIsBoundedByBytes(t *testing.T) {
	tg := newTestGroup(t, 1, func(c *Config) { c.LogCacheBytes = 1 << 20 })
	val := strings.Repeat("x", 200<<10)
	for i := range 30 {
		_, err := tg.put(fmt.Sprintf("k%d", i), val)
		require.NoError(t, err)
	}
	got := tg.reps[0].Stats().LogCacheBytes
	require.Positive(t, got)
	require.LessOrEqual(t, got, int64(1<<20+300<<10), "the cache keeps at most its bytes (and one entry)")
}

func TestGroup_RequireStateRefusesAReplicaWithoutRaftState(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	mux, err := NewMux(ln, "", testClusterID, testKey, quietLogger())
	require.NoError(t, err)
	defer mux.Close()
	layer, err := mux.Layer(1)
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Group, cfg.NodeID, cfg.Dir, cfg.Layer = 1, "n1", t.TempDir(), layer
	cfg.Logger = quietLogger()
	cfg.RequireState = true
	_, err = Open(cfg)
	require.ErrorIs(t, err, ErrNoState)
	entries, err := os.ReadDir(cfg.Dir)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing is created for a replica that is refused")
}

func TestMux_RefusesAPeerWithoutTheSecret(t *testing.T) {
	newMux := func(key []byte) (*Mux, raft.StreamLayer) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		m, err := NewMux(ln, "", testClusterID, key, quietLogger())
		require.NoError(t, err)
		t.Cleanup(func() { m.Close() })
		l, err := m.Layer(1)
		require.NoError(t, err)
		return m, l
	}
	a, _ := newMux(testKey)
	_, stranger := newMux([]byte("someone else's key, same length."))
	_, err := stranger.Dial(raft.ServerAddress(a.Addr().String()), 2*time.Second)
	require.ErrorContains(t, err, "secret", "a node without the secret cannot connect")
	require.Zero(t, a.Stats().Inbound)

	// Knowing the cluster id (public) is not enough, and the old
	// handshake, which carried only the id, is refused.
	conn, err := net.Dial("tcp", a.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write(append([]byte("KVDMUX2\n"), testClusterID...))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	b := make([]byte, 1)
	_, err = conn.Read(b)
	require.Error(t, err, "the connection is closed without an answer")
	require.Eventually(t, func() bool { return a.Refused() >= 2 }, 5*time.Second, 10*time.Millisecond)
	require.Zero(t, a.Stats().Inbound)
}

// Strangers that open connections and never finish the handshake hold
// at most maxHandshakes of them: past it a connection is closed at once,
// and members still connect.
func TestMux_StrangersHoldFewConnections(t *testing.T) {
	newMux := func() (*Mux, raft.StreamLayer) {
		m, err := NewMux(mustListen(t), "", testClusterID, testKey, quietLogger())
		require.NoError(t, err)
		t.Cleanup(func() { m.Close() })
		l, err := m.Layer(1)
		require.NoError(t, err)
		return m, l
	}
	a, _ := newMux()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range maxHandshakes {
		c, err := net.Dial("tcp", a.Addr().String())
		require.NoError(t, err)
		held = append(held, c)
	}
	require.Eventually(t, func() bool { return a.handshaking.Load() == maxHandshakes }, 5*time.Second, 10*time.Millisecond)
	c, err := net.Dial("tcp", a.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(headerTimeout/2)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "closed at once, well before the handshake's deadline")
	for _, c := range held {
		c.Close()
	}
	held = nil
	require.Eventually(t, func() bool { return a.handshaking.Load() == 0 }, 5*time.Second, 10*time.Millisecond)
	_, member := newMux()
	conn, err := member.Dial(raft.ServerAddress(a.Addr().String()), 2*time.Second)
	require.NoError(t, err, "a member connects once the strangers are gone")
	conn.Close()
}

// A raft log entry that cannot be decoded (damaged framing: its term is
// unknown) keeps the replica from starting, rather than being replayed
// with a made-up term or crashing raft.
func TestGroup_UndecodableLogEntryKeepsTheReplicaFromStarting(t *testing.T) {
	tg := newTestGroup(t, 1, func(c *Config) { c.LogStore = LogStoreBolt })
	for i := range 5 {
		_, err := tg.put(fmt.Sprintf("k%d", i), "v")
		require.NoError(t, err)
	}
	last := tg.reps[0].Status().LastIndex
	tg.stop(0)
	bdb, err := bolt.Open(filepath.Join(tg.dirs[0], "raft.db"), 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, bdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("logs")).Put(binary.BigEndian.AppendUint64(nil, last), []byte{0xc1, 0xc1, 0xc1})
	}))
	require.NoError(t, bdb.Close())
	mux, err := NewMux(mustListen(t), "", testClusterID, testKey, quietLogger())
	require.NoError(t, err)
	defer mux.Close()
	layer, err := mux.Layer(1)
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Group, cfg.NodeID, cfg.Dir, cfg.Layer, cfg.Logger = 1, nodeID(0), tg.dirs[0], layer, quietLogger()
	cfg.LogStore = LogStoreWAL // the replica keeps its raft.db
	_, err = Open(cfg)
	require.ErrorIs(t, err, ErrNoState)
	require.ErrorContains(t, err, fmt.Sprintf("entry %d", last))
}

// A state rebuilt locally applies the log with the same checks as the
// live state: a command for another group's key, refused when it was
// first applied, is refused again.
func TestGroup_LocalRebuildAppliesTheSameChecks(t *testing.T) {
	m := kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: "h", Raft: "r"}}, Groups: 2, Replicas: 1}.Map()
	tg := newTestGroup(t, 1, func(c *Config) { c.SeedMap = m })
	r := tg.reps[0]
	require.Eventually(t, func() bool { return r.Store().Map() != nil }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, r.Snapshot())
	var mine, theirs string
	for i := 0; mine == "" || theirs == ""; i++ {
		if k := fmt.Sprintf("t%d", i); kvd.Slot(k) >= 512 {
			theirs = k
		} else {
			mine = k
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := r.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: theirs, Value: []byte("x")})
	require.NoError(t, err)
	require.ErrorIs(t, res.Err, kvd.ErrWrongGroup)
	const val = "a-value-damaged-to-force-a-local-rebuild"
	_, err = tg.put(mine, val)
	require.NoError(t, err)
	hash := r.Store().StateHash()
	tg.stop(0)
	require.Positive(t, damage.Flip(t, filepath.Join(tg.dirs[0], "state.db"), val))
	tg.start(0, nil)
	r = tg.reps[0]
	require.Eventually(t, func() bool {
		v, err := staleValue(r, mine)
		return err == nil && v == val
	}, 20*time.Second, 20*time.Millisecond)
	require.Positive(t, r.Stats().Repairs)
	require.Equal(t, hash, r.Store().StateHash(), "the rebuilt state is the state")
	_, err = r.Store().Get(theirs)
	require.ErrorIs(t, err, kvd.ErrNotFound, "the rebuild applied a command the live state had refused")
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}
