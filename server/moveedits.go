package server

import (
	"fmt"
	"slices"
	"time"

	"github.com/kvd-project/kvd"
)

// Map edits of groups and slot moves (see mapEdit.apply).
const (
	editCreateGroup = "create-group" // add Group (0: the next id) with Members, owning no slot
	editDeleteGroup = "delete-group" // remove Group, which owns no slot and takes part in no move
	editGroupReady  = "group-ready"  // every member of a new Group has started its replica
	editStartMoves  = "start-moves"  // record Moves (pending, or copying)
	editMoveStep    = "move-step"    // the driver of Move (at Attempt) records its next step
)

// moveStep is what a move-step edit changes: the driver's claim (a new
// attempt), a new state, the flip, or a failure.
type moveStep struct {
	ID      string `json:"id"`
	Attempt uint64 `json:"attempt"`
	Claim   bool   `json:"claim,omitempty"`
	State   string `json:"state,omitempty"`
	Flip    bool   `json:"flip,omitempty"`
	// SourceIndex, SourceSeq and TargetIndex go with the flip (see
	// kvd.Move.SourceIndex).
	SourceIndex uint64 `json:"source_index,omitempty"`
	SourceSeq   uint32 `json:"source_seq,omitempty"`
	TargetIndex uint64 `json:"target_index,omitempty"`
	Error       string `json:"error,omitempty"`
}

// applyGroupEdit makes a group or move edit on m; handled is false for
// an edit of another kind.
func (e mapEdit) applyGroupEdit(m *kvd.Map) (handled bool, err error) {
	switch e.Op {
	case editCreateGroup:
		return true, createGroup(m, e.Group, e.Members)
	case editDeleteGroup:
		return true, deleteGroup(m, e.Group)
	case editGroupReady:
		i := slices.IndexFunc(m.Groups, func(g kvd.Group) bool { return g.ID == e.Group })
		if i < 0 || !m.Groups[i].New {
			return true, errNoChange
		}
		m.Groups[i].New = false
		return true, nil
	case editStartMoves:
		return true, startMoves(m, e.Moves)
	case editMoveStep:
		if e.Step == nil {
			return true, fmt.Errorf("%w: a move step names no move", kvd.ErrInvalid)
		}
		return true, stepMove(m, *e.Step)
	}
	return false, nil
}

// nextGroupID returns the id a new group takes: above every id used.
func nextGroupID(m *kvd.Map) kvd.GroupID {
	id := m.LastGroup
	for _, g := range m.Groups {
		id = max(id, g.ID)
	}
	return id + 1
}

// createGroup adds a group with the given members and no slot.
func createGroup(m *kvd.Map, id kvd.GroupID, members []string) error {
	if len(members) == 0 {
		return fmt.Errorf("%w: a new group needs at least one member", kvd.ErrInvalid)
	}
	if id != 0 {
		if g, ok := m.Group(id); ok {
			if slices.Equal(g.Members, members) || slices.Equal(append(append([]string(nil), g.Members...), g.Learners...), members) {
				return errNoChange
			}
			return fmt.Errorf("group %d exists, with members %v: %w", id, g.Members, kvd.ErrConflict)
		}
		if id < nextGroupID(m) {
			return fmt.Errorf("group id %d was used before: %w", id, kvd.ErrConflict)
		}
	} else {
		id = nextGroupID(m)
	}
	seen := map[string]bool{}
	for _, mem := range members {
		n, ok := m.Node(mem)
		switch {
		case !ok:
			return fmt.Errorf("node %q is not in the cluster: %w", mem, kvd.ErrNotFound)
		case seen[mem]:
			return fmt.Errorf("%w: node %s is named twice", kvd.ErrInvalid, mem)
		case n.State == kvd.NodeLeaving:
			return fmt.Errorf("node %s is leaving the cluster: %w", mem, kvd.ErrConflict)
		}
		seen[mem] = true
	}
	g := kvd.Group{ID: id, Members: append([]string(nil), members...), Slots: []kvd.SlotRange{}, New: true}
	if len(members) != m.ReplicationFactor() {
		g.Replicas = len(members) // kept at the size asked for
	}
	m.Groups = append(m.Groups, g)
	m.LastGroup = id
	return nil
}

// deleteGroup removes group id, which must own no slot, take part in no
// move, and not be the system group.
func deleteGroup(m *kvd.Map, id kvd.GroupID) error {
	i := slices.IndexFunc(m.Groups, func(g kvd.Group) bool { return g.ID == id })
	if i < 0 {
		return errNoChange
	}
	g := m.Groups[i]
	switch {
	case len(g.Slots) > 0:
		return fmt.Errorf("group %d owns slots %v: move them to another group first: %w", id, g.Slots, kvd.ErrConflict)
	case id == m.SystemGroup():
		return fmt.Errorf("group %d holds the cluster map (it is the lowest-numbered group) and cannot be removed: %w", id, kvd.ErrConflict)
	}
	for _, mv := range m.Moves {
		if mv.Active() && (mv.From == id || mv.To == id) {
			return fmt.Errorf("group %d takes part in move %s (%s): %w", id, mv.ID, mv.State, kvd.ErrConflict)
		}
	}
	m.LastGroup = max(m.LastGroup, nextGroupID(m)-1)
	m.Groups = slices.Delete(m.Groups, i, i+1)
	return nil
}

// startMoves records moves; a move whose id the map holds is not
// recorded again.
func startMoves(m *kvd.Map, moves []kvd.Move) error {
	if m.Restore != nil {
		return fmt.Errorf("restore %s is under way: %w", m.Restore.ID, kvd.ErrConflict)
	}
	added := 0
	now := time.Now().UnixMilli()
	var moving kvd.SlotSet
	for _, mv := range m.ActiveMoves() {
		moving.AddRanges(mv.Slots)
	}
	for _, mv := range moves {
		if _, ok := m.Move(mv.ID); ok {
			continue
		}
		// Checked here, on the map the edit applies to, as well as by the
		// caller on the map it read: a move started meanwhile, or a change
		// of owner, is a conflict.
		for _, r := range mv.Slots {
			for sl := max(r[0], 0); sl <= r[1] && sl < kvd.SlotCount; sl++ {
				if moving.Has(sl) {
					return fmt.Errorf("slot %d is already being moved: %w", sl, kvd.ErrConflict)
				}
				if owner, _ := m.GroupOf(sl); owner != mv.From {
					return fmt.Errorf("slot %d belongs to group %d now, not %d: %w", sl, owner, mv.From, kvd.ErrConflict)
				}
			}
		}
		moving.AddRanges(mv.Slots)
		mv.Attempt, mv.Flipped, mv.Error = 0, false, ""
		mv.Started, mv.Updated = now, now
		if mv.State != kvd.MoveCopying {
			mv.State = kvd.MovePending
		}
		m.Moves = append(m.Moves, mv)
		added++
	}
	if added == 0 {
		return errNoChange
	}
	trimMoves(m)
	return nil
}

// stepMove records a driver's step of a move. A step of an attempt that
// is not the move's current one is refused: another driver took over.
func stepMove(m *kvd.Map, st moveStep) error {
	i := slices.IndexFunc(m.Moves, func(mv kvd.Move) bool { return mv.ID == st.ID })
	if i < 0 {
		return fmt.Errorf("move %q: %w", st.ID, kvd.ErrNotFound)
	}
	mv := &m.Moves[i]
	if !mv.Active() {
		return fmt.Errorf("move %s is %s: %w", mv.ID, mv.State, kvd.ErrConflict)
	}
	if st.Attempt != mv.Attempt {
		return fmt.Errorf("move %s is at attempt %d, not %d: %w", mv.ID, mv.Attempt, st.Attempt, kvd.ErrConflict)
	}
	mv.Updated = time.Now().UnixMilli()
	switch {
	case st.Claim:
		mv.Attempt++
		if mv.State == kvd.MovePending {
			mv.State = kvd.MoveCopying
		}
		return nil
	case st.Flip:
		if mv.State != kvd.MoveHandingOff {
			return fmt.Errorf("move %s is %s: it flips while handing off: %w", mv.ID, mv.State, kvd.ErrConflict)
		}
		if mv.Flipped {
			return errNoChange
		}
		flipSlots(m, *mv)
		mv.Flipped, mv.SourceIndex, mv.SourceSeq, mv.TargetIndex = true, st.SourceIndex, st.SourceSeq, st.TargetIndex
		return nil
	case st.State == kvd.MoveFailed:
		if mv.Flipped {
			return fmt.Errorf("move %s has flipped: it can only finish: %w", mv.ID, kvd.ErrConflict)
		}
		mv.State, mv.Error = kvd.MoveFailed, st.Error
	case st.State == kvd.MoveDone:
		if !mv.Flipped {
			return fmt.Errorf("move %s has not flipped: %w", mv.ID, kvd.ErrConflict)
		}
		mv.State, mv.Flipped = kvd.MoveDone, false
	case st.State == kvd.MoveCatchingUp || st.State == kvd.MoveHandingOff:
		if mv.State == st.State {
			return errNoChange
		}
		if mv.Flipped {
			return fmt.Errorf("move %s has flipped: it can only finish: %w", mv.ID, kvd.ErrConflict)
		}
		mv.State = st.State
		return nil
	default:
		return fmt.Errorf("%w: move step to state %q", kvd.ErrInvalid, st.State)
	}
	trimMoves(m)
	return nil
}

// flipSlots gives mv's slots to its target.
func flipSlots(m *kvd.Map, mv kvd.Move) {
	var moved kvd.SlotSet
	moved.AddRanges(mv.Slots)
	for i := range m.Groups {
		g := &m.Groups[i]
		var own kvd.SlotSet
		own.AddRanges(g.Slots)
		for s := 0; s < kvd.SlotCount; s++ {
			if moved.Has(s) {
				if g.ID == mv.To {
					own.Add(s)
				} else {
					own[s/64] &^= 1 << (s % 64)
				}
			}
		}
		if g.ID == mv.To || g.ID == mv.From {
			g.Slots = own.Ranges()
			if g.Slots == nil {
				g.Slots = []kvd.SlotRange{}
			}
		}
	}
}

// trimMoves keeps the last MaxFinishedMoves finished moves.
func trimMoves(m *kvd.Map) {
	finished := 0
	for _, mv := range m.Moves {
		if !mv.Active() {
			finished++
		}
	}
	for i := 0; i < len(m.Moves) && finished > kvd.MaxFinishedMoves; {
		if !m.Moves[i].Active() {
			m.Moves = slices.Delete(m.Moves, i, i+1)
			finished--
			continue
		}
		i++
	}
}
