package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// Process-level tests of membership changes: nodes that join a running
// cluster, a dead node replaced, a replica removed from a group, and the
// admin calls that must be refused. Each runs real kvd processes.

// skipShort skips a membership test under -short: each runs a cluster
// through several changes, tens of seconds.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("membership changes on kvd processes: skipped in -short")
	}
}

// mapJSON renders the cluster maps of every running node, for failure
// messages.
func mapJSON(c *kvdproc.Cluster) string {
	var b strings.Builder
	for i, n := range c.Nodes {
		if !n.Running() {
			fmt.Fprintf(&b, "%s: not running\n", n.ID)
			continue
		}
		cl, err := c.ClusterMap(i)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", n.ID, err)
			continue
		}
		out, _ := json.Marshal(cl)
		fmt.Fprintf(&b, "%s: %s\n", n.ID, out)
	}
	return b.String()
}

// waitMap waits up to d until a running node's cluster map satisfies
// cond, and returns that map. On timeout it fails the test with what
// cond last found wrong and every node's map (launch logs the nodes' logs
// when a test fails).
func waitMap(t *testing.T, c *kvdproc.Cluster, d time.Duration, what string, cond func(api.Cluster) error) api.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	cl, err := c.WaitMap(ctx, cond)
	if err != nil {
		t.Fatalf("%s: not within %v: %v\nmaps:\n%s", what, d, err, mapJSON(c))
	}
	t.Logf("%s: after %v (epoch %d)", what, time.Since(start).Round(10*time.Millisecond), cl.Epoch)
	return cl
}

// currentMap returns a running node's cluster map.
func currentMap(t *testing.T, c *kvdproc.Cluster) api.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := c.WaitMap(ctx, func(api.Cluster) error { return nil })
	require.NoError(t, err, "no node answers with its map")
	return cl
}

// replicaCounts counts the replicas (members and learners) each node of
// cl holds, zero for a node that holds none.
func replicaCounts(cl api.Cluster) map[string]int {
	counts := map[string]int{}
	for _, n := range cl.Nodes {
		counts[n.ID] = 0
	}
	for _, g := range cl.Groups {
		for _, m := range append(slices.Clone(g.Members), g.Learners...) {
			counts[m]++
		}
	}
	return counts
}

// fullyReplicated says why cl is not a map where every group has r
// voting members and no learners, or nil.
func fullyReplicated(cl api.Cluster, r int) error {
	for _, g := range cl.Groups {
		if len(g.Members) != r || len(g.Learners) > 0 {
			return fmt.Errorf("group %d has members %v and learners %v, want %d members and no learner", g.ID, g.Members, g.Learners, r)
		}
	}
	return nil
}

// balanced says why the replica counts of cl's nodes differ by more than
// one, or nil.
func balanced(cl api.Cluster) error {
	counts := replicaCounts(cl)
	lo, hi := -1, -1
	for _, n := range counts {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	if hi-lo > 1 {
		return fmt.Errorf("replicas per node %v differ by %d", counts, hi-lo)
	}
	return nil
}

// nodeState returns the state of node id in cl, "" if it is not there.
func nodeState(cl api.Cluster, id string) string {
	for _, n := range cl.Nodes {
		if n.ID == id {
			if n.State == "" {
				return "active"
			}
			return n.State
		}
	}
	return ""
}

// groupIn returns group g of cl.
func groupIn(t *testing.T, cl api.Cluster, g uint64) api.Group {
	t.Helper()
	for _, grp := range cl.Groups {
		if grp.ID == g {
			return grp
		}
	}
	t.Fatalf("no group %d in the map: %+v", g, cl)
	return api.Group{}
}

// keyIn returns a key named after prefix that group g owns in cl.
func keyIn(t *testing.T, cl api.Cluster, g uint64, prefix string) string {
	t.Helper()
	for i := range 100000 {
		k := fmt.Sprintf("%s-%d", prefix, i)
		if owner, ok := cl.GroupOf(kvd.Slot(k)); ok && owner == g {
			return k
		}
	}
	t.Fatalf("no key of group %d", g)
	return ""
}

// adminCall sends an admin call to node i (30 s at most) and returns the
// answer's status and body.
func adminCall(t *testing.T, c *kvdproc.Cluster, i int, method, path string, body any) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	status, b, err := c.Call(ctx, i, method, path, body)
	require.NoError(t, err, "%s %s", method, path)
	return status, b
}

// requireRefused checks that an admin call was refused with status and
// the JSON error code, and returns its message.
func requireRefused(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode string) string {
	t.Helper()
	var e api.Error
	require.Equal(t, wantStatus, status, "%s: got %d %s, want %d", what, status, body, wantStatus)
	require.NoError(t, json.Unmarshal(body, &e), "%s: the error is JSON: %s", what, body)
	require.Equal(t, wantCode, e.Error.Code, "%s: %s", what, body)
	require.NotEmpty(t, e.Error.Message, "%s: the error says why", what)
	t.Logf("%s: %d %s: %s", what, status, e.Error.Code, e.Error.Message)
	return e.Error.Message
}

// readRouted reads key at node url as the smart router does: for group g
// at map epoch, so the node serves it from its own replica or refuses it,
// never forwards it.
func readRouted(url, key, consistency string, g, epoch uint64) (readResult, error) {
	req, _ := http.NewRequest("GET", url+"/v1/kv/"+key+"?consistency="+consistency, nil)
	req.Header.Set(api.HeaderGroup, strconv.FormatUint(g, 10))
	req.Header.Set(api.HeaderEpoch, strconv.FormatUint(epoch, 10))
	resp, err := hc.Do(req)
	if err != nil {
		return readResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return readResult{status: resp.StatusCode, body: string(b), node: resp.Header.Get(api.HeaderNode)}, nil
}

// history records what writers were told: each key's last acknowledged
// value, and the values written to it since whose outcome is unknown.
type history struct {
	// mu protects acked and maybe.
	mu    sync.Mutex
	acked map[string]string
	maybe map[string][]string
	ok    atomic.Int64
	other atomic.Int64
}

// allowed returns the values a read of key may return now that the
// writes have stopped: its last acknowledged value, or a later write
// whose outcome is unknown.
func (h *history) allowed(key string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string{h.acked[key]}, h.maybe[key]...)
}

func (h *history) keys() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for k := range h.acked {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// startWriters starts n writers, each putting values to its own 100 keys
// in turn (so each key is written several times) at a random node of
// urls, until the returned stop is called. stop waits for them and
// returns what they were told.
func startWriters(t *testing.T, n int, urls []string) (*history, func()) {
	t.Helper()
	h := &history{acked: map[string]string{}, maybe: map[string][]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("member-w%d-%03d", w, i%100)
				val := fmt.Sprintf("v%d-%d", w, i)
				status, err := putClassified(urls[rng.IntN(len(urls))], key, val)
				h.mu.Lock()
				switch {
				case err == nil && status == http.StatusOK:
					h.acked[key], h.maybe[key] = val, nil
					h.ok.Add(1)
				case errors.Is(err, errNotSent) || (err == nil && (status < 500 || status == http.StatusServiceUnavailable)):
					h.other.Add(1) // certainly not applied
				default:
					h.maybe[key] = append(h.maybe[key], val)
					h.other.Add(1)
				}
				h.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Millisecond):
				}
			}
		}()
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			t.Logf("writers: %d writes acknowledged, %d not", h.ok.Load(), h.other.Load())
		})
	}
	t.Cleanup(stop)
	return h, stop
}

// errNotSent is a write that never reached a node (its connection was
// refused): it certainly did not apply.
var errNotSent = errors.New("connection refused: not sent")

// putClassified puts key=val at url and returns the status, or
// errNotSent when no connection was made.
func putClassified(url, key, val string) (int, error) {
	req, _ := http.NewRequest("PUT", url+"/v1/kv/"+key, strings.NewReader(val))
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return 0, errNotSent
		}
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// waitAcked waits until the writers have had n writes acknowledged.
func waitAcked(t *testing.T, h *history, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return h.ok.Load() >= n }, 30*time.Second, 20*time.Millisecond,
		"writers had %d writes acknowledged, want %d", h.ok.Load(), n)
}

// readBack checks that every key the writers were acknowledged reads
// back from read (retried a few times while it is refused) with its last
// value. read names what it reads in failure messages.
func readBack(t *testing.T, h *history, what string, read func(key string) (readResult, error)) {
	t.Helper()
	keys := h.keys()
	require.NotEmpty(t, keys)
	for _, k := range keys {
		var r readResult
		var err error
		for attempt := 0; attempt < 50; attempt++ {
			r, err = read(k)
			if err == nil && r.status != http.StatusServiceUnavailable && r.status != http.StatusMisdirectedRequest {
				break
			}
			time.Sleep(100 * time.Millisecond) // refused or unreachable: try again
		}
		require.NoError(t, err, "%s of %s", what, k)
		require.Equal(t, http.StatusOK, r.status, "%s of acknowledged key %s: %s", what, k, r.body)
		require.Contains(t, h.allowed(k), r.body, "%s of %s: a value that is not its last acknowledged one", what, k)
	}
	t.Logf("%s: all %d acknowledged keys read back", what, len(keys))
}

// plainRead reads key at url with consistency (forwarded where needed).
func plainRead(url, consistency string) func(string) (readResult, error) {
	return func(key string) (readResult, error) {
		u := url + "/v1/kv/" + key
		if consistency != "" {
			u += "?consistency=" + consistency
		}
		resp, err := hc.Get(u)
		if err != nil {
			return readResult{}, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return readResult{status: resp.StatusCode, body: string(b), node: resp.Header.Get(api.HeaderNode)}, nil
	}
}

// Two nodes join a 3-node cluster while writes go on: the cluster moves
// replicas to them until every node holds its share, and no
// acknowledged write is lost on the way.
func TestKvd_Membership_JoinedNodesTakeReplicasWhileWritesGoOn(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 3, 3)
	var urls []string
	for _, n := range c.Nodes {
		urls = append(urls, n.URL())
	}
	h, stop := startWriters(t, 2, urls)
	waitAcked(t, h, 50)

	start := time.Now()
	for _, id := range []string{"n4", "n5"} {
		_, err := c.AddNode(id)
		require.NoError(t, err)
	}
	cl := waitMap(t, c, 90*time.Second, "every group has 3 voters and the 5 nodes hold their shares", func(cl api.Cluster) error {
		for _, id := range []string{"n1", "n2", "n3", "n4", "n5"} {
			if st := nodeState(cl, id); st != "active" {
				return fmt.Errorf("node %s is %q, want active", id, st)
			}
		}
		if err := fullyReplicated(cl, 3); err != nil {
			return err
		}
		return balanced(cl)
	})
	counts := replicaCounts(cl)
	t.Logf("grown in %v: replicas per node %v", time.Since(start).Round(time.Second), counts)
	require.Positive(t, counts["n4"], "n4 holds replicas")
	require.Positive(t, counts["n5"], "n5 holds replicas")
	for i, n := range c.Nodes {
		require.True(t, n.Running(), "node %s is still running:\n%s", n.ID, c.Logs(i, 4000))
	}
	stop()
	readBack(t, h, "linearizable read at n1", plainRead(c.Nodes[0].URL(), ""))
	readBack(t, h, "linearizable read at n5", plainRead(c.Nodes[4].URL(), ""))
}

// A dead node is removed by force and a fresh node takes its place: the
// groups get their third replica back on the new node, which serves
// every acknowledged write itself.
func TestKvd_Membership_ADeadNodeIsReplacedByAFreshOne(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 3, 3)
	h, stop := startWriters(t, 2, []string{c.Nodes[0].URL(), c.Nodes[1].URL()})
	waitAcked(t, h, 50)

	require.NoError(t, c.Kill(2))
	status, body := adminCall(t, c, 0, http.MethodDelete, "/v1/admin/nodes/n3?force=true", nil)
	require.Contains(t, []int{http.StatusOK, http.StatusAccepted}, status, "force-remove n3: %d %s", status, body)
	var nc api.NodeChange
	require.NoError(t, json.Unmarshal(body, &nc), "%s", body)
	t.Logf("force-remove n3: %d %s", status, body)
	waitMap(t, c, 30*time.Second, "n3 is gone from the map", func(cl api.Cluster) error {
		if nodeState(cl, "n3") != "" {
			return fmt.Errorf("n3 is still a node (%s)", nodeState(cl, "n3"))
		}
		for _, g := range cl.Groups {
			if slices.Contains(g.Members, "n3") || slices.Contains(g.Learners, "n3") {
				return fmt.Errorf("group %d still holds n3: %v %v", g.ID, g.Members, g.Learners)
			}
		}
		return nil
	})

	i4, err := c.AddNode("n4")
	require.NoError(t, err)
	waitMap(t, c, 90*time.Second, "every group has 3 voters, n4 among them", func(cl api.Cluster) error {
		if err := fullyReplicated(cl, 3); err != nil {
			return err
		}
		for _, g := range cl.Groups {
			if !slices.Contains(g.Members, "n4") {
				return fmt.Errorf("group %d has members %v, without n4", g.ID, g.Members)
			}
		}
		return nil
	})
	stop()
	n4 := c.Nodes[i4].URL()
	readBack(t, h, "linearizable read at n1", plainRead(c.Nodes[0].URL(), ""))
	readBack(t, h, "linearizable read at n4", plainRead(n4, ""))
	cl := currentMap(t, c)
	groupOfKey := func(k string) uint64 { g, _ := cl.GroupOf(kvd.Slot(k)); return g }
	readBack(t, h, "routed follower read served by n4", func(k string) (readResult, error) {
		r, err := readRouted(n4, k, "follower", groupOfKey(k), cl.Epoch)
		if err == nil && r.status == http.StatusMisdirectedRequest {
			cl = currentMap(t, c) // the map moved on (as a router would, refresh)
		}
		if err == nil && r.status == http.StatusOK && r.node != "n4" {
			return r, fmt.Errorf("a routed read was served by %q, not n4", r.node)
		}
		return r, err
	})

	// n4 leads group 1 once asked to: its routed linearizable reads of
	// the group's keys are served by itself.
	status, body = adminCall(t, c, 0, http.MethodPost, "/v1/admin/groups/1/leader", api.MemberRequest{Node: "n4"})
	require.Equal(t, http.StatusOK, status, "hand group 1's leadership to n4: %s", body)
	cl = waitMap(t, c, 20*time.Second, "n4 leads group 1", func(cl api.Cluster) error {
		if l := groupIn(t, cl, 1).Leader; l != "n4" {
			return fmt.Errorf("group 1 is led by %q", l)
		}
		return nil
	})
	led := &history{acked: map[string]string{}, maybe: map[string][]string{}}
	for _, k := range h.keys() {
		if groupOfKey(k) == 1 {
			led.acked[k], led.maybe[k] = h.acked[k], h.maybe[k]
		}
	}
	readBack(t, led, "routed linearizable read served by n4, group 1's leader", func(k string) (readResult, error) {
		r, err := readRouted(n4, k, "linearizable", 1, cl.Epoch)
		if err == nil && r.status == http.StatusMisdirectedRequest {
			cl = currentMap(t, c) // the map moved on (as a router would, refresh)
		}
		if err == nil && r.status == http.StatusOK && r.node != "n4" {
			return r, fmt.Errorf("a routed read was served by %q, not n4", r.node)
		}
		return r, err
	})
}

// A replica removed from a group serves nothing of it any more: routed
// stale and follower reads at its node are refused (421 or 503, never a
// value, never a 404), and its copy of the group is deleted.
func TestKvd_Membership_ARemovedReplicaServesNothing(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 3, 2, "--balance-replicas=false")
	const g = 2
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	li, err := c.Leader(ctx, g)
	require.NoError(t, err)
	xi := (li + 1) % 3
	x := c.Nodes[xi]
	before := currentMap(t, c)
	require.True(t, slices.Contains(groupIn(t, before, g).Members, x.ID))
	key := keyIn(t, before, g, "removed")
	other := keyIn(t, before, 1, "kept")
	for _, k := range []string{key, other} {
		_, status, err := put(c.Nodes[li].URL(), k, "before")
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	require.Eventually(t, func() bool {
		r, err := readRouted(x.URL(), key, "stale", g, before.Epoch)
		return err == nil && r.status == 200 && r.body == "before"
	}, 20*time.Second, 20*time.Millisecond, "%s serves group %d before its removal", x.ID, g)

	status, body := adminCall(t, c, li, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d/members/%s", g, x.ID), nil)
	require.Contains(t, []int{http.StatusOK, http.StatusAccepted}, status, "remove %s from group %d: %d %s", x.ID, g, status, body)
	t.Logf("remove %s from group %d: %d %s", x.ID, g, status, body)
	after := waitMap(t, c, 30*time.Second, fmt.Sprintf("group %d no longer holds %s", g, x.ID), func(cl api.Cluster) error {
		grp := groupIn(t, cl, g)
		if slices.Contains(grp.Members, x.ID) || slices.Contains(grp.Learners, x.ID) {
			return fmt.Errorf("group %d: members %v, learners %v", g, grp.Members, grp.Learners)
		}
		return nil
	})
	require.Greater(t, after.Epoch, before.Epoch, "the change bumped the epoch")
	require.Len(t, groupIn(t, after, g).Members, 2, "the balancer is off: nothing replaced the replica")
	_, status, err = put(c.Nodes[li].URL(), key, "after")
	require.NoError(t, err)
	require.Equal(t, 200, status, "the group of two takes writes")

	dir := filepath.Join(x.DataDir, "groups", strconv.Itoa(g))
	seen := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for rounds := 0; time.Now().Before(deadline); rounds++ {
		for _, cons := range []string{"stale", "follower"} {
			for _, epoch := range []uint64{before.Epoch, after.Epoch} {
				r, err := readRouted(x.URL(), key, cons, g, epoch)
				require.NoError(t, err)
				require.Contains(t, []int{http.StatusMisdirectedRequest, http.StatusServiceUnavailable}, r.status,
					"routed %s read of group %d at epoch %d at %s, whose replica was removed: %d %q (served by %q)", cons, g, epoch, x.ID, r.status, r.body, r.node)
				seen[fmt.Sprintf("%s@%d:%d", cons, epoch, r.status)]++
			}
			// A read without routing may be forwarded, but not served by
			// the removed replica.
			r, err := plainRead(x.URL(), cons)(key)
			require.NoError(t, err)
			if r.status == http.StatusOK {
				require.NotEqual(t, x.ID, r.node, "%s read of group %d served by %s after its removal: %q", cons, g, x.ID, r.body)
			}
		}
		_, err := os.Stat(dir)
		if errors.Is(err, os.ErrNotExist) && rounds >= 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist, "the removed replica's directory %s is deleted within 30 s", dir)
	t.Logf("answers of the removed replica: %v", seen)
	// It still serves the group it kept.
	r, err := readRouted(x.URL(), other, "stale", 1, after.Epoch)
	require.NoError(t, err)
	require.Equal(t, 200, r.status, "%s still serves group 1: %s", x.ID, r.body)
	require.Equal(t, "before", r.body)
}

// Membership calls that cannot be carried out are refused with a clear
// 4xx and a JSON error, and leave the map as it was: an id or an address
// taken, an unknown node, a removal that would leave a group without a
// majority of live voters, a second change to a group while one is in
// progress, and a node joining with the wrong peer secret.
func TestKvd_Membership_BadChangesAreRefusedAndChangeNothing(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 3, 2, "--balance-replicas=false")
	epoch := func() uint64 { return currentMap(t, c).Epoch }
	unchanged := func(what string, before uint64) {
		t.Helper()
		require.Equal(t, before, epoch(), "%s changed the map:\n%s", what, mapJSON(c))
	}
	free, err := kvdproc.FreeAddrs(2)
	require.NoError(t, err)

	e := epoch()
	status, body := adminCall(t, c, 1, http.MethodPost, "/v1/admin/nodes", api.NodeRequest{ID: "n1", HTTP: free[0], Raft: free[1]})
	requireRefused(t, "add a node whose id is taken", status, body, http.StatusConflict, api.CodeConflict)
	unchanged("add a node whose id is taken", e)
	status, body = adminCall(t, c, 1, http.MethodPost, "/v1/admin/nodes", api.NodeRequest{ID: "n9", HTTP: c.Nodes[2].HTTP, Raft: free[1]})
	requireRefused(t, "add a node on a taken HTTP address", status, body, http.StatusConflict, api.CodeConflict)
	status, body = adminCall(t, c, 1, http.MethodPost, "/v1/admin/nodes", api.NodeRequest{ID: "n9", HTTP: free[0], Raft: c.Nodes[2].Raft})
	requireRefused(t, "add a node on a taken Raft address", status, body, http.StatusConflict, api.CodeConflict)
	unchanged("adding a node on taken addresses", e)
	status, body = adminCall(t, c, 0, http.MethodDelete, "/v1/admin/nodes/n42", nil)
	requireRefused(t, "remove an unknown node", status, body, http.StatusNotFound, api.CodeNotFound)
	unchanged("removing an unknown node", e)

	// A node with another cluster's secret is refused: kvd says so and
	// exits non-zero.
	bad := filepath.Join(t.TempDir(), "other.secret")
	require.NoError(t, os.WriteFile(bad, []byte(strings.Repeat("z", 64)), 0o600))
	n6, err := c.NewNode("n6")
	require.NoError(t, err)
	n6.PeerSecretFile = bad
	c.Nodes = append(c.Nodes, n6)
	i6 := len(c.Nodes) - 1
	require.NoError(t, c.Start(i6))
	var exit error
	require.Eventually(t, func() bool {
		var done bool
		done, exit = n6.Exited()
		return done
	}, 30*time.Second, 50*time.Millisecond, "a node joining with the wrong secret must exit; log:\n%s", c.Logs(i6, 4000))
	var ee *exec.ExitError
	require.ErrorAs(t, exit, &ee, "kvd exits non-zero when its join is refused; log:\n%s", c.Logs(i6, 4000))
	log6 := c.Logs(i6, 4000)
	t.Logf("the refused joiner exited with %v: %s", exit, log6[max(0, len(log6)-600):])
	require.Contains(t, log6, "secret", "it says why")
	cl := currentMap(t, c)
	require.Empty(t, nodeState(cl, "n6"), "the refused node is not in the map")
	unchanged("a join with the wrong secret", e)
	require.NoError(t, c.RemoveNode(i6))

	// Two nodes join and hold nothing (the balancer is off).
	for _, id := range []string{"n4", "n5"} {
		_, err := c.AddNode(id)
		require.NoError(t, err)
	}
	waitMap(t, c, 30*time.Second, "n4 and n5 are active", func(cl api.Cluster) error {
		for _, id := range []string{"n4", "n5"} {
			if st := nodeState(cl, id); st != "active" {
				return fmt.Errorf("%s is %q", id, st)
			}
		}
		return nil
	})
	i4, i5 := c.NodeIndex("n4"), c.NodeIndex("n5")

	// While n4, paused, cannot catch up as group 1's learner, a second
	// change to group 1 is refused.
	require.NoError(t, c.Pause(i4))
	first := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		status, body, err := c.Call(ctx, 0, http.MethodPost, "/v1/admin/groups/1/members", api.MemberRequest{Node: "n4"})
		first <- fmt.Sprintf("%d %s %v", status, body, err)
	}()
	cl = waitMap(t, c, 20*time.Second, "n4 is group 1's learner", func(cl api.Cluster) error {
		if grp := groupIn(t, cl, 1); !slices.Contains(grp.Learners, "n4") {
			return fmt.Errorf("group 1: members %v, learners %v", grp.Members, grp.Learners)
		}
		return nil
	})
	e = cl.Epoch
	status, body = adminCall(t, c, i5, http.MethodPost, "/v1/admin/groups/1/members", api.MemberRequest{Node: "n5"})
	requireRefused(t, "add a replica while another is being added", status, body, http.StatusConflict, api.CodeConflict)
	unchanged("a second change to a group", e)
	require.NoError(t, c.Resume(i4))
	select {
	case got := <-first:
		t.Logf("the first add answered %s", got)
		require.True(t, strings.HasPrefix(got, "200 ") || strings.HasPrefix(got, "202 "), "the first add: %s", got)
	case <-time.After(60 * time.Second):
		t.Fatal("the first add never answered")
	}
	waitMap(t, c, 30*time.Second, "n4 votes in group 1", func(cl api.Cluster) error {
		if grp := groupIn(t, cl, 1); !slices.Contains(grp.Members, "n4") || len(grp.Learners) > 0 {
			return fmt.Errorf("group 1: members %v, learners %v", grp.Members, grp.Learners)
		}
		return nil
	})

	// Group 2 has three voters; with one dead, removing another live one
	// would leave one live voter of two.
	cl = currentMap(t, c)
	g2 := groupIn(t, cl, 2)
	require.Len(t, g2.Members, 3)
	dead, live := c.NodeIndex(g2.Members[2]), c.NodeIndex(g2.Members[1])
	require.NoError(t, c.Kill(dead))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Leader(ctx, 2)
	require.NoError(t, err)
	// Give the leader several heartbeats to miss from the dead node.
	killed := time.Now()
	require.Eventually(t, func() bool { return time.Since(killed) > 3*time.Second }, 5*time.Second, 100*time.Millisecond)
	e = epoch()
	status, body = adminCall(t, c, c.NodeIndex(g2.Members[0]), http.MethodDelete, "/v1/admin/groups/2/members/"+c.Nodes[live].ID, nil)
	requireRefused(t, "remove a live voter of a group with a dead one", status, body, http.StatusConflict, api.CodeConflict)
	unchanged("a removal that would break the majority", e)
	cl = currentMap(t, c)
	require.Equal(t, g2.Members, groupIn(t, cl, 2).Members, "group 2 keeps its members")
	_, status, err = put(c.Nodes[live].URL(), keyIn(t, cl, 2, "still"), "x")
	require.NoError(t, err)
	require.Equal(t, 200, status, "group 2 still takes writes")
}

// A voter that was down while its group changed (a replica added, then
// another removed) comes back with the group's old configuration. If the
// leader then dies, it and the new replica are a majority of the group
// and must elect a leader between them: the contract's "a group with a
// majority of its replicas up and connected serves reads and writes".
// (hashicorp/raft refuses a pre-vote from a node its own, older,
// configuration does not list as a voter, so the returning voter must
// learn the newer configuration somehow.)
func TestKvd_Membership_AVoterThatMissedAChangeStillFormsAMajority(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 4, 2, "--balance-replicas=false")
	const g = 2
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	li, err := c.Leader(ctx, g)
	require.NoError(t, err)
	cl := currentMap(t, c)
	grp := groupIn(t, cl, g)
	leader := c.Nodes[li].ID
	var others []string
	for _, m := range grp.Members {
		if m != leader {
			others = append(others, m)
		}
	}
	require.Len(t, others, 2)
	missed, removed := others[0], others[1]
	var added string
	for _, n := range cl.Nodes {
		if !slices.Contains(grp.Members, n.ID) {
			added = n.ID
		}
	}
	require.NotEmpty(t, added)
	key := keyIn(t, cl, g, "majority")
	_, status, err := put(c.Nodes[li].URL(), key, "before")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	t.Logf("group %d: leader %s, %s misses the changes, %s is removed, %s added", g, leader, missed, removed, added)

	mi := c.NodeIndex(missed)
	require.NoError(t, c.Kill(mi))
	status, body := adminCall(t, c, li, http.MethodPost, fmt.Sprintf("/v1/admin/groups/%d/members", g), api.MemberRequest{Node: added})
	require.Contains(t, []int{200, 202}, status, "add %s: %s", added, body)
	waitMap(t, c, 30*time.Second, added+" votes", func(cl api.Cluster) error {
		if grp := groupIn(t, cl, g); !slices.Contains(grp.Members, added) || len(grp.Learners) > 0 {
			return fmt.Errorf("group %d: members %v, learners %v", g, grp.Members, grp.Learners)
		}
		return nil
	})
	status, body = adminCall(t, c, li, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d/members/%s", g, removed), nil)
	require.Contains(t, []int{200, 202}, status, "remove %s: %s", removed, body)
	waitMap(t, c, 30*time.Second, removed+" is out", func(cl api.Cluster) error {
		if grp := groupIn(t, cl, g); slices.Contains(grp.Members, removed) || len(grp.Learners) > 0 {
			return fmt.Errorf("group %d: members %v, learners %v", g, grp.Members, grp.Learners)
		}
		return nil
	})
	_, status, err = put(c.Nodes[li].URL(), key, "after-the-changes")
	require.NoError(t, err)
	require.Equal(t, 200, status)

	// The leader dies; the voter that missed both changes comes back.
	require.NoError(t, c.Kill(li))
	require.NoError(t, c.Start(mi))
	ai := c.NodeIndex(added)
	last := "none"
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, status, err := put(c.Nodes[ai].URL(), key, "after-the-leader-died")
		if err == nil && status == 200 {
			break
		}
		last = fmt.Sprintf("%d %v", status, err)
		if time.Now().After(deadline) {
			t.Fatalf("group %d (voters %s and %s up, %s dead) took no write within 30 s: last answer %s\nmaps:\n%s",
				g, missed, added, leader, last, mapJSON(c))
		}
	}
	v, _, status, err := get(c.Nodes[mi].URL(), key, "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "after-the-leader-died", v)
}
