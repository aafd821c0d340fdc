package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// The cluster map changes in one place: the log of the system group (the
// lowest-numbered one). A change is a compare-and-set on the map's epoch
// (store.CmdChangeMap), made by the system group's leader; other nodes
// send it their edits (POST /v1/internal/mapedit). The new map then
// spreads: nodes learn it from the system group's replicas and from each
// other (learnMap, gossipMap), and every group's leader stores it in its
// own group's log (propagateMap), where that group's reconciler acts on
// it (see replicas.go).

// Map edit operations.
const (
	editAddNode       = "add-node"       // add Node, joining
	editActivate      = "activate"       // a joining node was seen up
	editLeave         = "leave"          // decommission Node: move its replicas off
	editDropNode      = "drop-node"      // remove Node, which holds no replica
	editAddLearner    = "add-learner"    // add Node to Group as a learner
	editPromote       = "promote"        // Node, a learner of Group, becomes a member
	editRemoveReplica = "remove-replica" // remove Node's replica of Group
	editReorder       = "reorder"        // Node becomes Group's preferred leader
)

// mapEdit is one change to the cluster map.
type mapEdit struct {
	Op    string      `json:"op"`
	Group kvd.GroupID `json:"group,omitempty"`
	Node  kvd.Node    `json:"node"`
	// Operator marks a change an operator asked for: adding or removing
	// a replica then sets the group's replica count to its new size, so
	// that the cluster keeps it there.
	Operator bool `json:"operator,omitempty"`
	// Members are a new group's (create-group).
	Members []string `json:"members,omitempty"`
	// Moves are the moves to record (start-moves).
	Moves []kvd.Move `json:"moves,omitempty"`
	// Step is a move's next step (move-step).
	Step *moveStep `json:"step,omitempty"`
	// Restore is the restore a restore edit concerns; Displace, with
	// restore-begin, names a staging restore its node no longer drives,
	// which the new one replaces.
	Restore  *kvd.Restore `json:"restore,omitempty"`
	Displace string       `json:"displace,omitempty"`
	// Abort, with restore-end, forgets a restore only if it is still
	// staging: a loading one must finish.
	Abort bool `json:"abort,omitempty"`
}

// errNoChange reports an edit that the map already reflects.
var errNoChange = errors.New("the map already reflects the change")

func (e mapEdit) String() string {
	switch {
	case e.Step != nil:
		return fmt.Sprintf("%s %s (attempt %d%s%s)", e.Op, e.Step.ID, e.Step.Attempt, map[bool]string{true: ", claim"}[e.Step.Claim]+map[bool]string{true: ", flip"}[e.Step.Flip], map[bool]string{true: ", " + e.Step.State}[e.Step.State != ""])
	case e.Restore != nil:
		return fmt.Sprintf("%s %s", e.Op, e.Restore.ID)
	case e.Op == editStartMoves:
		return fmt.Sprintf("%s (%d)", e.Op, len(e.Moves))
	case e.Op == editCreateGroup || e.Op == editDeleteGroup || e.Op == editGroupReady:
		return fmt.Sprintf("%s %d", e.Op, e.Group)
	}
	if e.Group != 0 {
		return fmt.Sprintf("%s %s in group %d", e.Op, e.Node.ID, e.Group)
	}
	return fmt.Sprintf("%s %s", e.Op, e.Node.ID)
}

// apply makes the edit on m, or refuses it (kvd.ErrConflict,
// kvd.ErrNotFound, kvd.ErrInvalid), or reports errNoChange.
func (e mapEdit) apply(m *kvd.Map) error {
	if handled, err := e.applyGroupEdit(m); handled {
		return err
	}
	if handled, err := e.applyRestoreEdit(m); handled {
		return err
	}
	switch e.Op {
	case editAddNode, editActivate, editLeave, editDropNode, editAddLearner, editPromote, editRemoveReplica, editReorder:
	default:
		return fmt.Errorf("%w: unknown map edit %q", kvd.ErrInvalid, e.Op)
	}
	id := e.Node.ID
	ni := slices.IndexFunc(m.Nodes, func(n kvd.Node) bool { return n.ID == id })
	if e.Op == editAddNode {
		if err := checkNodeRequest(api.NodeRequest{ID: id, HTTP: e.Node.HTTP, Raft: e.Node.Raft}); err != nil {
			return err
		}
		return addNode(m, e.Node, ni)
	}
	if ni < 0 {
		return fmt.Errorf("node %q is not in the cluster: %w", id, kvd.ErrNotFound)
	}
	node := &m.Nodes[ni]
	switch e.Op {
	case editActivate:
		if node.StateName() != kvd.NodeJoining {
			return errNoChange
		}
		node.State = kvd.NodeActive
		return nil
	case editLeave:
		if node.State == kvd.NodeLeaving {
			return errNoChange
		}
		node.State = kvd.NodeLeaving
		return nil
	case editDropNode:
		if g := m.GroupsOf(id); len(g) > 0 {
			return fmt.Errorf("node %s still holds replicas of groups %v: %w", id, g, kvd.ErrConflict)
		}
		m.Nodes = slices.Delete(m.Nodes, ni, ni+1)
		return nil
	}
	gi := slices.IndexFunc(m.Groups, func(g kvd.Group) bool { return g.ID == e.Group })
	if gi < 0 {
		return fmt.Errorf("group %d is not in the cluster: %w", e.Group, kvd.ErrNotFound)
	}
	grp := &m.Groups[gi]
	switch e.Op {
	case editAddLearner:
		switch {
		case grp.Hosts(id):
			return fmt.Errorf("node %s already holds a replica of group %d: %w", id, grp.ID, kvd.ErrConflict)
		case len(grp.Learners) > 0:
			return fmt.Errorf("group %d is still adding a replica on %v: one change at a time: %w", grp.ID, grp.Learners, kvd.ErrConflict)
		case node.State == kvd.NodeLeaving:
			return fmt.Errorf("node %s is leaving the cluster: %w", id, kvd.ErrConflict)
		}
		if e.Operator {
			grp.Replicas = len(grp.Members) + 1
		}
		grp.Learners = append(grp.Learners, id)
	case editPromote:
		if grp.IsMember(id) {
			return errNoChange
		}
		li := slices.Index(grp.Learners, id)
		if li < 0 {
			return fmt.Errorf("node %s is not a learner of group %d: %w", id, grp.ID, kvd.ErrConflict)
		}
		grp.Learners = slices.Delete(grp.Learners, li, li+1)
		grp.Members = append(grp.Members, id)
	case editRemoveReplica:
		if li := slices.Index(grp.Learners, id); li >= 0 {
			grp.Learners = slices.Delete(grp.Learners, li, li+1)
			return nil
		}
		mi := slices.Index(grp.Members, id)
		if mi < 0 {
			return errNoChange
		}
		if len(grp.Members) == 1 {
			return fmt.Errorf("node %s holds the only voting replica of group %d: %w", id, grp.ID, kvd.ErrConflict)
		}
		grp.Members = slices.Delete(grp.Members, mi, mi+1)
		if e.Operator {
			grp.Replicas = len(grp.Members)
		}
	case editReorder:
		mi := slices.Index(grp.Members, id)
		if mi < 0 {
			return fmt.Errorf("node %s is not a member of group %d: %w", id, grp.ID, kvd.ErrConflict)
		}
		if mi == 0 {
			return errNoChange
		}
		grp.Members = append([]string{id}, slices.Delete(grp.Members, mi, mi+1)...)
	}
	return nil
}

// addNode adds n to m (ni is its index if the id is taken): a repeat of
// the same addition changes nothing, an id or address in use by another
// node is refused.
func addNode(m *kvd.Map, n kvd.Node, ni int) error {
	if ni >= 0 {
		old := m.Nodes[ni]
		if old.HTTP == n.HTTP && old.Raft == n.Raft {
			return errNoChange
		}
		return fmt.Errorf("node id %q is taken (http %s, raft %s): %w", n.ID, old.HTTP, old.Raft, kvd.ErrConflict)
	}
	for _, o := range m.Nodes {
		if o.HTTP == n.HTTP || o.Raft == n.Raft || o.HTTP == n.Raft || o.Raft == n.HTTP {
			return fmt.Errorf("an address of node %s is taken by node %s: %w", n.ID, o.ID, kvd.ErrConflict)
		}
	}
	n.State = kvd.NodeJoining
	m.Nodes = append(m.Nodes, n)
	return nil
}

// editMap makes e on the cluster map through the system group's leader
// (this node, or the one it forwards to) and returns the map after it.
// While the system group has no leader (an election, a leadership
// transfer), it waits for one, within ctx: such a failure promises that
// nothing was proposed.
func (s *Server) editMap(ctx context.Context, e mapEdit) (*kvd.Map, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, editMapWait)
		defer cancel()
	}
	for attempt := 0; ; attempt++ {
		m, err := s.editMapOnce(ctx, e)
		if err == nil || !errors.Is(err, kvd.ErrNotLeader) && !errors.Is(err, kvd.ErrUnavailable) || errors.Is(err, kvd.ErrUnknownOutcome) {
			return m, err
		}
		if leaderBackoff.Wait(ctx, attempt) != nil {
			return nil, err
		}
	}
}

// editMapWait bounds editMap for a caller without a deadline.
const editMapWait = 10 * time.Second

// editMapOnce makes e through the system group's leader it knows of.
func (s *Server) editMapOnce(ctx context.Context, e mapEdit) (*kvd.Map, error) {
	sys := s.Map().SystemGroup()
	if g, ok := s.hosted()[sys]; ok && g.IsLeader() {
		return s.changeMap(ctx, g, e)
	}
	leader := s.leaderOf(ctx, sys)
	if leader == "" || leader == s.id {
		return nil, fmt.Errorf("change the cluster map: group %d has no leader: %w", sys, kvd.ErrUnavailable)
	}
	body, _ := json.Marshal(e)
	out, err := s.call(ctx, peerCall{op: "change the map at", method: http.MethodPost, node: leader, path: "/v1/internal/mapedit", body: body, group: sys, write: true, keepCodes: true})
	if err != nil {
		return nil, err
	}
	m := new(kvd.Map)
	if err := json.Unmarshal(out, m); err != nil {
		return nil, fmt.Errorf("change the map at %s: decode: %v: %w", leader, err, kvd.ErrUnknownOutcome)
	}
	s.learnMap(m)
	return m, nil
}

// EditMap makes an edit sent by another node (POST /v1/internal/mapedit);
// this node must lead the system group.
func (s *Server) EditMap(ctx context.Context, body []byte) ([]byte, error) {
	var e mapEdit
	if err := json.Unmarshal(body, &e); err != nil {
		return nil, fmt.Errorf("%w: map edit: %v", kvd.ErrInvalid, err)
	}
	g, err := s.replica(s.Map().SystemGroup())
	if err != nil {
		return nil, &kvd.NotLeaderError{Group: s.Map().SystemGroup(), Leader: s.leaderOf(ctx, s.Map().SystemGroup())}
	}
	m, err := s.changeMap(ctx, g, e)
	if err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// changeMap makes e on the map stored in g, the system group, which this
// node leads: it reads the stored map linearizably, edits a copy and
// proposes it as a compare-and-set on the epoch, again if another change
// won the race.
func (s *Server) changeMap(ctx context.Context, g *replication.Group, e mapEdit) (*kvd.Map, error) {
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	for attempt := 0; ; attempt++ {
		if err := g.ReadBarrier(ctx, kvd.Linearizable); err != nil {
			return nil, fmt.Errorf("change the cluster map: %w", err)
		}
		cur := g.Store().Map()
		if cur == nil {
			cur = s.seed // the leader stores it right after its election
		}
		next := cur.Clone()
		err := e.apply(next)
		if errors.Is(err, errNoChange) {
			return cur, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e, err)
		}
		next.Epoch = cur.Epoch + 1
		if err := next.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w: %v", e, kvd.ErrInvalid, err)
		}
		data, _ := json.Marshal(store.MapChange{Expect: cur.Epoch, Map: next})
		res, err := g.Propose(ctx, store.Cmd{Kind: store.CmdChangeMap, Data: data})
		if err == nil {
			err = res.Err
		}
		if errors.Is(err, kvd.ErrConflict) && attempt < 5 && ctx.Err() == nil {
			continue // the stored map moved (or was not stored yet): again
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e, err)
		}
		s.log.Info("cluster map changed", "change", e.String(), "epoch", next.Epoch)
		s.metrics.mapChanges.WithLabelValues(e.Op).Inc()
		s.events.record("map", e.Group, "map epoch %d: %s", next.Epoch, e.String())
		s.learnMap(next)
		return next, nil
	}
}

// learnMap adopts m as this node's map if it is newer than any it knows,
// and remembers it in node.json, so that a restarted node that no longer
// holds a replica of the newest map's groups still starts from it.
func (s *Server) learnMap(m *kvd.Map) {
	if m == nil {
		return
	}
	s.learnMu.Lock()
	defer s.learnMu.Unlock()
	if cur := s.learned.Load(); cur != nil && cur.Epoch >= m.Epoch || m.Validate() != nil {
		return
	}
	s.learned.Store(m)
	if s.nodeFile != nil && !s.cfg.Embedded {
		nf := *s.nodeFile
		nf.Latest = m
		if err := writeNodeFile(s.cfg.DataDir, &nf); err != nil {
			s.log.Warn("remember the cluster map", "epoch", m.Epoch, "err", err)
		}
	}
	kick(s.membershipKick)
}

// gossipMap fetches the map from a peer whose status shows a newer epoch.
func (s *Server) gossipMap(ctx context.Context, peer string, epoch uint64) {
	if epoch <= s.Map().Epoch {
		return
	}
	m := new(kvd.Map)
	if err := s.peerGet(ctx, peer, "/v1/internal/map", nil, m); err != nil {
		s.log.Debug("fetch the cluster map", "from", peer, "err", err)
		return
	}
	s.learnMap(m)
}

// InternalMap returns this node's cluster map (node to node).
func (s *Server) InternalMap(ctx context.Context) (*kvd.Map, error) { return s.Map(), nil }

// propagateMap stores this node's map in every group it leads whose
// stored map is older, so that each group's replicas (and its
// reconciler) follow the change.
func (s *Server) propagateMap(ctx context.Context) {
	m := s.Map()
	for gid, g := range s.hosted() {
		if !g.IsLeader() {
			continue
		}
		if cur := g.Store().Map(); cur != nil && cur.Epoch >= m.Epoch {
			continue
		}
		data, err := json.Marshal(m)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := g.Propose(pctx, store.Cmd{Kind: store.CmdSetMap, Data: data}); err != nil {
			s.log.Debug("store the cluster map", "group", gid, "epoch", m.Epoch, "err", err)
		}
		cancel()
	}
}

// kick wakes a loop waiting on ch without blocking.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// clusterOf converts a map for the API.
func clusterOf(m *kvd.Map) api.Cluster {
	c := api.Cluster{Epoch: m.Epoch, Replicas: m.ReplicationFactor()}
	for _, n := range m.Nodes {
		c.Nodes = append(c.Nodes, api.Node{ID: n.ID, HTTP: n.HTTP, Raft: n.Raft, State: n.StateName()})
	}
	for _, grp := range m.Groups {
		ag := api.Group{ID: uint64(grp.ID), Members: grp.Members, Learners: append([]string{}, grp.Learners...), Slots: [][2]int{}}
		for _, r := range grp.Slots {
			ag.Slots = append(ag.Slots, [2]int{r[0], r[1]})
		}
		c.Groups = append(c.Groups, ag)
	}
	for _, mv := range m.ActiveMoves() {
		c.Moves = append(c.Moves, moveInfo(mv))
	}
	if r := m.Restore; r != nil {
		c.Restore = &api.RestoreInfo{ID: r.ID, Node: r.Node, State: r.State, Force: r.Force, Started: r.Started}
	}
	return c
}
