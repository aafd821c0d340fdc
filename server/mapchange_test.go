package server

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func threeNodeMap(groups int) *kvd.Map {
	var nodes []kvd.Node
	for _, id := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, kvd.Node{ID: id, HTTP: id + ":1", Raft: id + ":2"})
	}
	return kvd.InitialCluster{Nodes: nodes, Groups: groups, Replicas: 3}.Map()
}

func TestMapEdit_AppliesOrRefuses(t *testing.T) {
	n4 := kvd.Node{ID: "n4", HTTP: "n4:1", Raft: "n4:2"}
	withLearner := func(m *kvd.Map) { m.Nodes = append(m.Nodes, n4); m.Groups[0].Learners = []string{"n4"} }
	cases := []struct {
		name  string
		setup func(*kvd.Map)
		edit  mapEdit
		want  error // nil: applied
		check func(t *testing.T, m *kvd.Map)
	}{
		{name: "add node", edit: mapEdit{Op: editAddNode, Node: n4}, check: func(t *testing.T, m *kvd.Map) {
			n, ok := m.Node("n4")
			require.True(t, ok)
			require.Equal(t, kvd.NodeJoining, n.State)
		}},
		{name: "add the same node again", setup: func(m *kvd.Map) { m.Nodes = append(m.Nodes, n4) }, edit: mapEdit{Op: editAddNode, Node: n4}, want: errNoChange},
		{name: "add a taken id", edit: mapEdit{Op: editAddNode, Node: kvd.Node{ID: "n1", HTTP: "x:1", Raft: "x:2"}}, want: kvd.ErrConflict},
		{name: "add a taken address", edit: mapEdit{Op: editAddNode, Node: kvd.Node{ID: "n9", HTTP: "n2:1", Raft: "x:2"}}, want: kvd.ErrConflict},
		{name: "unknown node", edit: mapEdit{Op: editLeave, Node: kvd.Node{ID: "n9"}}, want: kvd.ErrNotFound},
		{name: "unknown group", edit: mapEdit{Op: editAddLearner, Group: 9, Node: kvd.Node{ID: "n1"}}, want: kvd.ErrNotFound},
		{name: "learner on a node that hosts the group", edit: mapEdit{Op: editAddLearner, Group: 1, Node: kvd.Node{ID: "n2"}}, want: kvd.ErrConflict},
		{name: "second learner at once", setup: func(m *kvd.Map) {
			withLearner(m)
			m.Nodes = append(m.Nodes, kvd.Node{ID: "n5", HTTP: "n5:1", Raft: "n5:2"})
		}, edit: mapEdit{Op: editAddLearner, Group: 1, Node: kvd.Node{ID: "n5"}}, want: kvd.ErrConflict},
		{name: "operator's learner sets the group's size", setup: func(m *kvd.Map) { m.Nodes = append(m.Nodes, n4) },
			edit: mapEdit{Op: editAddLearner, Group: 1, Node: kvd.Node{ID: "n4"}, Operator: true}, check: func(t *testing.T, m *kvd.Map) {
				g, _ := m.Group(1)
				require.Equal(t, []string{"n4"}, g.Learners)
				require.Equal(t, 4, m.Target(g))
			}},
		{name: "promote", setup: withLearner, edit: mapEdit{Op: editPromote, Group: 1, Node: kvd.Node{ID: "n4"}}, check: func(t *testing.T, m *kvd.Map) {
			g, _ := m.Group(1)
			require.Empty(t, g.Learners)
			require.Equal(t, []string{"n1", "n2", "n3", "n4"}, g.Members)
		}},
		{name: "promote a member", edit: mapEdit{Op: editPromote, Group: 1, Node: kvd.Node{ID: "n1"}}, want: errNoChange},
		{name: "remove the last voter", setup: func(m *kvd.Map) { m.Groups[0].Members = []string{"n1"} },
			edit: mapEdit{Op: editRemoveReplica, Group: 1, Node: kvd.Node{ID: "n1"}}, want: kvd.ErrConflict},
		{name: "drop a node that holds replicas", edit: mapEdit{Op: editDropNode, Node: kvd.Node{ID: "n1"}}, want: kvd.ErrConflict},
		{name: "reorder", edit: mapEdit{Op: editReorder, Group: 1, Node: kvd.Node{ID: "n3"}}, check: func(t *testing.T, m *kvd.Map) {
			g, _ := m.Group(1)
			require.Equal(t, []string{"n3", "n1", "n2"}, g.Members)
		}},
		{name: "unknown edit", edit: mapEdit{Op: "explode", Group: 1, Node: kvd.Node{ID: "n1"}}, want: kvd.ErrInvalid},
		{name: "unknown edit naming nothing that exists", edit: mapEdit{Op: "explode", Node: kvd.Node{ID: "zz"}}, want: kvd.ErrInvalid},
		{name: "forged add-node with a bad id", edit: mapEdit{Op: editAddNode, Node: kvd.Node{ID: "../x", HTTP: "h:1", Raft: "h:2"}}, want: kvd.ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := threeNodeMap(2)
			if c.setup != nil {
				c.setup(m)
			}
			before := m.Clone()
			err := c.edit.apply(m)
			if c.want != nil {
				require.True(t, errors.Is(err, c.want), "got %v, want %v", err, c.want)
				require.Equal(t, before, m, "a refused edit changes nothing")
				return
			}
			require.NoError(t, err)
			require.NoError(t, m.Validate())
			if c.check != nil {
				c.check(t, m)
			}
		})
	}
}

// live returns a probe in which the given nodes answer.
func live(ids ...string) probe {
	p := probe{live: map[string]bool{}}
	for _, id := range ids {
		p.live[id] = true
	}
	return p
}

func TestPlacement_NextChange(t *testing.T) {
	s := &Server{cfg: Config{BalanceReplicas: true}}
	add := func(m *kvd.Map, ids ...string) {
		for _, id := range ids {
			m.Nodes = append(m.Nodes, kvd.Node{ID: id, HTTP: id + ":1", Raft: id + ":2"})
		}
	}
	t.Run("balanced: nothing to do", func(t *testing.T) {
		_, ok := s.nextPlacementChange(threeNodeMap(3), live("n1", "n2", "n3"))
		require.False(t, ok)
	})
	t.Run("a new node gets a replica", func(t *testing.T) {
		m := threeNodeMap(3)
		add(m, "n4")
		e, ok := s.nextPlacementChange(m, live("n1", "n2", "n3", "n4"))
		require.True(t, ok)
		require.Equal(t, editAddLearner, e.Op)
		require.Equal(t, "n4", e.Node.ID)
	})
	t.Run("an over-replicated group loses the most loaded replica, never breaking its majority", func(t *testing.T) {
		m := threeNodeMap(3)
		add(m, "n4")
		m.Groups[0].Members = append(m.Groups[0].Members, "n4")
		e, ok := s.nextPlacementChange(m, live("n1", "n2", "n3", "n4"))
		require.True(t, ok)
		require.Equal(t, editRemoveReplica, e.Op)
		require.NotEqual(t, "n4", e.Node.ID)
	})
	t.Run("a leaving node's replica moves first", func(t *testing.T) {
		m := threeNodeMap(1)
		add(m, "n4")
		m.Nodes[2].State = kvd.NodeLeaving
		e, ok := s.nextPlacementChange(m, live("n1", "n2", "n3", "n4"))
		require.True(t, ok)
		require.Equal(t, mapEdit{Op: editAddLearner, Group: 1, Node: kvd.Node{ID: "n4"}}, e)
	})
	t.Run("a dead leaving node with nowhere to go is removed if a majority stays", func(t *testing.T) {
		m := threeNodeMap(1)
		m.Nodes[2].State = kvd.NodeLeaving
		e, ok := s.nextPlacementChange(m, live("n1", "n2"))
		require.True(t, ok)
		require.Equal(t, mapEdit{Op: editRemoveReplica, Group: 1, Node: kvd.Node{ID: "n3"}}, e)
	})
	t.Run("no removal that leaves no majority of live voters", func(t *testing.T) {
		m := threeNodeMap(1)
		m.Nodes[2].State = kvd.NodeLeaving
		_, ok := s.nextPlacementChange(m, live("n1"))
		require.False(t, ok)
	})
	t.Run("a short group gets a replica on a live node", func(t *testing.T) {
		m := threeNodeMap(1)
		add(m, "n4")
		m.Groups[0].Members = []string{"n1", "n2"}
		e, ok := s.nextPlacementChange(m, live("n1", "n2", "n3", "n4"))
		require.True(t, ok)
		require.Equal(t, editAddLearner, e.Op)
		require.Equal(t, "n3", e.Node.ID, "the least loaded node, lowest id first")
	})
}
