package server

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// The leader of the system group keeps the cluster's replicas where they
// should be (reconcileCluster), one change at a time in the whole
// cluster, each a map edit that the groups' leaders then carry out:
//
//   - a joining node that answers is marked active;
//   - with ReplaceDeadAfter set, an active node unreachable that long is
//     marked leaving, if another node can take its replicas;
//   - a group with more replicas than it should have loses one: on a
//     leaving node first, then on a node that cannot be reached, then on
//     the most loaded node;
//   - a leaving node's replica moves to the least loaded node that can
//     take it (added there first, removed from the leaving node after),
//     or, when none can, is removed if the group keeps a majority; a
//     leaving node that holds nothing more is removed from the map;
//   - a group short of replicas gets one on the least loaded node;
//   - with BalanceReplicas, while one node holds two replicas more than
//     another, a replica moves to the less loaded one;
//   - last, preferred leaders (each group's first member) are spread
//     over the nodes.

// learnerGiveUp is how long a learner's node may not answer before the
// replica being added there is dropped, so that its group can change again.
const learnerGiveUp = 30 * time.Second

// probe is what a round of status requests found.
type probe struct {
	at time.Time
	// live holds the nodes that answered within liveWindow: one slow
	// answer under load does not make a node look dead.
	live map[string]bool
	// status holds this round's answers.
	status map[string]api.Status
}

// liveWindow is how long after its last answer a node counts as live.
const liveWindow = 3 * time.Second

// sighting is what this node saw of another's answers.
type sighting struct {
	// watched is when this node first asked; answered when it last got
	// an answer (zero: never).
	watched, answered time.Time
}

// probeNodes asks every node of m for its status, at once, and notes
// what the answers say: who answers (seen), whose disk refuses writes
// (peerDisks), who holds a newer map (which this node then fetches). Every
// node does so every second; the system group's leader places
// replicas from the last round, and checks an operator's change against a
// round of its own.
func (s *Server) probeNodes(ctx context.Context, m *kvd.Map) probe {
	p := probe{at: time.Now(), live: map[string]bool{}, status: map[string]api.Status{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range m.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.peerStatus(ctx, n.ID)
			if err != nil || st.Node != n.ID {
				return
			}
			if n.ID != s.id {
				if st.Storage != nil {
					s.peerDisks.set(n.ID, !st.Storage.Writable)
				}
				s.gossipMap(ctx, n.ID, st.Epoch)
			}
			mu.Lock()
			defer mu.Unlock()
			p.status[n.ID] = st
		}()
	}
	wg.Wait()
	now := time.Now()
	s.seenMu.Lock()
	for _, n := range m.Nodes {
		sg, ok := s.seen[n.ID]
		if !ok {
			sg = &sighting{watched: now}
			s.seen[n.ID] = sg
		}
		if _, ok := p.status[n.ID]; ok {
			sg.answered = now
		}
		p.live[n.ID] = !sg.answered.IsZero() && now.Sub(sg.answered) < liveWindow
	}
	s.seenMu.Unlock()
	s.lastProbe.Store(&p)
	return p
}

// deadFor returns how long node has not answered: since its last answer,
// or since this node first asked if it never answered.
func (s *Server) deadFor(node string) time.Duration {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	sg, ok := s.seen[node]
	switch {
	case !ok:
		return 0
	case sg.answered.IsZero():
		return time.Since(sg.watched)
	}
	return time.Since(sg.answered)
}

// changing reports whether a change to grp is under way: a learner still
// catching up, or a Raft configuration (as its leader reports it) that
// differs from the map's replicas.
func changing(grp kvd.Group, p probe) bool {
	if len(grp.Learners) > 0 {
		return true
	}
	for _, st := range p.status {
		gs, ok := groupStatusOf(st, grp.ID)
		if !ok || gs.Role != "leader" {
			continue
		}
		want := append(append([]string(nil), grp.Members...), grp.Learners...)
		have := append([]string(nil), gs.Members...)
		sort.Strings(want)
		sort.Strings(have)
		return !slices.Equal(want, have)
	}
	return false
}

// reconcileCluster makes the next change toward the placement the cluster
// should have; only the system group's leader calls it.
func (s *Server) reconcileCluster(ctx context.Context) {
	m := s.Map()
	var p probe
	if last := s.lastProbe.Load(); last != nil && time.Since(last.at) < 2*time.Second {
		p = *last
	} else {
		p = s.probeNodes(ctx, m)
	}
	for _, n := range m.Nodes {
		if n.StateName() == kvd.NodeJoining && p.live[n.ID] {
			s.tryEdit(ctx, mapEdit{Op: editActivate, Node: kvd.Node{ID: n.ID}})
			return
		}
	}
	for _, grp := range m.Groups {
		for _, l := range grp.Learners {
			if !p.live[l] && s.deadFor(l) > learnerGiveUp {
				s.log.Warn("a learner's node has not answered for too long; the replica is dropped", "group", grp.ID, "node", l)
				s.tryEdit(ctx, mapEdit{Op: editRemoveReplica, Group: grp.ID, Node: kvd.Node{ID: l}})
				return
			}
		}
	}
	for _, grp := range m.Groups {
		if changing(grp, p) {
			return // one change at a time
		}
	}
	if e, ok := s.nextPlacementChange(m, p); ok {
		s.tryEdit(ctx, e)
	}
}

// tryEdit makes e, logging a failure (the next round tries again).
func (s *Server) tryEdit(ctx context.Context, e mapEdit) {
	if _, err := s.editMap(ctx, e); err != nil {
		s.log.Warn("placement change failed; it is tried again", "change", e.String(), "err", err)
	}
}

// nextPlacementChange chooses the next change (see the list above).
func (s *Server) nextPlacementChange(m *kvd.Map, p probe) (mapEdit, bool) {
	load := m.Load()
	usable := s.canTake(m, p)
	if after := s.cfg.ReplaceDeadAfter; after > 0 {
		for _, n := range m.Nodes {
			if n.StateName() == kvd.NodeActive && !p.live[n.ID] && s.deadFor(n.ID) >= after && load[n.ID] > 0 && s.canTakeAll(m, n.ID, usable) {
				s.log.Warn("node unreachable for too long; replacing its replicas", "node", n.ID, "unreachable_for", s.deadFor(n.ID).Round(time.Second).String())
				return mapEdit{Op: editLeave, Node: kvd.Node{ID: n.ID}}, true
			}
		}
	}
	leaving := func(id string) bool { n, _ := m.Node(id); return n.State == kvd.NodeLeaving }
	for _, grp := range m.Groups {
		if len(grp.Members) > m.Target(grp) {
			if victim, ok := removalCandidate(m, grp, p, load, leaving); ok {
				return mapEdit{Op: editRemoveReplica, Group: grp.ID, Node: kvd.Node{ID: victim}}, true
			}
		}
	}
	for _, n := range m.Nodes {
		if n.State != kvd.NodeLeaving {
			continue
		}
		hosted := m.GroupsOf(n.ID)
		if len(hosted) == 0 {
			return mapEdit{Op: editDropNode, Node: kvd.Node{ID: n.ID}}, true
		}
		grp, _ := m.Group(hosted[0])
		if to, ok := leastLoaded(m, grp, load, usable); ok {
			return mapEdit{Op: editAddLearner, Group: grp.ID, Node: kvd.Node{ID: to}}, true
		}
		if len(grp.Members) > 1 && keepsMajority(grp, n.ID, p.live) {
			return mapEdit{Op: editRemoveReplica, Group: grp.ID, Node: kvd.Node{ID: n.ID}}, true
		}
	}
	for _, grp := range m.Groups {
		if len(grp.Members) < m.Target(grp) {
			if to, ok := leastLoaded(m, grp, load, usable); ok {
				return mapEdit{Op: editAddLearner, Group: grp.ID, Node: kvd.Node{ID: to}}, true
			}
		}
	}
	if s.cfg.BalanceReplicas {
		if e, ok := balanceMove(m, load, usable); ok {
			return e, true
		}
	}
	return spreadLeaders(m, p)
}

// canTake returns whether a node may take a new replica: it is active,
// answers, and its disk takes writes.
func (s *Server) canTake(m *kvd.Map, p probe) func(id string) bool {
	return func(id string) bool {
		n, _ := m.Node(id)
		return n.StateName() == kvd.NodeActive && p.live[id] && !s.peerDisks.isLow(id)
	}
}

// canTakeAll reports whether every group node hosts has another usable
// node to move to.
func (s *Server) canTakeAll(m *kvd.Map, node string, usable func(string) bool) bool {
	for _, gid := range m.GroupsOf(node) {
		grp, _ := m.Group(gid)
		if _, ok := leastLoaded(m, grp, m.Load(), usable); !ok {
			return false
		}
	}
	return true
}

// removalCandidate chooses which replica of an over-replicated group to
// remove: one on a leaving node, else on an unreachable node, else on the
// most loaded node (not the leader if it can be helped); never one whose
// removal would leave the group without a majority of live voters.
func removalCandidate(m *kvd.Map, grp kvd.Group, p probe, load map[string]int, leaving func(string) bool) (string, bool) {
	leader := ""
	for _, st := range p.status {
		if gs, ok := groupStatusOf(st, grp.ID); ok && gs.Role == "leader" {
			leader = st.Node
		}
	}
	rank := func(id string) int {
		switch {
		case leaving(id):
			return 3
		case !p.live[id]:
			return 2
		}
		return 1
	}
	cands := slices.Clone(grp.Members)
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if rank(a) != rank(b) {
			return rank(a) > rank(b)
		}
		if load[a] != load[b] {
			return load[a] > load[b]
		}
		if (a == leader) != (b == leader) {
			return b == leader
		}
		return a > b
	})
	for _, c := range cands {
		if keepsMajority(grp, c, p.live) {
			return c, true
		}
	}
	return "", false
}

// keepsMajority reports whether grp without node still has a majority of
// live voters (and at least one).
func keepsMajority(grp kvd.Group, node string, live map[string]bool) bool {
	n, up := 0, 0
	for _, id := range grp.Members {
		if id == node {
			continue
		}
		n++
		if live[id] {
			up++
		}
	}
	return n > 0 && up > n/2
}

// leastLoaded returns the usable node with the fewest replicas that does
// not host grp (ties: the lowest id).
func leastLoaded(m *kvd.Map, grp kvd.Group, load map[string]int, usable func(string) bool) (string, bool) {
	best := ""
	for _, n := range m.Nodes {
		if grp.Hosts(n.ID) || !usable(n.ID) {
			continue
		}
		if best == "" || load[n.ID] < load[best] || load[n.ID] == load[best] && n.ID < best {
			best = n.ID
		}
	}
	return best, best != ""
}

// balanceMove adds a replica on the least loaded usable node when the
// most loaded node holds two more; the group is then over-replicated and
// loses its replica on the most loaded node (see removalCandidate).
func balanceMove(m *kvd.Map, load map[string]int, usable func(string) bool) (mapEdit, bool) {
	lo, hi := "", ""
	for _, n := range m.Nodes {
		if usable(n.ID) && (lo == "" || load[n.ID] < load[lo]) {
			lo = n.ID
		}
		if n.State != kvd.NodeLeaving && (hi == "" || load[n.ID] > load[hi]) {
			hi = n.ID
		}
	}
	if lo == "" || hi == "" || load[hi]-load[lo] < 2 {
		return mapEdit{}, false
	}
	for _, grp := range m.Groups {
		if grp.IsMember(hi) && !grp.Hosts(lo) {
			return mapEdit{Op: editAddLearner, Group: grp.ID, Node: kvd.Node{ID: lo}}, true
		}
	}
	return mapEdit{}, false
}

// spreadLeaders makes a live node the preferred leader of a group it is a
// member of, when it is preferred for two groups fewer than another node.
func spreadLeaders(m *kvd.Map, p probe) (mapEdit, bool) {
	pref := map[string]int{}
	for _, grp := range m.Groups {
		pref[grp.Members[0]]++
	}
	takes := func(id string) bool { n, _ := m.Node(id); return p.live[id] && n.State != kvd.NodeLeaving }
	for _, grp := range m.Groups {
		cur := grp.Members[0]
		for _, id := range grp.Members[1:] {
			if takes(id) && pref[cur]-pref[id] >= 2 {
				return mapEdit{Op: editReorder, Group: grp.ID, Node: kvd.Node{ID: id}}, true
			}
		}
	}
	return mapEdit{}, false
}
