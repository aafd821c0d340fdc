package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// The operations API: membership changes an operator asks for. Each is
// checked here against the map and the nodes' liveness, then made as a map
// edit on the system group's leader (which any node forwards to); the
// groups' leaders carry it out (replicas.go). Each waits, within the
// request's deadline and at most wait, for the change to finish, and
// otherwise answers that it is in progress: it finishes on its own.

// nodeIDPattern is what a node id may be.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkNodeRequest validates a node to add.
func checkNodeRequest(r api.NodeRequest) error {
	if !nodeIDPattern.MatchString(r.ID) {
		return fmt.Errorf("%w: a node id is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", kvd.ErrInvalid)
	}
	for name, a := range map[string]string{"http": r.HTTP, "raft": r.Raft} {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return fmt.Errorf("%w: %s address %q is not host:port", kvd.ErrInvalid, name, a)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("%w: %s address %q has no valid port", kvd.ErrInvalid, name, a)
		}
	}
	if r.HTTP == r.Raft {
		return fmt.Errorf("%w: the http and raft addresses must differ", kvd.ErrInvalid)
	}
	return nil
}

// systemLeader returns nil if this node leads the system group, else a
// NotLeaderError naming its leader, so that the request is forwarded.
func (s *Server) systemLeader(ctx context.Context) error {
	sys := s.Map().SystemGroup()
	if g, ok := s.hosted()[sys]; ok && g.IsLeader() {
		return nil
	}
	return &kvd.NotLeaderError{Group: sys, Leader: s.leaderOf(ctx, sys)}
}

// AddNode adds a node to the map (joining: it holds no replica yet).
func (s *Server) AddNode(ctx context.Context, r api.NodeRequest) (api.NodeChange, error) {
	if err := checkNodeRequest(r); err != nil {
		return api.NodeChange{}, err
	}
	if err := s.systemLeader(ctx); err != nil {
		return api.NodeChange{}, err
	}
	m, err := s.editMap(ctx, mapEdit{Op: editAddNode, Node: kvd.Node{ID: r.ID, HTTP: r.HTTP, Raft: r.Raft}})
	if err != nil {
		return api.NodeChange{}, err
	}
	n, _ := m.Node(r.ID)
	return api.NodeChange{Node: apiNode(n), State: api.ChangeDone, Epoch: m.Epoch}, nil
}

func apiNode(n kvd.Node) api.Node {
	return api.Node{ID: n.ID, HTTP: n.HTTP, Raft: n.Raft, State: n.StateName()}
}

// Join registers a node that joins with --join (node to node: it proved
// it holds the cluster's secret) and answers the cluster's id and map.
func (s *Server) Join(ctx context.Context, body []byte) ([]byte, error) {
	var r api.NodeRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%w: join: %v", kvd.ErrInvalid, err)
	}
	if err := checkNodeRequest(r); err != nil {
		return nil, err
	}
	m, err := s.editMap(ctx, mapEdit{Op: editAddNode, Node: kvd.Node{ID: r.ID, HTTP: r.HTTP, Raft: r.Raft}})
	if err != nil {
		return nil, err
	}
	mb, _ := json.Marshal(m)
	return json.Marshal(api.JoinResponse{Cluster: s.clusterID, Map: mb})
}

// RemoveNode decommissions node id: it is marked leaving, its replicas
// move to other nodes, and it is removed from the map. Without force the
// node must answer, and every group it holds must have another node to
// move to; with force (a dead node) a group with nowhere to go shrinks,
// if it keeps a majority of live voters.
func (s *Server) RemoveNode(ctx context.Context, id string, force bool, wait time.Duration) (api.NodeChange, int, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.NodeChange{}, 0, err
	}
	m := s.Map()
	n, ok := m.Node(id)
	if !ok {
		return api.NodeChange{}, 0, fmt.Errorf("node %q is not in the cluster: %w", id, kvd.ErrNotFound)
	}
	p := s.probeNodes(ctx, m)
	if !force && !p.live[id] && len(m.GroupsOf(id)) > 0 {
		return api.NodeChange{}, 0, fmt.Errorf("node %s does not answer, so its replicas cannot be handed over by it; if it is dead, remove it with ?force=true (its replicas are rebuilt from the live ones): %w", id, kvd.ErrConflict)
	}
	take := s.canTake(m, p)
	usable := func(o string) bool { return o != id && take(o) }
	for _, gid := range m.GroupsOf(id) {
		grp, _ := m.Group(gid)
		if _, ok := leastLoaded(m, grp, m.Load(), usable); ok {
			continue
		}
		switch {
		case grp.IsMember(id) && len(grp.Members) == 1:
			return api.NodeChange{}, 0, fmt.Errorf("node %s holds the only replica of group %d, and no other node can take it: add a node first: %w", id, gid, kvd.ErrConflict)
		case !force:
			return api.NodeChange{}, 0, fmt.Errorf("no other node can take node %s's replica of group %d (every live node holds one): add a node first, or remove it with ?force=true to shrink the group to %d replicas: %w",
				id, gid, len(grp.Members)-1, kvd.ErrConflict)
		case !keepsMajority(grp, id, p.live):
			return api.NodeChange{}, 0, fmt.Errorf("removing node %s would leave group %d without a majority of live voters: %w", id, gid, kvd.ErrConflict)
		}
	}
	if n.State != kvd.NodeLeaving {
		if _, err := s.editMap(ctx, mapEdit{Op: editLeave, Node: kvd.Node{ID: id}}); err != nil {
			return api.NodeChange{}, 0, err
		}
		s.log.Info("node decommission started", "node", id, "force", force)
	}
	kick(s.membershipKick)
	done := s.waitFor(ctx, wait, func(m *kvd.Map) bool { _, ok := m.Node(id); return !ok })
	m = s.Map()
	out := api.NodeChange{Node: apiNode(n), State: api.ChangeDone, Epoch: m.Epoch}
	out.Node.State = kvd.NodeLeaving
	if !done {
		out.State = api.ChangeInProgress
		for _, gid := range m.GroupsOf(id) {
			out.Groups = append(out.Groups, uint64(gid))
		}
		out.Message = fmt.Sprintf("node %s is leaving: its replicas of groups %v are being moved; it is removed from the map once it holds none (see GET /v1/cluster)", id, out.Groups)
		return out, http.StatusAccepted, nil
	}
	return out, http.StatusOK, nil
}

// AddMember adds a replica of group gid on node: a learner that catches
// up, then a voter.
func (s *Server) AddMember(ctx context.Context, gid kvd.GroupID, node string, wait time.Duration) (api.MembershipChange, int, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.MembershipChange{}, 0, err
	}
	m := s.Map()
	grp, err := s.checkGroupChange(ctx, m, gid)
	if err != nil {
		return api.MembershipChange{}, 0, err
	}
	n, ok := m.Node(node)
	switch {
	case !ok:
		return api.MembershipChange{}, 0, fmt.Errorf("node %q is not in the cluster: %w", node, kvd.ErrNotFound)
	case n.State == kvd.NodeLeaving:
		return api.MembershipChange{}, 0, fmt.Errorf("node %s is leaving the cluster: %w", node, kvd.ErrConflict)
	case grp.Hosts(node):
		return api.MembershipChange{}, 0, fmt.Errorf("node %s already holds a replica of group %d: %w", node, gid, kvd.ErrConflict)
	case s.peerDisks.isLow(node):
		return api.MembershipChange{}, 0, fmt.Errorf("node %s's disk refuses writes: a new replica there could not take the group's snapshot and log: %w", node, kvd.ErrConflict)
	}
	if _, err := s.editMap(ctx, mapEdit{Op: editAddLearner, Group: gid, Node: kvd.Node{ID: node}, Operator: true}); err != nil {
		return api.MembershipChange{}, 0, err
	}
	done := s.waitFor(ctx, wait, func(m *kvd.Map) bool { g, _ := m.Group(gid); return g.IsMember(node) })
	return s.membershipAnswer(ctx, gid, node, done, "the new replica is catching up; it becomes a voter once it has")
}

// RemoveMember removes node's replica of group gid.
func (s *Server) RemoveMember(ctx context.Context, gid kvd.GroupID, node string, wait time.Duration) (api.MembershipChange, int, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.MembershipChange{}, 0, err
	}
	m := s.Map()
	grp, ok := m.Group(gid)
	if !ok {
		return api.MembershipChange{}, 0, fmt.Errorf("group %d is not in the cluster: %w", gid, kvd.ErrNotFound)
	}
	if !grp.Hosts(node) {
		return api.MembershipChange{}, 0, fmt.Errorf("node %q holds no replica of group %d: %w", node, gid, kvd.ErrNotFound)
	}
	if !slices.Contains(grp.Learners, node) {
		if _, err := s.checkGroupChange(ctx, m, gid); err != nil {
			return api.MembershipChange{}, 0, err
		}
		if len(grp.Members) == 1 {
			return api.MembershipChange{}, 0, fmt.Errorf("node %s holds the only voting replica of group %d: %w", node, gid, kvd.ErrConflict)
		}
		if p := s.probeNodes(ctx, m); !keepsMajority(grp, node, p.live) {
			return api.MembershipChange{}, 0, fmt.Errorf("removing node %s's replica would leave group %d without a majority of live voters (live: %v of %v): %w",
				node, gid, liveOf(grp.Members, p.live), grp.Members, kvd.ErrConflict)
		}
	}
	if _, err := s.editMap(ctx, mapEdit{Op: editRemoveReplica, Group: gid, Node: kvd.Node{ID: node}, Operator: true}); err != nil {
		return api.MembershipChange{}, 0, err
	}
	done := s.waitFor(ctx, wait, func(*kvd.Map) bool { return s.configLacks(ctx, gid, node) })
	return s.membershipAnswer(ctx, gid, node, done, "the replica no longer serves reads; it is being removed from the group's Raft configuration")
}

// TransferLeader hands group gid's leadership to node, on the group's
// leader (the request is forwarded there).
func (s *Server) TransferLeader(ctx context.Context, gid kvd.GroupID, node string) (api.MembershipChange, int, error) {
	grp, ok := s.Map().Group(gid)
	if !ok {
		return api.MembershipChange{}, 0, fmt.Errorf("group %d is not in the cluster: %w", gid, kvd.ErrNotFound)
	}
	if !grp.IsMember(node) {
		return api.MembershipChange{}, 0, fmt.Errorf("node %q is not a voting member of group %d: %w", node, gid, kvd.ErrConflict)
	}
	g, ok := s.hosted()[gid]
	if !ok || !g.IsLeader() {
		return api.MembershipChange{}, 0, &kvd.NotLeaderError{Group: gid, Leader: s.leaderOf(ctx, gid)}
	}
	if node != s.id {
		if err := g.TransferLeadershipTo(node); err != nil {
			return api.MembershipChange{}, 0, fmt.Errorf("%v: %w", err, kvd.ErrUnavailable)
		}
		s.log.Info("leadership transferred by the operator", "group", gid, "to", node)
	}
	// The node becomes the preferred leader too, or leader balancing
	// would hand the leadership back within seconds.
	if _, err := s.editMap(ctx, mapEdit{Op: editReorder, Group: gid, Node: kvd.Node{ID: node}}); err != nil {
		s.log.Warn("make the new leader the preferred one", "group", gid, "node", node, "err", err)
	}
	return s.membershipAnswer(ctx, gid, node, true, "")
}

// checkGroupChange refuses a change to group gid while another is under
// way (kvd.ErrConflict).
func (s *Server) checkGroupChange(ctx context.Context, m *kvd.Map, gid kvd.GroupID) (kvd.Group, error) {
	grp, ok := m.Group(gid)
	if !ok {
		return grp, fmt.Errorf("group %d is not in the cluster: %w", gid, kvd.ErrNotFound)
	}
	if len(grp.Learners) > 0 {
		return grp, fmt.Errorf("group %d is still adding a replica on %v: one change at a time: %w", gid, grp.Learners, kvd.ErrConflict)
	}
	if p := s.probeNodes(ctx, m); changing(grp, p) {
		return grp, fmt.Errorf("group %d is still carrying out its last change (its Raft configuration differs from the map): one change at a time: %w", gid, kvd.ErrConflict)
	}
	return grp, nil
}

// configLacks reports whether group gid's leader reports a Raft
// configuration without node.
func (s *Server) configLacks(ctx context.Context, gid kvd.GroupID, node string) bool {
	leader := s.leaderOf(ctx, gid)
	if leader == "" {
		return false
	}
	st, err := s.peerStatus(ctx, leader)
	if err != nil {
		return false
	}
	gs, ok := groupStatusOf(st, gid)
	return ok && gs.Role == "leader" && !slices.Contains(gs.Members, node)
}

// waitFor waits, at most wait and within ctx, until done holds for this
// node's map.
func (s *Server) waitFor(ctx context.Context, wait time.Duration, done func(*kvd.Map) bool) bool {
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Add(-500*time.Millisecond).Before(deadline) {
		deadline = d.Add(-500 * time.Millisecond)
	}
	for {
		if done(s.Map()) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// membershipAnswer describes group gid after a change concerning node.
func (s *Server) membershipAnswer(ctx context.Context, gid kvd.GroupID, node string, done bool, pending string) (api.MembershipChange, int, error) {
	m := s.Map()
	grp, _ := m.Group(gid)
	out := api.MembershipChange{Group: uint64(gid), Node: node, State: api.ChangeDone, Epoch: m.Epoch,
		Members: grp.Members, Learners: append([]string{}, grp.Learners...), Leader: s.leaderOf(ctx, gid)}
	if !done {
		out.State, out.Message = api.ChangeInProgress, pending+" (see GET /v1/cluster)"
		return out, http.StatusAccepted, nil
	}
	return out, http.StatusOK, nil
}

func liveOf(ids []string, live map[string]bool) []string {
	var out []string
	for _, id := range ids {
		if live[id] {
			out = append(out, id)
		}
	}
	return out
}
