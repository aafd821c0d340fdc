package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/kvd-project/kvd/api"
)

// membershipNemesis changes which nodes hold the groups' replicas while
// the clients run, through the admin API, with crashes mixed in. Its
// faults come in three kinds, taken in turn from a random first:
//
//   - move: a random group gets a replica on a node that holds none of it
//     (a learner that catches up from a snapshot and the log, then
//     votes), hands its leadership to it, then loses one of its other
//     members. On a cluster where every node holds every group, a member
//     is removed first and added back after: a fresh replica in place of
//     the deleted one.
//   - move-crash: the same, with a SIGKILL while the new replica catches
//     up, of its node or (on a move) of the group's leader. The change
//     must finish once the node is back: it is restarted when the fault
//     ends, and the rest of the change is carried out then.
//   - replace: SIGKILL a node, remove it by force, and start a fresh node
//     that joins in its place (same index, new id and addresses) and is
//     given replicas by the cluster.
//
// Every fault heals in full before the next begins: the killed node runs
// again, the change is finished, and every group is back to the
// replication factor with no learner, on nodes that all run and are
// active. The cluster's own balancer moves replicas meanwhile: a call
// refused because another change to the group is under way (409) is
// retried, and a change the balancer made first counts as made.
//
// A node that joins has no link proxies (see Cluster.ReplaceNode), so the
// nemesis is not drawn by mixed, whose partitions would not reach it.
type membershipNemesis struct {
	// kind is the next fault's kind, an index into membershipKinds; -1
	// until the first fault draws it.
	kind int
	// seq numbers the fresh nodes: the next is "n<seq>".
	seq int
	// rng draws the nodes the calls go to; Start seeds it from the run's.
	rng *rand.Rand

	// The fault under way, for Stop to finish.
	killed int    // index of the node killed, -1 for none
	group  uint64 // the group changed (0: none)
	add    string // the node to be a voter of group at the end
	remove string // the member to be gone from group at the end
}

// membershipKinds are the kinds of fault the membership nemesis takes in
// turn.
var membershipKinds = []string{"move", "move-crash", "replace"}

// membershipWait bounds each wait of a membership fault: for a change to
// be answered or seen in the map, and for the cluster to be fully
// replicated again.
const membershipWait = 60 * time.Second

func newMembershipNemesis() *membershipNemesis { return &membershipNemesis{kind: -1, killed: -1} }

func (n *membershipNemesis) Name() string { return "membership" }
func (n *membershipNemesis) Applicable(c *Cluster) error {
	if c.Size() < 3 || c.Spec.Replicas < 3 {
		return fmt.Errorf("moving replicas needs groups of at least 3 replicas (have %d nodes, %d replicas)", c.Size(), c.Spec.Replicas)
	}
	return nil
}

func (n *membershipNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	if n.kind < 0 {
		n.kind = rng.IntN(len(membershipKinds))
		n.seq = c.Size() + 1
	}
	kind := membershipKinds[n.kind%len(membershipKinds)]
	n.kind++
	n.rng = rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	n.killed, n.group, n.add, n.remove = -1, 0, "", ""
	if kind == "replace" {
		return n.replace(ctx, c, rng)
	}
	return n.move(ctx, c, rng, kind == "move-crash")
}

// move adds a replica of a random group on a node that holds none (or
// removes a member and adds it back), killing a node meanwhile if crash.
func (n *membershipNemesis) move(ctx context.Context, c *Cluster, rng *rand.Rand, crash bool) (string, error) {
	cl, err := c.anyMap(ctx)
	if err != nil {
		return "move a replica", err
	}
	g := cl.Groups[rng.IntN(len(cl.Groups))]
	n.group = g.ID
	var outside []string
	for _, node := range cl.Nodes {
		if !hosts(g, node.ID) && c.NodeIndex(node.ID) >= 0 {
			outside = append(outside, node.ID)
		}
	}
	var desc []string
	if len(outside) > 0 {
		n.add = outside[rng.IntN(len(outside))]
		others := slices.DeleteFunc(slices.Clone(g.Members), func(m string) bool { return m == n.add })
		n.remove = others[rng.IntN(len(others))]
		desc = append(desc, fmt.Sprintf("group %d: add %s, then remove %s", g.ID, n.add, n.remove))
	} else {
		// Every node holds the group: remove a member, then add it back.
		n.add = g.Members[rng.IntN(len(g.Members))]
		desc = append(desc, fmt.Sprintf("group %d: remove %s, then add it back", g.ID, n.add))
		ans, err := n.removeMember(ctx, c, rng, n.group, n.add, -1, 0)
		desc = append(desc, "remove answered "+ans)
		if err != nil {
			return strings.Join(desc, "; "), err
		}
	}
	victim := -1
	if crash {
		victim = c.NodeIndex(n.add)
		if n.remove != "" && rng.IntN(2) == 0 {
			if l := c.NodeIndex(g.Leader); l >= 0 && g.Leader != n.add {
				victim = l
			}
		}
	}
	added := make(chan string, 1)
	go func() {
		ans, err := n.addMember(ctx, c, rng, n.group, n.add, victim)
		if err != nil {
			ans += " (" + err.Error() + ")"
		}
		added <- ans
	}()
	if victim >= 0 {
		// The add is under way: its learner is catching up.
		sleepCtx(ctx, time.Duration(50+rand.IntN(400))*time.Millisecond)
		n.killed = victim
		desc = append(desc, "SIGKILL "+c.Nodes[victim].ID+leaderOrLearner(c.Nodes[victim].ID, n.add))
		if err := c.Kill(victim); err != nil {
			return strings.Join(desc, "; "), err
		}
	}
	desc = append(desc, "add answered "+<-added)
	if victim < 0 && n.remove != "" {
		if err := n.waitVoter(ctx, c, rng, n.group, n.add, -1); err != nil {
			return strings.Join(desc, "; "), err
		}
		ans, err := n.retry(ctx, c, rng, -1, http.MethodPost, fmt.Sprintf("/v1/admin/groups/%d/leader", n.group), api.MemberRequest{Node: n.add},
			func(cl api.Cluster) bool { return groupOfMap(cl, n.group).Leader == n.add })
		desc = append(desc, "leadership to "+n.add+" answered "+ans)
		if err != nil {
			return strings.Join(desc, "; "), err
		}
		ans, err = n.removeMember(ctx, c, rng, n.group, n.remove, -1, c.Spec.Replicas)
		desc = append(desc, "remove answered "+ans)
		if err != nil {
			return strings.Join(desc, "; "), err
		}
		// Done: nothing left for Stop. (The new replica may move on: the
		// balancer is free to place it elsewhere, so Stop must not add it
		// back, which would raise the group's replica count.)
		n.group, n.add, n.remove = 0, "", ""
	}
	return strings.Join(desc, "; "), nil
}

func leaderOrLearner(victim, added string) string {
	if victim == added {
		return " (the new replica, catching up)"
	}
	return " (the group's leader)"
}

// replace kills a random node, removes it by force and starts a fresh
// node in its place.
func (n *membershipNemesis) replace(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	v := rng.IntN(c.Size())
	old := c.Nodes[v].ID
	fresh := n.freshID(c)
	desc := []string{"SIGKILL " + old}
	n.killed = v // restarted by Stop unless it leaves the cluster
	if err := c.Kill(v); err != nil {
		return desc[0], err
	}
	ans, err := n.retry(ctx, c, rng, v, http.MethodDelete, "/v1/admin/nodes/"+old+"?force=true", nil, func(cl api.Cluster) bool {
		return nodeIn(cl, old) == nil
	})
	desc = append(desc, "force-remove answered "+ans)
	if err != nil {
		return strings.Join(desc, "; "), err
	}
	wctx, cancel := context.WithTimeout(ctx, membershipWait)
	defer cancel()
	if _, err := c.WaitMap(wctx, func(cl api.Cluster) error {
		if st := nodeIn(cl, old); st != nil {
			return fmt.Errorf("%s is still in the map (%s)", old, st.State)
		}
		return nil
	}); err != nil {
		return strings.Join(desc, "; "), fmt.Errorf("%s never left the map: %w", old, err)
	}
	n.killed = -1
	if _, err := c.ReplaceNode(v, fresh); err != nil {
		return strings.Join(desc, "; "), err
	}
	desc = append(desc, fmt.Sprintf("%s gone from the map; %s joins in its place", old, fresh))
	return strings.Join(desc, "; "), nil
}

// freshID returns an id no node of the cluster has had.
func (n *membershipNemesis) freshID(c *Cluster) string {
	for {
		id := fmt.Sprintf("n%d", n.seq)
		n.seq++
		if c.NodeIndex(id) < 0 {
			return id
		}
	}
}

func (n *membershipNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	rng := n.rng
	var done []string
	if n.killed >= 0 && !c.Nodes[n.killed].Running() {
		if err := c.Start(n.killed); err != nil {
			return "", err
		}
		done = append(done, "restarted "+c.Nodes[n.killed].ID)
	}
	if n.group != 0 {
		if err := n.waitVoter(ctx, c, rng, n.group, n.add, -1); err != nil {
			return strings.Join(done, "; "), err
		}
		if n.remove != "" {
			ans, err := n.removeMember(ctx, c, rng, n.group, n.remove, -1, c.Spec.Replicas)
			if err != nil {
				return strings.Join(done, "; "), err
			}
			done = append(done, fmt.Sprintf("%s removed from group %d (%s)", n.remove, n.group, ans))
		}
	}
	start := time.Now()
	if err := n.waitReplicated(ctx, c); err != nil {
		return strings.Join(done, "; "), err
	}
	done = append(done, fmt.Sprintf("every group back to %d voters (%.1f s)", c.Spec.Replicas, time.Since(start).Seconds()))
	return strings.Join(done, "; "), nil
}

// addMember makes node a member of group g: it asks for it (again while
// the group is busy with another change) until the map shows node
// hosting g, as a learner or a voter. It returns the last answer.
func (n *membershipNemesis) addMember(ctx context.Context, c *Cluster, rng *rand.Rand, g uint64, node string, skip int) (string, error) {
	return n.retry(ctx, c, rng, skip, http.MethodPost, fmt.Sprintf("/v1/admin/groups/%d/members", g), api.MemberRequest{Node: node},
		func(cl api.Cluster) bool { return hosts(groupOfMap(cl, g), node) })
}

// removeMember removes node from group g, retrying while the group is
// busy, until the map shows it gone, or (floor > 0) the group down to
// floor voters and no learner without it (the balancer removed another
// member meanwhile: removing this one too would leave the group short).
func (n *membershipNemesis) removeMember(ctx context.Context, c *Cluster, rng *rand.Rand, g uint64, node string, skip, floor int) (string, error) {
	return n.retry(ctx, c, rng, skip, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d/members/%s", g, node), nil,
		func(cl api.Cluster) bool {
			grp := groupOfMap(cl, g)
			return !hosts(grp, node) || (floor > 0 && len(grp.Members) <= floor && len(grp.Learners) == 0)
		})
}

// waitVoter waits until node is a voter of group g, asking for it again
// if the map shows it holds no replica of g (an add lost with a crash).
func (n *membershipNemesis) waitVoter(ctx context.Context, c *Cluster, rng *rand.Rand, g uint64, node string, skip int) error {
	wctx, cancel := context.WithTimeout(ctx, membershipWait)
	defer cancel()
	var cl api.Cluster
	for {
		m, err := c.anyMap(wctx)
		if err == nil {
			cl = m
			grp := groupOfMap(cl, g)
			if slices.Contains(grp.Members, node) {
				return nil
			}
			if !hosts(grp, node) {
				if _, err := n.addMember(wctx, c, rng, g, node, skip); err != nil {
					return err
				}
			}
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("%s is not a voter of group %d: %w (map: %s)", node, g, wctx.Err(), mapLine(cl))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// retry sends an admin call to a random running node other than skip
// until it is answered 200 or 202, or done says the map already shows
// its effect (made by an earlier try whose answer was lost, or by the
// balancer). A 409 (another change to the group under way), a 404 (the
// map moved under the call), a 5xx (a 504 when the node it was forwarded
// to died: outcome unknown) or no answer is tried again, after a look at
// the map. It returns the last answer.
func (n *membershipNemesis) retry(ctx context.Context, c *Cluster, rng *rand.Rand, skip int, method, path string, body any, done func(api.Cluster) bool) (string, error) {
	wctx, cancel := context.WithTimeout(ctx, membershipWait)
	defer cancel()
	tries, last := 0, ""
	for {
		if cl, err := c.anyMap(wctx); err == nil && done(cl) {
			if tries == 0 {
				return "none needed (the map showed it done)", nil
			}
			return fmt.Sprintf("done, as the map shows, after %d tries (last: %s)", tries, last), nil
		}
		if i := c.randomRunning(rng, skip); i >= 0 {
			tries++
			cctx, ccancel := context.WithTimeout(wctx, 20*time.Second)
			status, b, err := c.Call(cctx, i, method, path, body)
			ccancel()
			switch {
			case err != nil:
				last = err.Error()
			case status == http.StatusOK || status == http.StatusAccepted:
				var ch struct{ State string }
				json.Unmarshal(b, &ch)
				if tries > 1 {
					return fmt.Sprintf("%d %s at try %d (before: %s)", status, ch.State, tries, last), nil
				}
				return fmt.Sprintf("%d %s", status, ch.State), nil
			case status == http.StatusConflict || status == http.StatusNotFound || status >= 500:
				last = fmt.Sprintf("%d %s", status, strings.TrimSpace(string(b)))
			default:
				return fmt.Sprintf("%d %s", status, b), fmt.Errorf("%s %s on %s: %d %s", method, path, c.Nodes[i].ID, status, b)
			}
		}
		select {
		case <-wctx.Done():
			return last, fmt.Errorf("%s %s: not carried out within %v (%d tries): %s", method, path, membershipWait, tries, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// waitReplicated waits until every node runs and is active in the map,
// the map holds no other node, and every group has the replication
// factor's voters, all of them nodes of the cluster, and no learner.
func (n *membershipNemesis) waitReplicated(ctx context.Context, c *Cluster) error {
	wctx, cancel := context.WithTimeout(ctx, membershipWait)
	defer cancel()
	cl, err := c.WaitMap(wctx, func(cl api.Cluster) error {
		for _, node := range c.Nodes {
			if !node.Running() {
				return fmt.Errorf("%s is not running", node.ID)
			}
			if st := nodeIn(cl, node.ID); st == nil || (st.State != "" && st.State != "active") {
				return fmt.Errorf("%s is not active in the map", node.ID)
			}
		}
		for _, node := range cl.Nodes {
			if c.NodeIndex(node.ID) < 0 {
				return fmt.Errorf("the map still holds %s", node.ID)
			}
		}
		for _, g := range cl.Groups {
			if len(g.Members) != c.Spec.Replicas || len(g.Learners) > 0 {
				return fmt.Errorf("group %d has voters %v and learners %v", g.ID, g.Members, g.Learners)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("not fully replicated again: %w (map: %s)", err, mapLine(cl))
	}
	return nil
}

// anyMap returns the cluster map of a running node, waiting 10 s at most
// for one to answer.
func (c *Cluster) anyMap(ctx context.Context) (api.Cluster, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.WaitMap(ctx, func(api.Cluster) error { return nil })
}

// randomRunning returns a random running node other than skip, or -1.
func (c *Cluster) randomRunning(rng *rand.Rand, skip int) int {
	for _, i := range rng.Perm(c.Size()) {
		if i != skip && c.Nodes[i].Running() {
			return i
		}
	}
	return -1
}

// hosts says whether node holds a replica of g, voting or learning.
func hosts(g api.Group, node string) bool {
	return slices.Contains(g.Members, node) || slices.Contains(g.Learners, node)
}

// groupOfMap returns group g of cl, empty if it has none.
func groupOfMap(cl api.Cluster, g uint64) api.Group {
	for _, grp := range cl.Groups {
		if grp.ID == g {
			return grp
		}
	}
	return api.Group{ID: g}
}

// nodeIn returns node id of cl, or nil.
func nodeIn(cl api.Cluster, id string) *api.Node {
	for i := range cl.Nodes {
		if cl.Nodes[i].ID == id {
			return &cl.Nodes[i]
		}
	}
	return nil
}

// mapLine renders a map's nodes and groups on one line, for errors.
func mapLine(cl api.Cluster) string {
	var b strings.Builder
	fmt.Fprintf(&b, "epoch %d;", cl.Epoch)
	for _, node := range cl.Nodes {
		fmt.Fprintf(&b, " %s(%s)", node.ID, node.State)
	}
	for _, g := range cl.Groups {
		fmt.Fprintf(&b, "; group %d voters %v learners %v leader %q", g.ID, g.Members, g.Learners, g.Leader)
	}
	return b.String()
}
