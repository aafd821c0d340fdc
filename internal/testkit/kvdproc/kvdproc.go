// Package kvdproc builds the kvd binary and runs clusters of real kvd
// processes on loopback: start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT,
// restart, and nodes added to a running cluster (--join) or taken out of
// it. Tests and the fault-injection harness use it.
//
// A Cluster is driven from one goroutine: its methods take node indexes
// into Nodes, and AddNode, ReplaceNode and RemoveNode change Nodes.
package kvdproc

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Build compiles cmd/kvd into dir and returns the binary's path.
func Build(dir string) (string, error) { return BuildWith(dir, "kvd", "", "") }

// BuildWith compiles cmd/kvd into dir/name with build tags and -ldflags
// (each may be empty) and returns the binary's path.
func BuildWith(dir, name, tags, ldflags string) (string, error) {
	bin := filepath.Join(dir, name)
	args := []string{"build", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command("go", append(args, "github.com/kvd-project/kvd/cmd/kvd")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build kvd: %v: %s", err, out)
	}
	return bin, nil
}

// FreeAddrs returns n loopback addresses whose ports were free a moment
// ago (each was listened on at port 0, then released).
func FreeAddrs(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// Node is one kvd process of a Cluster.
type Node struct {
	ID      string
	HTTP    string
	Raft    string
	DataDir string
	LogPath string
	// Join lists the base URLs of the members a node added to a running
	// cluster registers through (--join); it keeps them for every start,
	// as an operator would restart it with the same flags. Nil for a
	// member of the initial cluster, which starts from the
	// initial-cluster file.
	Join []string
	// PeerSecretFile is the peer secret a joining node starts with
	// (--peer-secret-file): NewNode sets the cluster's, PeerSecretPath.
	PeerSecretFile string
	// Scheme is how the node's HTTP port is dialed: "http" (if empty) or
	// "https" (see Cluster.UseTLS).
	Scheme string

	// mu protects cmd, done and exit.
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	exit error
}

// URL returns the node's HTTP base URL.
func (n *Node) URL() string {
	scheme := n.Scheme
	if scheme == "" {
		scheme = "http"
	}
	return scheme + "://" + n.HTTP
}

// Running reports whether the process is alive (paused counts).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Pid returns the process id of the node's running process, 0 if none.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Exited reports whether the node's last process has ended, and if so
// its exit error (nil for exit status 0).
func (n *Node) Exited() (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false, nil
	}
	select {
	case <-n.done:
		return true, n.exit
	default:
		return false, nil
	}
}

// Cluster is a set of kvd processes started from one initial-cluster
// file, and the nodes added to it since.
type Cluster struct {
	Bin   string
	Dir   string
	Spec  kvd.InitialCluster
	Nodes []*Node
	// Args are extra flags given to every node.
	Args []string
	// NodeArgs are extra flags per node id.
	NodeArgs map[string][]string
	// client makes the harness's own short calls (bounded by its
	// timeout); calls makes Call's, bounded by their context alone.
	client, calls *http.Client
	// scheme is the nodes' (see UseTLS).
	scheme string
}

// UseTLS makes the harness dial the nodes' HTTP ports with HTTPS and cfg
// (the nodes must be started with the matching TLS flags, in Args).
func (c *Cluster) UseTLS(cfg *tls.Config) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, TLSClientConfig: cfg}
	c.client = &http.Client{Timeout: 3 * time.Second, Transport: tr}
	c.calls = &http.Client{Transport: tr}
	c.scheme = "https"
	for _, n := range c.Nodes {
		n.Scheme = c.scheme
	}
}

// UseToken makes the harness's calls to the nodes (WaitReady, ClusterMap,
// Call, ...) carry tok as a bearer token, for nodes started with --auth.
// Call it after UseTLS, which replaces the transport.
func (c *Cluster) UseToken(tok string) {
	tr := bearer{token: tok, next: c.calls.Transport}
	c.client.Transport, c.calls.Transport = tr, tr
}

// bearer is a transport that sets a request's Authorization header to a
// bearer token, unless the request has one.
type bearer struct {
	token string
	next  http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}

// NewCluster prepares (but does not start) a cluster of n nodes with
// groups groups of replicas replicas, with data and logs under dir.
func NewCluster(bin, dir string, n, groups, replicas int) (*Cluster, error) {
	addrs, err := FreeAddrs(2 * n)
	if err != nil {
		return nil, err
	}
	return NewClusterAt(bin, dir, addrs, groups, replicas)
}

// NewClusterAt is NewCluster with the nodes' addresses given: HTTP and
// Raft of node i at addrs[2i] and addrs[2i+1].
func NewClusterAt(bin, dir string, addrs []string, groups, replicas int) (*Cluster, error) {
	if len(addrs)%2 != 0 || len(addrs) == 0 {
		return nil, fmt.Errorf("need two addresses per node, got %d", len(addrs))
	}
	n := len(addrs) / 2
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster folder: %w", err)
	}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}
	c := &Cluster{Bin: bin, Dir: dir, Spec: kvd.InitialCluster{Groups: groups, Replicas: replicas}, NodeArgs: map[string][]string{},
		client: &http.Client{Timeout: 3 * time.Second, Transport: tr}, calls: &http.Client{Transport: tr}}
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		node := &Node{ID: id, HTTP: addrs[2*i], Raft: addrs[2*i+1], DataDir: filepath.Join(dir, id), LogPath: filepath.Join(dir, id+".log")}
		c.Nodes = append(c.Nodes, node)
		c.Spec.Nodes = append(c.Spec.Nodes, kvd.Node{ID: id, HTTP: node.HTTP, Raft: node.Raft})
	}
	b, err := json.Marshal(c.Spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.SpecPath(), b, 0o644); err != nil {
		return nil, fmt.Errorf("write cluster file: %w", err)
	}
	return c, nil
}

// SpecPath is the initial-cluster file.
func (c *Cluster) SpecPath() string { return filepath.Join(c.Dir, "cluster.json") }

// PeerSecretPath is the cluster's peer secret file: kvd creates it next
// to the initial-cluster file when the first member starts, and a node
// that joins later is given it.
func (c *Cluster) PeerSecretPath() string { return c.SpecPath() + ".secret" }

// NodeIndex returns the index in Nodes of the node called id, or -1.
func (c *Cluster) NodeIndex(id string) int {
	for i, n := range c.Nodes {
		if n.ID == id {
			return i
		}
	}
	return -1
}

// NewNode prepares a node called id to join the running cluster: two
// fresh loopback addresses (listened on at port 0, then released, as
// FreeAddrs does), a data directory and a log under Dir, the cluster's
// peer secret, and the running members to join through. It neither
// tracks nor starts it (see AddNode and ReplaceNode); its fields may be
// changed before it starts.
func (c *Cluster) NewNode(id string) (*Node, error) {
	if c.NodeIndex(id) >= 0 {
		return nil, fmt.Errorf("node %s is already in the cluster", id)
	}
	var join []string
	for _, n := range c.Nodes {
		if n.Running() {
			join = append(join, n.URL())
		}
	}
	if len(join) == 0 {
		return nil, fmt.Errorf("node %s has no running member to join through", id)
	}
	addrs, err := FreeAddrs(2)
	if err != nil {
		return nil, err
	}
	return &Node{ID: id, HTTP: addrs[0], Raft: addrs[1], DataDir: filepath.Join(c.Dir, id), LogPath: filepath.Join(c.Dir, id+".log"),
		Join: join, PeerSecretFile: c.PeerSecretPath(), Scheme: c.scheme}, nil
}

// AddNode prepares a node called id (see NewNode), appends it to Nodes
// and starts it: kvd registers it with the cluster through a running
// member and waits for replicas. It returns the node's index, which Kill,
// Terminate, Start, WaitReady and Logs take as for any other node.
func (c *Cluster) AddNode(id string) (int, error) {
	n, err := c.NewNode(id)
	if err != nil {
		return -1, err
	}
	c.Nodes = append(c.Nodes, n)
	i := len(c.Nodes) - 1
	if err := c.Start(i); err != nil {
		return i, err
	}
	return i, nil
}

// ReplaceNode puts a new node called id (see NewNode) at index i, in
// place of a node that must not be running (removed from the cluster, or
// about to be), and starts it: the other nodes keep their indexes. It
// returns the new node.
func (c *Cluster) ReplaceNode(i int, id string) (*Node, error) {
	if old := c.Nodes[i]; old.Running() {
		return nil, fmt.Errorf("replace node %s: it is running", old.ID)
	}
	n, err := c.NewNode(id)
	if err != nil {
		return nil, err
	}
	c.Nodes[i] = n
	return n, c.Start(i)
}

// RemoveNode takes node i, which must not be running, out of Nodes: the
// nodes after it move down one index. Its data directory and log stay.
func (c *Cluster) RemoveNode(i int) error {
	if n := c.Nodes[i]; n.Running() {
		return fmt.Errorf("remove node %s: it is running", n.ID)
	}
	c.Nodes = append(c.Nodes[:i:i], c.Nodes[i+1:]...)
	return nil
}

// Start starts node i (again, after a stop: it resumes from its data). A
// member of the initial cluster starts with the initial-cluster file, a
// node added since with --join (see Node.Join).
func (c *Cluster) Start(i int) error {
	n := c.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("node %s is already running", n.ID)
		}
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	args := []string{"--id", n.ID, "--data-dir", n.DataDir, "--initial-cluster", c.SpecPath()}
	if len(n.Join) > 0 {
		args = []string{"--id", n.ID, "--data-dir", n.DataDir, "--http-addr", n.HTTP, "--raft-addr", n.Raft,
			"--join", strings.Join(n.Join, ","), "--peer-secret-file", n.PeerSecretFile}
	}
	args = append(args, c.Args...)
	args = append(args, c.NodeArgs[n.ID]...)
	cmd := exec.Command(c.Bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so a signal to the test does not reach it
	// and nothing outlives Kill.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.ID, err)
	}
	done := make(chan struct{})
	n.cmd, n.done = cmd, done
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.exit = err
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// StartAll starts every node.
func (c *Cluster) StartAll() error {
	for i := range c.Nodes {
		if err := c.Start(i); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) signal(i int, sig syscall.Signal) (chan struct{}, error) {
	n := c.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil, fmt.Errorf("node %s was never started", n.ID)
	}
	if err := n.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return nil, fmt.Errorf("signal %s: %w", n.ID, err)
	}
	return n.done, nil
}

// Kill sends SIGKILL to node i and waits for it to die.
func (c *Cluster) Kill(i int) error {
	c.signal(i, syscall.SIGCONT) // a paused process dies too, but be sure
	done, err := c.signal(i, syscall.SIGKILL)
	if err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s did not die", c.Nodes[i].ID)
	}
}

// Terminate sends SIGTERM to node i and waits up to timeout for it to
// exit; it returns the process's exit error (nil for exit status 0).
func (c *Cluster) Terminate(i int, timeout time.Duration) error {
	done, err := c.signal(i, syscall.SIGTERM)
	if err != nil {
		return err
	}
	select {
	case <-done:
		n := c.Nodes[i]
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.exit
	case <-time.After(timeout):
		c.Kill(i)
		return fmt.Errorf("node %s did not exit within %v of SIGTERM", c.Nodes[i].ID, timeout)
	}
}

// Pause stops node i with SIGSTOP; Resume continues it.
func (c *Cluster) Pause(i int) error {
	_, err := c.signal(i, syscall.SIGSTOP)
	return err
}

// Resume continues a paused node with SIGCONT.
func (c *Cluster) Resume(i int) error {
	_, err := c.signal(i, syscall.SIGCONT)
	return err
}

// KillAll kills every running node. It is safe to call at any time.
func (c *Cluster) KillAll() {
	for i, n := range c.Nodes {
		if n.Running() {
			c.Kill(i)
		}
	}
}

// WaitReady waits until node i answers /readyz with 200.
func (c *Cluster) WaitReady(ctx context.Context, i int) error {
	for {
		resp, err := c.client.Get(c.Nodes[i].URL() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !c.Nodes[i].Running() {
			return fmt.Errorf("node %s exited; see %s", c.Nodes[i].ID, c.Nodes[i].LogPath)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready: %w", c.Nodes[i].ID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitAllReady waits for every running node.
func (c *Cluster) WaitAllReady(ctx context.Context) error {
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if err := c.WaitReady(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// ClusterMap asks node i for the cluster map.
func (c *Cluster) ClusterMap(i int) (api.Cluster, error) {
	var cl api.Cluster
	resp, err := c.client.Get(c.Nodes[i].URL() + "/v1/cluster")
	if err != nil {
		return cl, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cl, fmt.Errorf("GET /v1/cluster from %s: %s", c.Nodes[i].ID, resp.Status)
	}
	return cl, json.NewDecoder(resp.Body).Decode(&cl)
}

// Call sends method path to node i, with body encoded as JSON (no body
// if it is nil), and returns the answer's status and body (its first
// MiB). ctx alone bounds it: an admin call may take a while.
func (c *Cluster) Call(ctx context.Context, i int, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Nodes[i].URL()+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.calls.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s on %s: %w", method, path, c.Nodes[i].ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// WaitMap polls the cluster map of every running node in turn until one
// satisfies cond (cond returns nil), and returns that map. When ctx ends
// first it returns the last map it read and an error that says what
// cond last found wrong.
func (c *Cluster) WaitMap(ctx context.Context, cond func(api.Cluster) error) (api.Cluster, error) {
	var last api.Cluster
	why := errors.New("no running node answered with its map")
	for {
		for i, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			cl, err := c.ClusterMap(i)
			if err != nil {
				continue
			}
			last = cl
			if why = cond(cl); why == nil {
				return cl, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("%w: %v", ctx.Err(), why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Leader waits until a running node reports a leader for group g that is
// itself running, and returns that node's index.
func (c *Cluster) Leader(ctx context.Context, g uint64) (int, error) {
	for {
		for i, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			cl, err := c.ClusterMap(i)
			if err != nil {
				continue
			}
			for _, grp := range cl.Groups {
				if grp.ID != g || grp.Leader == "" {
					continue
				}
				for j, m := range c.Nodes {
					if m.ID == grp.Leader && m.Running() {
						return j, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("group %d has no running leader: %w", g, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Logs returns the tail of node i's log, for failure messages.
func (c *Cluster) Logs(i int, maxBytes int) string {
	b, err := os.ReadFile(c.Nodes[i].LogPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	return strings.TrimSpace(string(b))
}
