// Package testcluster starts kvd nodes in the test's own process, over
// real TCP on 127.0.0.1 with real bbolt files in t.TempDir(), and stops
// them when the test ends.
package testcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/node"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/server"
)

// Cluster is a set of in-process nodes.
type Cluster struct {
	t      testing.TB
	ic     kvd.InitialCluster
	secret []byte
	dirs   []string
	tune   func(*server.Config)
	mu     sync.Mutex // protects nodes
	nodes  []*server.Server
}

// Option adjusts each node's configuration before it starts.
type Option func(*server.Config)

// New starts nodes nodes hosting groups groups of min(3, nodes) replicas
// and waits until every group has a leader.
func New(t testing.TB, nodes, groups int, opts ...Option) *Cluster {
	t.Helper()
	c := &Cluster{t: t, dirs: make([]string, nodes), nodes: make([]*server.Server, nodes), secret: []byte(fmt.Sprintf("test-cluster-secret-%d-%p", time.Now().UnixNano(), t))}
	c.tune = func(cfg *server.Config) {
		for _, o := range opts {
			o(cfg)
		}
	}
	httpLns := make([]net.Listener, nodes)
	raftLns := make([]net.Listener, nodes)
	c.ic = kvd.InitialCluster{Groups: groups, Replicas: min(3, nodes)}
	for i := range nodes {
		httpLns[i] = listen(t)
		raftLns[i] = listen(t)
		c.dirs[i] = t.TempDir()
		c.ic.Nodes = append(c.ic.Nodes, kvd.Node{ID: NodeID(i), HTTP: httpLns[i].Addr().String(), Raft: raftLns[i].Addr().String()})
	}
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(i, httpLns[i], raftLns[i])
		}()
	}
	wg.Wait()
	t.Cleanup(c.Close)
	for _, err := range errs {
		if err != nil {
			t.Fatalf("start cluster: %v", err)
		}
	}
	c.WaitReady()
	return c
}

// NodeID returns the id of node i.
func NodeID(i int) string { return fmt.Sprintf("n%d", i+1) }

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

// Logger returns a logger for test nodes: silent unless KVD_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("KVD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// FastReplication returns replication settings tuned for quick elections
// on loopback.
func FastReplication() replication.Config {
	rc := replication.DefaultConfig()
	rc.HeartbeatTimeout = 300 * time.Millisecond
	rc.ElectionTimeout = 300 * time.Millisecond
	rc.LeaderLeaseTimeout = 200 * time.Millisecond
	rc.Store.InitialMmapSize = 0
	return rc
}

func (c *Cluster) start(i int, httpLn, raftLn net.Listener) error {
	cfg := server.DefaultConfig()
	cfg.NodeID = NodeID(i)
	cfg.DataDir = c.dirs[i]
	cfg.HTTPListener = httpLn
	cfg.RaftListener = raftLn
	ic := c.ic
	cfg.InitialCluster = &ic
	cfg.PeerSecret = c.secret
	cfg.Replication = FastReplication()
	cfg.RequestTimeout = 5 * time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Logger = Logger().With("node", cfg.NodeID)
	c.tune(&cfg)
	s, err := node.New(cfg)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i] = s
	c.mu.Unlock()
	return nil
}

// Node returns node i, or nil while it is stopped.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// DataDir returns node i's data directory.
func (c *Cluster) DataDir(i int) string { return c.dirs[i] }

// PeerCredential returns what node-to-node calls of this cluster carry
// (see api.HeaderPeerAuth), for tests that act as a node.
func (c *Cluster) PeerCredential() string { return server.PeerCredential(c.secret) }

// Size returns the number of nodes.
func (c *Cluster) Size() int { return len(c.nodes) }

// URL returns the base URL of node i's HTTP API.
func (c *Cluster) URL(i int) string { return "http://" + c.ic.Nodes[i].HTTP }

// URLs returns every node's base URL.
func (c *Cluster) URLs() []string {
	var us []string
	for i := range c.nodes {
		us = append(us, c.URL(i))
	}
	return us
}

// Leader waits until group g has a leader that has committed in its term
// and returns its node index.
func (c *Cluster) Leader(g kvd.GroupID) int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i := range c.nodes {
			n := c.Node(i)
			if n == nil {
				continue
			}
			if grp, ok := n.Group(g); ok && grp.IsLeader() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err := grp.ReadBarrier(ctx, kvd.Linearizable)
				cancel()
				if err == nil {
					return i
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("group %d has no leader", g)
	return -1
}

// WaitReady waits until every running node answers /readyz with 200.
func (c *Cluster) WaitReady() {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for i := range c.nodes {
		if c.Node(i) == nil {
			continue
		}
		for {
			resp, err := http.Get(c.URL(i) + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				// A node serving TLS answers plain HTTP 400: ask it in
				// process instead.
				if resp.StatusCode == http.StatusBadRequest && c.Node(i).WaitReady(time.Until(deadline)) == nil {
					break
				}
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("node %d not ready", i)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for g := 1; g <= c.ic.Groups; g++ {
		c.Leader(kvd.GroupID(g))
	}
}

// Stop stops node i (a clean shutdown).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	n := c.Node(i)
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		c.t.Errorf("stop node %d: %v", i, err)
	}
	c.mu.Lock()
	c.nodes[i] = nil
	c.mu.Unlock()
}

// Restart starts a stopped node again on its old addresses and data.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Stop(i)
	var httpLn, raftLn net.Listener
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		httpLn, err = net.Listen("tcp", c.ic.Nodes[i].HTTP)
		if err == nil {
			raftLn, err = net.Listen("tcp", c.ic.Nodes[i].Raft)
			if err != nil {
				httpLn.Close()
			}
		}
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("restart node %d: %v", i, err)
	}
	if err := c.start(i, httpLn, raftLn); err != nil {
		c.t.Fatalf("restart node %d: %v", i, err)
	}
}

// Close stops every node.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Stop(i)
		}()
	}
	wg.Wait()
}

// KeysInGroups returns, for every group of m, n keys made of prefix and a
// number whose slots that group owns.
func KeysInGroups(m *kvd.Map, prefix string, n int) map[kvd.GroupID][]string {
	out := map[kvd.GroupID][]string{}
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		g, _ := m.GroupOf(kvd.Slot(k))
		if len(out[g]) < n {
			out[g] = append(out[g], k)
		}
		done := true
		for _, grp := range m.Groups {
			done = done && len(out[grp.ID]) == n
		}
		if done {
			return out
		}
	}
}
