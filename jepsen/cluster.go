package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/faultproxy"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// link is the pair of proxies carrying one direction of a node-to-node
// link: from node `from` to node `to`.
type link struct {
	from, to int
	raft     *faultproxy.Proxy
	http     *faultproxy.Proxy
}

// The timing the suite's clusters run with. Nemeses size their faults
// from it (a pause longer than an election, or than a transaction's
// deadline).
const (
	// ElectionTimeout is the Raft election timeout the nodes are given.
	ElectionTimeout = time.Second
	// TxnTimeout is how long a cross-group transaction may stay pending
	// before anyone may abort it: kvd's default, which has no flag.
	TxnTimeout = 10 * time.Second
	// JanitorGrace and JanitorPeriod are how long after a deadline a
	// group leader's janitor finishes a transaction left behind, and how
	// often it looks (kvd's fixed values, see txn.NewJanitor and
	// server.runJanitors).
	JanitorGrace  = time.Second
	JanitorPeriod = time.Second
)

// Cluster is a kvd cluster of real processes with a proxy on every
// directed link.
type Cluster struct {
	*kvdproc.Cluster
	links map[[2]int]*link
	hc    *http.Client
	// sec is a secure cluster's credentials; nil for a plain cluster.
	sec *Security
	// Failpoints says whether the nodes' binary has failpoints (see
	// internal/failpoint), found when the cluster started.
	Failpoints bool

	// mu protects cut and the proxies' modes and delays.
	mu  sync.Mutex
	cut map[[2]int]bool
	// nodesMu protects the entries of Nodes, which ReplaceNode changes
	// on the run's goroutine, from the clients, which read them through
	// URL and Size. The run's goroutine reads Nodes without it.
	nodesMu sync.RWMutex
}

// StartCluster builds nothing: it starts n kvd processes from bin with
// groups groups of min(3, n) replicas, under dir, and waits until every
// node is ready. With sec the nodes run on TLS (client certificates
// required, peers on mutual TLS) and auth, and the harness calls them
// with sec's credentials (see Security); nil starts a plain cluster.
func StartCluster(ctx context.Context, bin, dir string, n, groups int, extraArgs []string, sec *Security) (*Cluster, error) {
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
	hosted := map[string]bool{}
	for _, g := range kc.Spec.Map().Groups {
		for _, m := range g.Members {
			hosted[m] = true
		}
	}
	for _, node := range kc.Nodes {
		if !hosted[node.ID] {
			// kvd refuses to start it, and the run could never heal.
			return nil, fmt.Errorf("%d groups of %d replicas leave node %s of %d without a group: use at least %d groups",
				groups, kc.Spec.Replicas, node.ID, n, n-kc.Spec.Replicas+1)
		}
	}
	proxyAddrs := addrs[2*n:]
	c := &Cluster{Cluster: kc, links: map[[2]int]*link{}, cut: map[[2]int]bool{}, sec: sec}
	c.hc = c.secured(&http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}, "")
	if sec != nil {
		kc.UseTLS(sec.tls)
		kc.UseToken(sec.rootToken)
		extraArgs = append(sec.clusterArgs(), extraArgs...)
	}
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
		if sec != nil {
			args, err := sec.nodeArgs(kc.Nodes[i].ID)
			if err != nil {
				c.Stop()
				return nil, err
			}
			kc.NodeArgs[kc.Nodes[i].ID] = append(kc.NodeArgs[kc.Nodes[i].ID], args...)
		}
	}
	kc.Args = append([]string{"--election-timeout", ElectionTimeout.String(), "--heartbeat-timeout", "1s", "--request-timeout", "2s",
		"--snapshot-threshold", "2048", "--trailing-logs", "1024"}, extraArgs...)
	if err := kc.StartAll(); err != nil {
		c.Stop()
		return nil, err
	}
	if err := kc.WaitAllReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	c.Failpoints = c.hasFailpoints()
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
func (c *Cluster) Size() int {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	return len(c.Nodes)
}

// URL returns the base URL of node i; clients may call it while a node is
// replaced.
func (c *Cluster) URL(i int) string {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	return c.Nodes[i].URL()
}

// NodeList returns the nodes as they are now, for a goroutine other than
// the run's (a sampler) to read while a node may be replaced.
func (c *Cluster) NodeList() []*kvdproc.Node {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	return append([]*kvdproc.Node(nil), c.Nodes...)
}

// ReplaceNode puts a fresh node called id at index i, in place of a node
// that is not running (see kvdproc.Cluster.ReplaceNode), and starts it:
// it joins the cluster through the running members. It has no link
// proxies: the members learn its addresses from the map and dial it
// directly (their --peer-addrs were written when they started), and it
// dials them directly too, so its links cannot be cut. On a secure
// cluster it gets a node certificate of its own.
func (c *Cluster) ReplaceNode(i int, id string) (*kvdproc.Node, error) {
	c.nodesMu.Lock()
	defer c.nodesMu.Unlock()
	if c.sec != nil {
		args, err := c.sec.nodeArgs(id)
		if err != nil {
			return nil, err
		}
		c.NodeArgs[id] = args
	}
	return c.Cluster.ReplaceNode(i, id)
}

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
	c.cutOnly(links, func(l *link) (cut, pass *faultproxy.Proxy) { return l.http, l.raft })
}

// CutRaft cuts the Raft traffic of the given directed links only, and
// heals every other link, leaving HTTP flowing everywhere.
func (c *Cluster) CutRaft(links [][2]int) {
	c.cutOnly(links, func(l *link) (cut, pass *faultproxy.Proxy) { return l.raft, l.http })
}

// cutOnly refuses one kind of traffic (the first proxy pick returns) on
// the given links and lets everything else pass.
func (c *Cluster) cutOnly(links [][2]int, pick func(*link) (cut, pass *faultproxy.Proxy)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cut := map[[2]int]bool{}
	for _, l := range links {
		cut[l] = true
	}
	for k, l := range c.links {
		kind, other := pick(l)
		other.SetMode(faultproxy.Pass)
		if cut[k] {
			kind.SetMode(faultproxy.Refuse)
		} else {
			kind.SetMode(faultproxy.Pass)
		}
	}
}

// LinksOf returns the directed links to and from node i.
func (c *Cluster) LinksOf(i int) [][2]int {
	var out [][2]int
	for j := range c.Size() {
		if j != i {
			out = append(out, [2]int{i, j}, [2]int{j, i})
		}
	}
	return out
}

// AllLinks returns every directed link.
func (c *Cluster) AllLinks() [][2]int {
	var out [][2]int
	for k := range c.links {
		out = append(out, k)
	}
	return out
}

// Heal restores every link: nothing cut, nothing delayed.
func (c *Cluster) Heal() {
	c.SlowHTTP(nil, 0)
	c.setCut(map[[2]int]bool{})
}

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

// SlowHTTP delays every chunk of data on the node-to-node HTTP of the
// given directed links by d, both ways (a request and its answer), and
// removes any delay from the other links. Raft traffic is not delayed:
// the groups keep their leaders while the requests one node sends to
// another (forwarded writes, a coordinator's proposals to other groups'
// leaders, read indexes) arrive late.
func (c *Cluster) SlowHTTP(links [][2]int, d time.Duration) { c.delayHTTP(links, d, d) }

// SlowHTTPRequests is SlowHTTP for the requests only: a coordinator's
// prepare is applied late, and its answer comes back at once.
func (c *Cluster) SlowHTTPRequests(links [][2]int, d time.Duration) { c.delayHTTP(links, d, 0) }

// SlowHTTPAnswers is SlowHTTP for the answers only: the requests of the
// given links arrive at once (a coordinator's prepare is applied) and
// their answers late (the coordinator waits on, not knowing).
func (c *Cluster) SlowHTTPAnswers(links [][2]int, d time.Duration) { c.delayHTTP(links, 0, d) }

func (c *Cluster) delayHTTP(links [][2]int, request, answer time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	slow := map[[2]int]bool{}
	for _, l := range links {
		slow[l] = true
	}
	for k, l := range c.links {
		if slow[k] {
			l.http.SetDelays(request, answer)
		} else {
			l.http.SetDelays(0, 0)
		}
	}
}

// LinksFrom returns the directed links out of node i.
func (c *Cluster) LinksFrom(i int) [][2]int {
	var out [][2]int
	for j := range c.Size() {
		if j != i {
			out = append(out, [2]int{i, j})
		}
	}
	return out
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

// Txns asks node i for the transactions that hold locks or records (GET
// /v1/admin/txns). Listing them resolves nothing.
func (c *Cluster) Txns(ctx context.Context, i int) (api.TxnList, error) {
	var list api.TxnList
	b, status, err := c.call(ctx, http.MethodGet, c.Nodes[i].URL()+"/v1/admin/txns", "")
	if err != nil {
		return list, err
	}
	if status != http.StatusOK {
		return list, fmt.Errorf("GET /v1/admin/txns from %s: %d %s", c.Nodes[i].ID, status, b)
	}
	return list, json.Unmarshal(b, &list)
}

// ArmFailpoint arms failpoint name on node i with action ("crash" or
// "crash-once"); DisarmFailpoint disarms it. Both need a binary built
// with failpoints (see Failpoints).
func (c *Cluster) ArmFailpoint(ctx context.Context, i int, name, action string) error {
	return c.failpoint(ctx, i, http.MethodPut, name, action)
}

// DisarmFailpoint disarms failpoint name on node i.
func (c *Cluster) DisarmFailpoint(ctx context.Context, i int, name string) error {
	return c.failpoint(ctx, i, http.MethodDelete, name, "")
}

func (c *Cluster) failpoint(ctx context.Context, i int, method, name, action string) error {
	b, status, err := c.call(ctx, method, c.Nodes[i].URL()+"/debug/failpoints/"+name, action)
	if err != nil {
		return fmt.Errorf("%s failpoint %s on %s: %w", method, name, c.Nodes[i].ID, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("%s failpoint %s on %s: %d %s", method, name, c.Nodes[i].ID, status, b)
	}
	return nil
}

// hasFailpoints says whether node 0 serves the failpoint endpoint.
func (c *Cluster) hasFailpoints() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, status, err := c.call(ctx, http.MethodGet, c.Nodes[0].URL()+"/debug/failpoints/", "")
	return err == nil && status == http.StatusOK
}

// call sends one request to a node and returns the answer's body and
// status.
func (c *Cluster) call(ctx context.Context, method, url, body string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return b, resp.StatusCode, err
}

// WipeState deletes the state machine (every group's state.db) of node
// i, which must be stopped, keeping its Raft logs and snapshots: on its
// next start each replica must rebuild its state from them and from its
// peers. It returns the number of files deleted.
func (c *Cluster) WipeState(i int) (int, error) {
	n := c.Nodes[i]
	if n.Running() {
		return 0, fmt.Errorf("wipe the state of %s: it is running", n.ID)
	}
	var paths []string
	err := filepath.WalkDir(n.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "state.db" {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("wipe the state of %s: %w", n.ID, err)
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil {
			return 0, fmt.Errorf("wipe the state of %s: %w", n.ID, err)
		}
	}
	return len(paths), nil
}

// groupOf returns the group that owns key in cluster map cl, or 0 if
// none does (groups are numbered from 1).
func groupOf(cl api.Cluster, key string) uint64 {
	g, _ := cl.GroupOf(kvd.Slot(key))
	return g
}

// keysOfGroup returns the first n names name(0), name(1), ... that group
// g owns in cluster map cl.
func keysOfGroup(cl api.Cluster, g uint64, n int, name func(int) string) []string {
	var out []string
	for i := 0; len(out) < n && i < 100000; i++ {
		k := name(i)
		if groupOf(cl, k) == g {
			out = append(out, k)
		}
	}
	return out
}

// BuildKVD builds the kvd binary the suite runs into dir: a normal build
// with the failpoints compiled in, so that nemeses can crash a node at a
// chosen step (see internal/failpoint).
func BuildKVD(dir string) (string, error) {
	return kvdproc.BuildWith(dir, "kvd", "failpoints", "")
}
