package kvd

import (
	"fmt"
	"math/bits"
	"slices"
)

// Slot move states, in the order a move goes through them. A move ends
// done (the slots belong to To) or failed (they stay with From).
const (
	MovePending    = "pending"     // waits until neither group takes part in another move
	MoveCopying    = "copying"     // To receives a copy of the slots' state at one point
	MoveCatchingUp = "catching_up" // To receives the changes made since
	MoveHandingOff = "handing_off" // From refuses writes to the slots; To gets the last changes
	MoveDone       = "done"
	MoveFailed     = "failed"
)

// Move is a move of slots from one group to another, kept in the cluster
// map so that whichever node drives it, and after any crash, the next
// driver knows where it stands.
type Move struct {
	// ID names the move; the one who asks for it chooses it, so that a
	// retried request starts nothing twice.
	ID    string      `json:"id"`
	Slots []SlotRange `json:"slots"`
	From  GroupID     `json:"from"`
	To    GroupID     `json:"to"`
	State string      `json:"state"`
	// Flipped, during the hand-off, means the map already gives the
	// slots to To: neither group serves them until the move is done,
	// which the driver records only once From has applied the flip.
	Flipped bool `json:"flipped,omitempty"`
	// Attempt counts the drivers that took the move on: a driver's
	// steps name its attempt, and those of an older one are refused.
	Attempt uint64 `json:"attempt"`
	// Error says why a failed move failed.
	Error string `json:"error,omitempty"`
	// SourceIndex and SourceSeq, once the map has flipped, are the
	// position of the last event of From's history when the move read
	// it last (every change From made to the slots is at or before it);
	// TargetIndex is an index of To's log after every copy and before
	// any change To made to the slots. A watch sends To's events of the
	// slots after TargetIndex only once it has sent From's events up to
	// SourceIndex, so a key's events stay in version order across moves.
	SourceIndex uint64 `json:"source_index,omitempty"`
	SourceSeq   uint32 `json:"source_seq,omitempty"`
	TargetIndex uint64 `json:"target_index,omitempty"`
	// Started and Updated are Unix milliseconds.
	Started int64 `json:"started"`
	Updated int64 `json:"updated"`
}

// Active reports whether the move is still under way (or pending).
func (mv Move) Active() bool { return mv.State != MoveDone && mv.State != MoveFailed }

// Running reports whether the move is under way: started, not finished.
func (mv Move) Running() bool { return mv.Active() && mv.State != MovePending }

// Has reports whether the move moves slot.
func (mv Move) Has(slot int) bool {
	for _, r := range mv.Slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

// SlotSet is a set of slots.
type SlotSet [SlotCount / 64]uint64

// Add adds slot s.
func (ss *SlotSet) Add(s int) { ss[s/64] |= 1 << (s % 64) }

// Has reports whether s is in the set.
func (ss *SlotSet) Has(s int) bool { return s >= 0 && s < SlotCount && ss[s/64]&(1<<(s%64)) != 0 }

// AddRanges adds every slot of rs.
func (ss *SlotSet) AddRanges(rs []SlotRange) {
	for _, r := range rs {
		for s := max(r[0], 0); s <= r[1] && s < SlotCount; s++ {
			ss.Add(s)
		}
	}
}

// Len returns how many slots the set holds.
func (ss *SlotSet) Len() int {
	n := 0
	for _, w := range ss {
		n += bits.OnesCount64(w)
	}
	return n
}

// Ranges returns the set as sorted inclusive ranges.
func (ss *SlotSet) Ranges() []SlotRange {
	var out []SlotRange
	for s := 0; s < SlotCount; s++ {
		if !ss.Has(s) {
			continue
		}
		e := s
		for e+1 < SlotCount && ss.Has(e+1) {
			e++
		}
		out = append(out, SlotRange{s, e})
		s = e
	}
	return out
}

// String encodes the set as 256 hex digits (HeaderSlots).
func (ss *SlotSet) String() string {
	b := make([]byte, 0, SlotCount/4)
	for _, w := range ss {
		b = fmt.Appendf(b, "%016x", w)
	}
	return string(b)
}

// ParseSlotSet decodes what String encodes.
func ParseSlotSet(s string) (SlotSet, error) {
	var ss SlotSet
	if len(s) != SlotCount/4 {
		return ss, fmt.Errorf("%w: a slot set is %d hex digits", ErrInvalid, SlotCount/4)
	}
	for i := range ss {
		var w uint64
		for _, c := range []byte(s[i*16 : i*16+16]) {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'a' && c <= 'f':
				d = c - 'a' + 10
			default:
				return ss, fmt.Errorf("%w: a slot set is lower-case hex digits", ErrInvalid)
			}
			w = w<<4 | uint64(d)
		}
		ss[i] = w
	}
	return ss, nil
}

// Move returns the move with the given id.
func (m *Map) Move(id string) (Move, bool) {
	i := slices.IndexFunc(m.Moves, func(mv Move) bool { return mv.ID == id })
	if i < 0 {
		return Move{}, false
	}
	return m.Moves[i], true
}

// ActiveMoves returns the moves under way.
func (m *Map) ActiveMoves() []Move {
	var out []Move
	for _, mv := range m.Moves {
		if mv.Active() {
			out = append(out, mv)
		}
	}
	return out
}

// MaxFinishedMoves bounds the finished moves the map remembers.
const MaxFinishedMoves = 16

// validateMoves checks the moves against the map's groups and slots: the
// groups exist and differ, the slot ranges are sound, no slot is in two
// moves under way, and each slot of a move under way belongs to From
// (To once flipped).
func (m *Map) validateMoves(owner *[SlotCount]GroupID) error {
	groups := map[GroupID]bool{}
	for _, g := range m.Groups {
		groups[g.ID] = true
	}
	var moving SlotSet
	ids := map[string]bool{}
	for _, mv := range m.Moves {
		if mv.ID == "" || ids[mv.ID] {
			return fmt.Errorf("move %q: empty or repeated id", mv.ID)
		}
		ids[mv.ID] = true
		switch mv.State {
		case MovePending, MoveCopying, MoveCatchingUp, MoveHandingOff, MoveDone, MoveFailed:
		default:
			return fmt.Errorf("move %s: unknown state %q", mv.ID, mv.State)
		}
		if len(mv.Slots) == 0 {
			return fmt.Errorf("move %s moves no slot", mv.ID)
		}
		for _, r := range mv.Slots {
			if r[0] < 0 || r[1] >= SlotCount || r[0] > r[1] {
				return fmt.Errorf("move %s: bad slot range %v", mv.ID, r)
			}
		}
		if !mv.Active() {
			continue
		}
		if mv.From == mv.To || !groups[mv.From] || !groups[mv.To] {
			return fmt.Errorf("move %s: from group %d to group %d: both must exist and differ", mv.ID, mv.From, mv.To)
		}
		if mv.Flipped && mv.State != MoveHandingOff {
			return fmt.Errorf("move %s: flipped while %s", mv.ID, mv.State)
		}
		want := mv.From
		if mv.Flipped {
			want = mv.To
		}
		for _, r := range mv.Slots {
			for s := r[0]; s <= r[1]; s++ {
				if moving.Has(s) {
					return fmt.Errorf("slot %d is in two moves under way", s)
				}
				moving.Add(s)
				if owner[s] != want {
					return fmt.Errorf("move %s: slot %d belongs to group %d, not %d", mv.ID, s, owner[s], want)
				}
			}
		}
	}
	return nil
}
