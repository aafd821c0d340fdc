package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/faultproxy"
	"github.com/kvd-project/kvd/internal/kvdproc"
)

// link is the pair of proxies carrying one direction of a node-to-node
// link: from node `from` to node `to`.
type link struct {
	from, to int
	raft     *faultproxy.Proxy
	http     *faultproxy.Proxy
}

// Cluster is a kvd cluster of real processes with a proxy on every
// directed link.
type Cluster struct {
	*kvdproc.Cluster
	links map[[2]int]*link
	hc    *http.Client

	// mu protects cut.
	mu  sync.Mutex
	cut map[[2]int]bool
}

// StartCluster builds nothing: it starts n kvd processes from bin with
// groups groups of min(3, n) replicas, under dir, and waits until every
// node is ready.
func StartCluster(ctx context.Context, bin, dir string, n, groups int, extraArgs []string) (*Cluster, error) {
	// Every address at once, while all are held, so no proxy can take a
	// node's port between the two.
	addrs, err := kvdproc.FreeAddrs(2*n + 2*n*(n-1))
	if err != nil {
		return nil, err
	}
	kc, err := kvdproc.NewClusterAt(bin, dir, addrs[:2*n], groups, min(3, n))
	if err != nil {
		return nil, err
	}
	proxyAddrs := addrs[2*n:]
	c := &Cluster{Cluster: kc, links: map[[2]int]*link{}, cut: map[[2]int]bool{},
		hc: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	for i := range n {
		peers := map[string]map[string]string{}
		for j := range n {
			if i == j {
				continue
			}
			rp, err := faultproxy.New(proxyAddrs[0], kc.Nodes[j].Raft)
			if err != nil {
				c.Stop()
				return nil, err
			}
			hp, err := faultproxy.New(proxyAddrs[1], kc.Nodes[j].HTTP)
			proxyAddrs = proxyAddrs[2:]
			if err != nil {
				rp.Close()
				c.Stop()
				return nil, err
			}
			c.links[[2]int{i, j}] = &link{from: i, to: j, raft: rp, http: hp}
			peers[kc.Nodes[j].ID] = map[string]string{"raft": rp.Addr(), "http": hp.Addr()}
		}
		b, _ := json.Marshal(peers)
		path := filepath.Join(dir, kc.Nodes[i].ID+"-peers.json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			c.Stop()
			return nil, fmt.Errorf("write peer addresses: %w", err)
		}
		kc.NodeArgs[kc.Nodes[i].ID] = []string{"--peer-addrs", path}
	}
	kc.Args = append([]string{"--election-timeout", "1s", "--heartbeat-timeout", "1s", "--request-timeout", "2s",
		"--snapshot-threshold", "2048", "--trailing-logs", "1024"}, extraArgs...)
	if err := kc.StartAll(); err != nil {
		c.Stop()
		return nil, err
	}
	if err := kc.WaitAllReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Stop kills every node and closes every proxy.
func (c *Cluster) Stop() {
	c.KillAll()
	for _, l := range c.links {
		l.raft.Close()
		l.http.Close()
	}
}

// Size returns the number of nodes.
func (c *Cluster) Size() int { return len(c.Nodes) }

// Partition cuts every link between the two sides, both ways, and heals
// every other link. A node in neither side keeps all its links.
func (c *Cluster) Partition(a, b []int) {
	cut := map[[2]int]bool{}
	for _, i := range a {
		for _, j := range b {
			cut[[2]int{i, j}] = true
			cut[[2]int{j, i}] = true
		}
	}
	c.setCut(cut)
}

// CutLinks cuts exactly the given directed links and heals the others.
func (c *Cluster) CutLinks(links [][2]int) {
	cut := map[[2]int]bool{}
	for _, l := range links {
		cut[l] = true
	}
	c.setCut(cut)
}

// CutHTTP cuts the node-to-node HTTP of the given directed links only,
// leaving Raft traffic flowing (used to prove HTTP goes through the
// proxies too).
func (c *Cluster) CutHTTP(links [][2]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cut := map[[2]int]bool{}
	for _, l := range links {
		cut[l] = true
	}
	for k, l := range c.links {
		l.raft.SetMode(faultproxy.Pass)
		if cut[k] {
			l.http.SetMode(faultproxy.Refuse)
		} else {
			l.http.SetMode(faultproxy.Pass)
		}
	}
}

// AllLinks returns every directed link.
func (c *Cluster) AllLinks() [][2]int {
	var out [][2]int
	for k := range c.links {
		out = append(out, k)
	}
	return out
}

// Heal restores every link.
func (c *Cluster) Heal() { c.setCut(map[[2]int]bool{}) }

func (c *Cluster) setCut(cut map[[2]int]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.links {
		mode := faultproxy.Pass
		if cut[k] {
			mode = faultproxy.Refuse
		}
		l.raft.SetMode(mode)
		l.http.SetMode(mode)
	}
	c.cut = cut
}

// Leader returns the node index of group g's leader as node i reports it,
// or -1.
func (c *Cluster) LeaderAsSeenBy(i int, g uint64) int {
	cl, err := c.ClusterMap(i)
	if err != nil {
		return -1
	}
	for _, grp := range cl.Groups {
		if grp.ID == g {
			for j, n := range c.Nodes {
				if n.ID == grp.Leader {
					return j
				}
			}
		}
	}
	return -1
}

// Groups returns the number of groups.
func (c *Cluster) Groups() int { return c.Spec.Groups }

// Status asks node i for its status.
func (c *Cluster) Status(i int) (api.Status, error) {
	var st api.Status
	resp, err := c.hc.Get(c.Nodes[i].URL() + "/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// WaitHealthy waits until every node runs, is ready, and every group has
// a leader that every node agrees on.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for {
		err := c.healthy()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster did not recover: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) healthy() error {
	for i, n := range c.Nodes {
		if !n.Running() {
			return fmt.Errorf("node %s is not running", n.ID)
		}
		resp, err := c.hc.Get(n.URL() + "/readyz")
		if err != nil {
			return fmt.Errorf("node %s: %v", n.ID, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("node %s not ready", n.ID)
		}
		_ = i
	}
	for g := 1; g <= c.Spec.Groups; g++ {
		want := c.LeaderAsSeenBy(0, uint64(g))
		if want < 0 {
			return fmt.Errorf("group %d has no leader", g)
		}
		for i := range c.Nodes {
			if got := c.LeaderAsSeenBy(i, uint64(g)); got != want {
				return fmt.Errorf("nodes disagree on group %d's leader", g)
			}
		}
	}
	return nil
}

// ProxyTraffic reports whether any proxy has carried a connection, so a
// run can prove the nodes dial through them.
func (c *Cluster) ProxyTraffic() (raftConns, httpConns int64) {
	for _, l := range c.links {
		raftConns += l.raft.Accepted()
		httpConns += l.http.Accepted()
	}
	return raftConns, httpConns
}

// BuildKVD builds the kvd binary the suite runs into dir: a normal build
// with the failpoints compiled in, so that nemeses can crash a node at a
// chosen step (see internal/failpoint).
func BuildKVD(dir string) (string, error) {
	return kvdproc.BuildWith(dir, "kvd", "failpoints", "")
}
