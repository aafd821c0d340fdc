package replication

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// testGroup runs n replicas of group 1 in this process over real TCP on
// 127.0.0.1. Peers are dialed through an address book that follows
// restarts, so a restarted replica may listen on a new port.
type testGroup struct {
	t     *testing.T
	n     int
	dirs  []string
	muxes []*Mux
	reps  []*Group
	tune  func(*Config)

	// mu protects addrs.
	mu    sync.Mutex
	addrs map[string]string
}

func (tg *testGroup) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	a, ok := tg.addrs[string(id)]
	if !ok {
		return "", fmt.Errorf("unknown peer %s", id)
	}
	return raft.ServerAddress(a), nil
}

func nodeID(i int) string { return fmt.Sprintf("n%d", i+1) }

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTestGroup(t *testing.T, n int, tune func(*Config)) *testGroup {
	t.Helper()
	tg := &testGroup{t: t, n: n, dirs: make([]string, n), muxes: make([]*Mux, n), reps: make([]*Group, n), tune: tune, addrs: map[string]string{}}
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lns[i] = ln
		tg.addrs[nodeID(i)] = ln.Addr().String()
		tg.dirs[i] = t.TempDir()
	}
	for i := range n {
		tg.start(i, lns[i])
	}
	t.Cleanup(func() {
		for i := range n {
			tg.stop(i)
		}
	})
	return tg
}

func (tg *testGroup) start(i int, ln net.Listener) {
	t := tg.t
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		tg.mu.Lock()
		tg.addrs[nodeID(i)] = ln.Addr().String()
		tg.mu.Unlock()
	}
	mux, err := NewMux(ln, "", testClusterID, testKey, quietLogger())
	require.NoError(t, err)
	layer, err := mux.Layer(1)
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Group = 1
	cfg.NodeID = nodeID(i)
	cfg.Dir = tg.dirs[i]
	cfg.Layer = layer
	cfg.AddressProvider = tg
	cfg.Bootstrap = true
	tg.mu.Lock()
	for j := range tg.n {
		cfg.Peers = append(cfg.Peers, Peer{ID: nodeID(j), Addr: tg.addrs[nodeID(j)]})
	}
	tg.mu.Unlock()
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	cfg.ElectionTimeout = 300 * time.Millisecond
	cfg.LeaderLeaseTimeout = 200 * time.Millisecond
	cfg.Logger = quietLogger()
	cfg.Store.InitialMmapSize = 0
	cfg.Remote = tg
	if tg.tune != nil {
		tg.tune(&cfg)
	}
	g, err := Open(cfg)
	require.NoError(t, err)
	tg.mu.Lock()
	tg.muxes[i] = mux
	tg.reps[i] = g
	tg.mu.Unlock()
}

func (tg *testGroup) stop(i int) {
	if tg.reps[i] == nil {
		return
	}
	tg.mu.Lock()
	r, m := tg.reps[i], tg.muxes[i]
	tg.reps[i], tg.muxes[i] = nil, nil
	tg.mu.Unlock()
	require.NoError(tg.t, r.Close())
	require.NoError(tg.t, m.Close())
}

func (tg *testGroup) restart(i int) {
	tg.stop(i)
	tg.start(i, nil)
}

// leader waits for a replica that leads and has committed in its term.
func (tg *testGroup) leader() (int, *Group) {
	tg.t.Helper()
	var li int
	var lg *Group
	require.Eventually(tg.t, func() bool {
		li, lg = tg.currentLeader()
		return lg != nil
	}, 10*time.Second, 10*time.Millisecond, "no leader")
	return li, lg
}

// currentLeader returns the replica that leads and has committed in its
// term, if any; it is safe to call from any goroutine.
func (tg *testGroup) currentLeader() (int, *Group) {
	tg.mu.Lock()
	reps := append([]*Group(nil), tg.reps...)
	tg.mu.Unlock()
	for i, g := range reps {
		if g != nil && g.IsLeader() && g.db.AppliedTerm() == g.raft.CurrentTerm() {
			return i, g
		}
	}
	return -1, nil
}

func (tg *testGroup) put(key, val string) (uint64, error) {
	_, g := tg.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: key, Value: []byte(val)})
	if err != nil {
		return 0, err
	}
	return r.Version, r.Err
}

// waitValue waits until replica i holds key=val locally.
func (tg *testGroup) waitValue(i int, key, val string) {
	tg.t.Helper()
	require.Eventually(tg.t, func() bool {
		it, err := tg.reps[i].Store().Get(key)
		return err == nil && string(it.Value) == val
	}, 10*time.Second, 10*time.Millisecond, "replica %d never saw %s=%s", i, key, val)
}

const testClusterID = "0123456789abcdef0123456789abcdef"

var testKey = []byte("a test key of the cluster, 32 by")

// replica returns the running replica on node id.
func (tg *testGroup) replica(id string) (*Group, error) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for j, r := range tg.reps {
		if nodeID(j) == id && r != nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("node %s is down: %w", id, kvd.ErrUnavailable)
}

// testGroup reaches the other replicas directly, as a node's API would.
var _ Remote = (*testGroup)(nil)

func (tg *testGroup) ReadIndex(ctx context.Context, leader string, g kvd.GroupID) (uint64, error) {
	r, err := tg.replica(leader)
	if err != nil {
		return 0, err
	}
	return r.ReadIndex(ctx)
}

func (tg *testGroup) FetchLog(ctx context.Context, node string, g kvd.GroupID, index uint64) (*raft.Log, error) {
	r, err := tg.replica(node)
	if err != nil {
		return nil, err
	}
	return r.LogEntry(index)
}

func (tg *testGroup) FetchSnapshot(ctx context.Context, node string, g kvd.GroupID, minIndex uint64) (io.ReadCloser, error) {
	r, err := tg.replica(node)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(r.WriteSnapshot(ctx, minIndex, pw)) }()
	return pr, nil
}

func (tg *testGroup) HashAt(ctx context.Context, node string, g kvd.GroupID, index uint64) (uint64, error) {
	r, err := tg.replica(node)
	if err != nil {
		return 0, err
	}
	return r.HashAt(ctx, index)
}

// Nodes of different clusters (a node left over from an earlier cluster
// on the same addresses) refuse each other's Raft connections; nodes of
// one cluster connect.
func TestMux_RefusesNodesOfAnotherCluster(t *testing.T) {
	newMux := func(cluster string) (*Mux, raft.StreamLayer) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		m, err := NewMux(ln, "", cluster, testKey, quietLogger())
		require.NoError(t, err)
		t.Cleanup(func() { m.Close() })
		l, err := m.Layer(1)
		require.NoError(t, err)
		return m, l
	}
	a, aLayer := newMux(testClusterID)
	_, other := newMux("ffffffffffffffffffffffffffffffff")
	_, err := other.Dial(raft.ServerAddress(a.Addr().String()), 2*time.Second)
	require.ErrorContains(t, err, "another cluster")
	require.Zero(t, a.Stats().Inbound, "no session from the other cluster")

	_, same := newMux(testClusterID)
	c, err := same.Dial(raft.ServerAddress(a.Addr().String()), 2*time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	accepted := make(chan net.Conn, 1)
	go func() {
		if s, err := aLayer.Accept(); err == nil {
			accepted <- s
		}
	}()
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a node of the same cluster could not open a stream")
	}
	require.Equal(t, 1, a.Stats().Inbound)

	_, err = NewMux(nil, "", "short", testKey, quietLogger())
	require.Error(t, err, "a malformed cluster id is refused")
}

// A pooled stream to a peer that restarted (its session died with the old
// process) carries the next RPC over a new stream, instead of failing it.
func TestMux_PooledStreamToARestartedPeerRedials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	// echo serves a peer at addr: each stream answers what it reads.
	echo := func(ln net.Listener) *Mux {
		m, err := NewMux(ln, "", testClusterID, testKey, quietLogger())
		require.NoError(t, err)
		l, err := m.Layer(1)
		require.NoError(t, err)
		go func() {
			for {
				s, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer s.Close()
					buf := make([]byte, 64)
					for {
						n, err := s.Read(buf)
						if err != nil {
							return
						}
						if _, err := s.Write(buf[:n]); err != nil {
							return
						}
					}
				}()
			}
		}()
		return m
	}
	peer := echo(ln)
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	client, err := NewMux(cln, "", testClusterID, testKey, quietLogger())
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	layer, err := client.Layer(1)
	require.NoError(t, err)
	conn, err := layer.Dial(raft.ServerAddress(addr), 2*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	rpc := func(msg string) (string, error) {
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			return "", err
		}
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(conn, buf)
		return string(buf), err
	}
	got, err := rpc("before")
	require.NoError(t, err)
	require.Equal(t, "before", got)

	// The peer's process ends and a new one listens at its address.
	require.NoError(t, peer.Close())
	require.Eventually(t, func() bool { return client.Stats().Outbound == 0 }, 5*time.Second, 10*time.Millisecond, "the client sees the session die")
	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	peer2 := echo(ln2)
	t.Cleanup(func() { peer2.Close() })
	got, err = rpc("after")
	require.NoError(t, err, "the RPC on the pooled stream failed")
	require.Equal(t, "after", got)
	require.Equal(t, uint64(1), client.Stats().Redials)
}
