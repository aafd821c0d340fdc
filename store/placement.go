package store

import (
	"fmt"

	"github.com/kvd-project/kvd"
)

// placement is what a map says of where keys live: the group of every
// slot, the groups there are, and the move under way of each slot, if
// any.
type placement struct {
	slot   [kvd.SlotCount]kvd.GroupID
	moving [kvd.SlotCount]*kvd.Move
	groups map[kvd.GroupID]bool
}

// placementOf returns what m says of where keys live (nil for no map).
func placementOf(m *kvd.Map) *placement {
	if m == nil {
		return nil
	}
	p := &placement{groups: make(map[kvd.GroupID]bool, len(m.Groups))}
	for _, g := range m.Groups {
		p.groups[g.ID] = true
		for _, r := range g.Slots {
			for s := max(r[0], 0); s <= r[1] && s < kvd.SlotCount; s++ {
				p.slot[s] = g.ID
			}
		}
	}
	for i := range m.Moves {
		mv := &m.Moves[i]
		if !mv.Running() {
			continue
		}
		for _, r := range mv.Slots {
			for s := max(r[0], 0); s <= r[1] && s < kvd.SlotCount; s++ {
				p.moving[s] = mv
			}
		}
	}
	return p
}

// How a group may use a slot, by the map it stores (see writable,
// readable and stray):
//
//   - the owner writes and reads a slot that no move is taking away;
//   - a move's source keeps serving reads while it hands the slot off, but
//     takes no write from the moment its own log fences the slot (the
//     hand-off starts); once the map gives the slot to the target (the
//     flip), neither group serves it until the move is done, which the
//     driver records only after the source has applied the flip: the
//     target never serves a slot that the source may still serve reads of;
//   - the target takes the move's copies (CmdMoveIngest) until the flip.

// writable tells whether group g may apply a write of slot s: nil, or
// kvd.ErrUnavailable while a move hands it off, or kvd.ErrWrongGroup.
func (p *placement) writable(g kvd.GroupID, s int) error {
	mv := p.moving[s]
	switch {
	case mv != nil && (mv.From == g || mv.To == g) && (mv.State == kvd.MoveHandingOff):
		return fmt.Errorf("%w: slot %d is being handed from group %d to group %d", kvd.ErrUnavailable, s, mv.From, mv.To)
	case p.slot[s] == g:
		return nil
	}
	return fmt.Errorf("%w: slot %d belongs to group %d", kvd.ErrWrongGroup, s, p.slot[s])
}

// readable tells whether group g serves reads of slot s (see writable).
func (p *placement) readable(g kvd.GroupID, s int) error {
	mv := p.moving[s]
	switch {
	case mv != nil && mv.Flipped && (mv.From == g || mv.To == g):
		return fmt.Errorf("%w: slot %d is being handed from group %d to group %d", kvd.ErrUnavailable, s, mv.From, mv.To)
	case p.slot[s] == g:
		return nil
	}
	return fmt.Errorf("%w: slot %d belongs to group %d", kvd.ErrWrongGroup, s, p.slot[s])
}

// incoming tells whether group g takes a move's copies of slot s: the
// move with that id and attempt is copying it to g and has not flipped.
func (p *placement) incoming(g kvd.GroupID, s int, move string) bool {
	mv := p.moving[s]
	return mv != nil && mv.To == g && mv.ID == move && !mv.Flipped
}

// stray tells whether group g holds slot s's keys only as leftovers: the
// slot is not g's and no move under way involves g in it (a finished
// move's source, a failed move's target).
func (p *placement) stray(g kvd.GroupID, s int) bool {
	if p.slot[s] == g {
		return false
	}
	mv := p.moving[s]
	return mv == nil || (mv.From != g && mv.To != g)
}
