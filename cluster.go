package kvd

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
)

// GroupID names a shard group. Groups are numbered from 1.
type GroupID uint64

// Node is one kvd process as peers and clients see it.
type Node struct {
	// ID is the node's unique name, e.g. "n1".
	ID string `json:"id"`
	// HTTP is the advertised host:port of the node's HTTP API.
	HTTP string `json:"http"`
	// Raft is the advertised host:port of the node's Raft transport.
	Raft string `json:"raft"`
	// State is the node's place in the cluster: NodeActive (or "", as in
	// maps written before membership changes existed), NodeJoining (added,
	// not yet seen up) or NodeLeaving (its replicas are being moved off
	// before it is removed).
	State string `json:"state,omitempty"`
}

// Node states of the cluster map.
const (
	NodeActive  = "active"
	NodeJoining = "joining"
	NodeLeaving = "leaving"
)

// StateName returns the node's state, "active" for the empty one.
func (n Node) StateName() string {
	if n.State == "" {
		return NodeActive
	}
	return n.State
}

// SlotRange is an inclusive range of slots, [first, last].
type SlotRange [2]int

// Group is one shard group of the cluster map.
type Group struct {
	// ID is the group's number.
	ID GroupID `json:"id"`
	// Members are the node ids of the group's replicas; the first is its
	// preferred leader.
	Members []string `json:"members"`
	// Learners are replicas being added: they receive the log as Raft
	// non-voters and serve no reads until they have caught up and are
	// promoted into Members.
	Learners []string `json:"learners,omitempty"`
	// Slots are the slot ranges the group owns.
	Slots []SlotRange `json:"slots"`
	// Replicas, if set, is how many replicas this group is kept at (an
	// operator added or removed one); 0 means the map's Replicas.
	Replicas int `json:"replicas,omitempty"`
	// New marks a group created after the cluster started whose
	// replicas may still have to bootstrap it: a member that finds no
	// replica of it on disk starts one from Members. Its leader clears
	// the mark once every member has joined.
	New bool `json:"new,omitempty"`
}

// Hosts reports whether node holds a replica of the group, as a member
// or a learner.
func (g Group) Hosts(node string) bool {
	return slices.Contains(g.Members, node) || slices.Contains(g.Learners, node)
}

// IsMember reports whether node is a voting member of the group.
func (g Group) IsMember(node string) bool { return slices.Contains(g.Members, node) }

// Map is the cluster map: the nodes, the groups with their members, and
// which group owns each slot. Epoch grows with every change.
type Map struct {
	Epoch  uint64  `json:"epoch"`
	Nodes  []Node  `json:"nodes"`
	Groups []Group `json:"groups"`
	// Replicas is how many replicas each group should have: the initial
	// file's, kept so that a group left short (a dead node removed) is
	// made whole again when a node has room. 0 in maps written before it
	// existed: then the largest group's size.
	Replicas int `json:"replicas,omitempty"`
	// Moves are the slot moves under way and the last few finished.
	Moves []Move `json:"moves,omitempty"`
	// LastGroup is the highest group id ever used: a new group takes the
	// next, so that no id is used twice.
	LastGroup GroupID `json:"last_group,omitempty"`
	// Restore is the restore under way, if any: one at a time, and no
	// slot moves meanwhile.
	Restore *Restore `json:"restore,omitempty"`
}

// Restore states.
const (
	// RestoreStaging: the restore's node is staging the backup's keys in
	// the groups, out of sight; a failure drops them.
	RestoreStaging = "staging"
	// RestoreLoading: every group has its keys staged; the groups are
	// sealed and load them, and the restore finishes whatever crashes.
	RestoreLoading = "loading"
)

// Restore is a restore under way (see server/restore.go).
type Restore struct {
	ID    string `json:"id"`
	Node  string `json:"node"`
	State string `json:"state"`
	Force bool   `json:"force,omitempty"`
	// Groups are the groups the keys are staged in (loading).
	Groups []GroupID `json:"groups,omitempty"`
	// Started is when it started (RFC 3339).
	Started string `json:"started,omitempty"`
}

// InitialCluster is the bootstrap file of the contract: the nodes, the
// number of groups and the replicas per group.
type InitialCluster struct {
	Nodes    []Node `json:"nodes"`
	Groups   int    `json:"groups"`
	Replicas int    `json:"replicas"`
	// Token, optional, tells apart clusters bootstrapped from identical
	// files (the same addresses reused): it enters the cluster id.
	Token string `json:"token,omitempty"`
}

// ClusterID identifies a cluster by what every member bootstraps from:
// the seed map and the token. Nodes refuse Raft connections from nodes
// with another id. It is 32 hex characters.
func ClusterID(seed *Map, token string) string {
	b, _ := json.Marshal(struct {
		Nodes  []Node  `json:"nodes"`
		Groups []Group `json:"groups"`
		Token  string  `json:"token"`
	}{seed.Nodes, seed.Groups, token})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// LoadInitialCluster reads and validates an initial-cluster file.
func LoadInitialCluster(path string) (InitialCluster, error) {
	var ic InitialCluster
	b, err := os.ReadFile(path)
	if err != nil {
		return ic, fmt.Errorf("read initial cluster: %w", err)
	}
	if err := json.Unmarshal(b, &ic); err != nil {
		return ic, fmt.Errorf("parse initial cluster %s: %w", path, err)
	}
	if ic.Groups == 0 {
		ic.Groups = 1
	}
	if ic.Replicas == 0 {
		ic.Replicas = min(3, len(ic.Nodes))
	}
	if err := ic.Validate(); err != nil {
		return ic, fmt.Errorf("initial cluster %s: %w", path, err)
	}
	return ic, nil
}

// Validate checks that the file describes a cluster that can be placed.
func (ic InitialCluster) Validate() error {
	if len(ic.Nodes) == 0 {
		return fmt.Errorf("no nodes")
	}
	seen := map[string]bool{}
	for i, n := range ic.Nodes {
		if n.ID == "" || n.HTTP == "" || n.Raft == "" {
			return fmt.Errorf("node %d: id, http and raft are all required", i+1)
		}
		if seen[n.ID] {
			return fmt.Errorf("node id %q appears twice", n.ID)
		}
		seen[n.ID] = true
	}
	if ic.Groups < 1 || ic.Groups > SlotCount {
		return fmt.Errorf("groups must be between 1 and %d, not %d", SlotCount, ic.Groups)
	}
	if ic.Replicas < 1 || ic.Replicas > len(ic.Nodes) {
		return fmt.Errorf("replicas must be between 1 and the number of nodes (%d), not %d", len(ic.Nodes), ic.Replicas)
	}
	return nil
}

// Map places the groups of the file, as a pure function of it, so that
// every node computes the same map: group g (1..G) owns slots
// [floor((g-1)*1024/G), floor(g*1024/G)-1], and its members are the nodes
// at positions (g-1+i) mod N, i = 0..R-1, in file order. The first member is
// the preferred leader. The epoch of the initial map is 1.
func (ic InitialCluster) Map() *Map {
	m := &Map{Epoch: 1, Nodes: append([]Node(nil), ic.Nodes...), Replicas: ic.Replicas}
	n := len(ic.Nodes)
	for g := 1; g <= ic.Groups; g++ {
		grp := Group{ID: GroupID(g)}
		for i := 0; i < ic.Replicas; i++ {
			grp.Members = append(grp.Members, ic.Nodes[(g-1+i)%n].ID)
		}
		first := (g - 1) * SlotCount / ic.Groups
		last := g*SlotCount/ic.Groups - 1
		grp.Slots = []SlotRange{{first, last}}
		m.Groups = append(m.Groups, grp)
	}
	return m
}

// Clone returns a deep copy of m.
func (m *Map) Clone() *Map {
	c := &Map{Epoch: m.Epoch, Nodes: append([]Node(nil), m.Nodes...), Replicas: m.Replicas, LastGroup: m.LastGroup}
	for _, g := range m.Groups {
		c.Groups = append(c.Groups, Group{ID: g.ID, Members: append([]string(nil), g.Members...),
			Learners: append([]string(nil), g.Learners...), Slots: append([]SlotRange(nil), g.Slots...), Replicas: g.Replicas, New: g.New})
	}
	for _, mv := range m.Moves {
		mv.Slots = append([]SlotRange(nil), mv.Slots...)
		c.Moves = append(c.Moves, mv)
	}
	if m.Restore != nil {
		r := *m.Restore
		r.Groups = append([]GroupID(nil), r.Groups...)
		c.Restore = &r
	}
	return c
}

// GroupIDs returns the ids of the map's groups, in the map's order.
func (m *Map) GroupIDs() []GroupID {
	ids := make([]GroupID, 0, len(m.Groups))
	for _, g := range m.Groups {
		ids = append(ids, g.ID)
	}
	return ids
}

// Node returns the node with the given id.
func (m *Map) Node(id string) (Node, bool) {
	for _, n := range m.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// Group returns the group with the given id.
func (m *Map) Group(id GroupID) (Group, bool) {
	for _, g := range m.Groups {
		if g.ID == id {
			return g, true
		}
	}
	return Group{}, false
}

// GroupOf returns the group that owns slot.
func (m *Map) GroupOf(slot int) (GroupID, bool) {
	for _, g := range m.Groups {
		for _, r := range g.Slots {
			if slot >= r[0] && slot <= r[1] {
				return g.ID, true
			}
		}
	}
	return 0, false
}

// GroupsOf returns the ids of the groups node hosts, as a member or a
// learner, in ascending order.
func (m *Map) GroupsOf(node string) []GroupID {
	var ids []GroupID
	for _, g := range m.Groups {
		if g.Hosts(node) {
			ids = append(ids, g.ID)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// ReplicationFactor returns how many replicas each group should have.
func (m *Map) ReplicationFactor() int {
	if m.Replicas > 0 {
		return m.Replicas
	}
	r := 0
	for _, g := range m.Groups {
		r = max(r, len(g.Members))
	}
	return r
}

// Target returns how many replicas group g should have.
func (m *Map) Target(g Group) int {
	if g.Replicas > 0 {
		return g.Replicas
	}
	return m.ReplicationFactor()
}

// Load returns how many replicas each node of the map holds (members and
// learners).
func (m *Map) Load() map[string]int {
	load := make(map[string]int, len(m.Nodes))
	for _, n := range m.Nodes {
		load[n.ID] = 0
	}
	for _, g := range m.Groups {
		for _, id := range g.Members {
			load[id]++
		}
		for _, id := range g.Learners {
			load[id]++
		}
	}
	return load
}

// SystemGroup returns the group whose log holds the authoritative cluster
// map: every change to the map is a compare-and-set on its epoch in this
// group (the lowest-numbered one), and spreads to the others from there.
func (m *Map) SystemGroup() GroupID {
	var sys GroupID
	for _, g := range m.Groups {
		if sys == 0 || g.ID < sys {
			sys = g.ID
		}
	}
	return sys
}

// Validate checks the map's internal consistency: every slot owned by
// exactly one group, members named among the nodes and distinct.
func (m *Map) Validate() error {
	var owner [SlotCount]GroupID
	nodes := map[string]bool{}
	for _, n := range m.Nodes {
		if n.ID == "" || n.HTTP == "" || n.Raft == "" {
			return fmt.Errorf("node %q: id, http and raft are all required", n.ID)
		}
		if nodes[n.ID] {
			return fmt.Errorf("node id %q appears twice", n.ID)
		}
		switch n.State {
		case "", NodeActive, NodeJoining, NodeLeaving:
		default:
			return fmt.Errorf("node %q: unknown state %q", n.ID, n.State)
		}
		nodes[n.ID] = true
	}
	groups := map[GroupID]bool{}
	for _, g := range m.Groups {
		if len(g.Members) == 0 {
			return fmt.Errorf("group %d has no member", g.ID)
		}
		if g.ID == 0 || groups[g.ID] {
			return fmt.Errorf("group id %d is zero or repeated", g.ID)
		}
		groups[g.ID] = true
		seen := map[string]bool{}
		for _, mem := range append(append([]string(nil), g.Members...), g.Learners...) {
			if !nodes[mem] {
				return fmt.Errorf("group %d: replica %q is not a node", g.ID, mem)
			}
			if seen[mem] {
				return fmt.Errorf("group %d: replica %q appears twice", g.ID, mem)
			}
			seen[mem] = true
		}
		for _, r := range g.Slots {
			if r[0] < 0 || r[1] >= SlotCount || r[0] > r[1] {
				return fmt.Errorf("group %d: bad slot range %v", g.ID, r)
			}
			for s := r[0]; s <= r[1]; s++ {
				if owner[s] != 0 {
					return fmt.Errorf("slot %d owned by groups %d and %d", s, owner[s], g.ID)
				}
				owner[s] = g.ID
			}
		}
	}
	for s, g := range owner {
		if g == 0 {
			return fmt.Errorf("slot %d has no group", s)
		}
	}
	return m.validateMoves(&owner)
}

// Route is the routing a smart client chose for a request: the group it
// sent the request to and the epoch of the map it read that from. A
// Direct request must be served by the receiving node's replica of
// Group, or refused with ErrWrongGroup; it is never forwarded. The zero
// Route leaves the routing to the node.
type Route struct {
	Direct bool
	Group  GroupID
	Epoch  uint64
	// Slots, if set, are the slots the sender's map gives Group: a scan
	// is refused (ErrUnavailable) unless the group serves exactly those,
	// so that the pages of all groups cover every slot once, even while
	// a move hands slots from one group to another.
	Slots *SlotSet
}
