package server

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

func TestMoveEdits_FollowTheMovesStates(t *testing.T) {
	m := threeNodeMap(1)
	// As changeMap does: edit a copy, and keep it only if it is valid.
	apply := func(e mapEdit) error {
		t.Helper()
		next := m.Clone()
		if err := e.apply(next); err != nil {
			return err
		}
		if err := next.Validate(); err != nil {
			return err
		}
		next.Epoch++
		m = next
		return nil
	}
	require.NoError(t, apply(mapEdit{Op: editCreateGroup, Members: []string{"n2", "n3", "n1"}}))
	g2, ok := m.Group(2)
	require.True(t, ok)
	require.True(t, g2.New)
	require.Empty(t, g2.Slots)
	require.ErrorIs(t, apply(mapEdit{Op: editCreateGroup, Group: 2, Members: []string{"n2", "n3", "n1"}}), errNoChange, "a retry with the id")
	require.ErrorIs(t, apply(mapEdit{Op: editCreateGroup, Group: 2, Members: []string{"n1"}}), kvd.ErrConflict)
	require.ErrorIs(t, apply(mapEdit{Op: editCreateGroup, Members: []string{"n9"}}), kvd.ErrNotFound)
	require.NoError(t, apply(mapEdit{Op: editCreateGroup, Group: 9, Members: []string{"n1"}}))
	g9, _ := m.Group(9)
	require.Equal(t, 1, m.Target(g9), "a group made on the nodes named is kept at that size")
	require.NoError(t, apply(mapEdit{Op: editDeleteGroup, Group: 9}))
	require.ErrorIs(t, apply(mapEdit{Op: editCreateGroup, Group: 3, Members: []string{"n1"}}), kvd.ErrConflict, "an id below one used before")

	mv := kvd.Move{ID: "a", Slots: []kvd.SlotRange{{0, 99}}, From: 1, To: 2}
	require.NoError(t, apply(mapEdit{Op: editStartMoves, Moves: []kvd.Move{mv}}))
	require.ErrorIs(t, apply(mapEdit{Op: editStartMoves, Moves: []kvd.Move{mv}}), errNoChange, "a retry starts nothing")
	other := kvd.Move{ID: "b", Slots: []kvd.SlotRange{{50, 60}}, From: 1, To: 2}
	require.ErrorIs(t, apply(mapEdit{Op: editStartMoves, Moves: []kvd.Move{other}}), kvd.ErrConflict, "a slot in two moves")
	wrongSource := kvd.Move{ID: "w", Slots: []kvd.SlotRange{{500, 510}}, From: 2, To: 1}
	require.ErrorIs(t, apply(mapEdit{Op: editStartMoves, Moves: []kvd.Move{wrongSource}}), kvd.ErrConflict, "slots of another group")
	step := func(st moveStep) error { return apply(mapEdit{Op: editMoveStep, Step: &st}) }
	require.NoError(t, step(moveStep{ID: "a", Attempt: 0, Claim: true}))
	got, _ := m.Move("a")
	require.Equal(t, kvd.MoveCopying, got.State)
	require.Equal(t, uint64(1), got.Attempt)
	require.ErrorIs(t, step(moveStep{ID: "a", Attempt: 0, State: kvd.MoveCatchingUp}), kvd.ErrConflict, "an older driver's step")
	require.ErrorIs(t, step(moveStep{ID: "a", Attempt: 1, Flip: true}), kvd.ErrConflict, "a flip before the hand-off")
	require.ErrorIs(t, step(moveStep{ID: "a", Attempt: 1, State: kvd.MoveDone}), kvd.ErrConflict, "done before the flip")
	require.NoError(t, step(moveStep{ID: "a", Attempt: 1, State: kvd.MoveHandingOff}))
	require.ErrorIs(t, apply(mapEdit{Op: editDeleteGroup, Group: 2}), kvd.ErrConflict, "a group in a move")
	require.NoError(t, step(moveStep{ID: "a", Attempt: 1, Flip: true, SourceIndex: 42}))
	g1, _ := m.Group(1)
	g2, _ = m.Group(2)
	require.Equal(t, []kvd.SlotRange{{100, 1023}}, g1.Slots)
	require.Equal(t, []kvd.SlotRange{{0, 99}}, g2.Slots)
	require.ErrorIs(t, step(moveStep{ID: "a", Attempt: 1, State: kvd.MoveFailed, Error: "x"}), kvd.ErrConflict, "no rollback after the flip")
	require.NoError(t, step(moveStep{ID: "a", Attempt: 1, State: kvd.MoveDone}))
	got, _ = m.Move("a")
	require.Equal(t, kvd.MoveDone, got.State)
	require.Equal(t, uint64(42), got.SourceIndex)
	require.ErrorIs(t, step(moveStep{ID: "a", Attempt: 1, State: kvd.MoveDone}), kvd.ErrConflict, "a finished move takes no step")

	require.ErrorIs(t, apply(mapEdit{Op: editDeleteGroup, Group: 2}), kvd.ErrConflict, "a group that owns slots")
	require.ErrorIs(t, apply(mapEdit{Op: editDeleteGroup, Group: 1}), kvd.ErrConflict, "the system group")
	back := kvd.Move{ID: "c", Slots: []kvd.SlotRange{{0, 99}}, From: 2, To: 1}
	require.NoError(t, apply(mapEdit{Op: editStartMoves, Moves: []kvd.Move{back}}))
	require.NoError(t, step(moveStep{ID: "c", Claim: true}))
	require.NoError(t, step(moveStep{ID: "c", Attempt: 1, State: kvd.MoveFailed, Error: "gave up"}))
	got, _ = m.Move("c")
	require.Equal(t, "gave up", got.Error)
	g2, _ = m.Group(2)
	require.Equal(t, []kvd.SlotRange{{0, 99}}, g2.Slots, "a failed move leaves the slots where they were")
	require.ErrorIs(t, step(moveStep{ID: "zz", Claim: true}), kvd.ErrNotFound)
}

func TestPlanRebalance_EvensOutSlotsKeysAndBytes(t *testing.T) {
	m := threeNodeMap(1)
	m.Groups = append(m.Groups, kvd.Group{ID: 2, Members: []string{"n1"}, Slots: []kvd.SlotRange{}}, kvd.Group{ID: 3, Members: []string{"n2"}, Slots: []kvd.SlotRange{}})
	var keys, bytes [kvd.SlotCount]uint64
	// An empty cluster: the slots spread evenly.
	plan := planRebalance(m, &keys, &bytes)
	require.Len(t, plan, 2)
	after := m.Clone()
	for _, pm := range plan {
		require.Equal(t, kvd.GroupID(1), pm.from)
		flipSlots(after, kvd.Move{Slots: pm.slots.Ranges(), From: pm.from, To: pm.to})
	}
	for _, g := range after.Groups {
		var set kvd.SlotSet
		set.AddRanges(g.Slots)
		require.InDelta(t, kvd.SlotCount/3, set.Len(), 40, "group %d", g.ID)
	}
	require.NoError(t, after.Validate())
	// Data in the low slots only: the moves follow the data.
	for s := 0; s < 100; s++ {
		keys[s], bytes[s] = 100, 10000
	}
	plan = planRebalance(m, &keys, &bytes)
	require.NotEmpty(t, plan)
	moved := uint64(0)
	for _, pm := range plan {
		for s := 0; s < kvd.SlotCount; s++ {
			if pm.slots.Has(s) {
				moved += keys[s]
			}
		}
	}
	require.InDelta(t, 10000*2/3, float64(moved), 2000, "two thirds of the keys move")
	// A balanced cluster plans nothing.
	require.Empty(t, planRebalance(after, &[kvd.SlotCount]uint64{}, &[kvd.SlotCount]uint64{}))
}

func TestPlanRebalance_MovesNoSlotTwice(t *testing.T) {
	m := threeNodeMap(6)
	m.Groups = append(m.Groups, kvd.Group{ID: 7, Members: []string{"n1"}, Slots: []kvd.SlotRange{}})
	var keys, bytes [kvd.SlotCount]uint64
	plan := planRebalance(m, &keys, &bytes)
	require.NotEmpty(t, plan)
	gave, took := map[kvd.GroupID]bool{}, map[kvd.GroupID]bool{}
	var moved kvd.SlotSet
	for _, pm := range plan {
		gave[pm.from], took[pm.to] = true, true
		for s := 0; s < kvd.SlotCount; s++ {
			if pm.slots.Has(s) {
				require.False(t, moved.Has(s), "slot %d planned twice", s)
				moved.Add(s)
			}
		}
	}
	for g := range gave {
		require.False(t, took[g], "group %d both gives and takes", g)
	}
	require.True(t, took[7])
}

func TestWithoutFeature_NamesNodesOfEarlierVersions(t *testing.T) {
	status := map[string]api.Status{
		"n1": {Node: "n1", Features: []string{api.FeatureSlotMoves}},
		"n2": {Node: "n2"}, // an earlier version: no features
	}
	require.Equal(t, []string{"n2"}, withoutFeature(status, []string{"n1", "n2", "n3"}, api.FeatureSlotMoves),
		"n3 did not answer: not waited for")
	require.Empty(t, withoutFeature(status, []string{"n1"}, api.FeatureSlotMoves))
}
