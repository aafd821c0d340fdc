package shell

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Usage lines of the slot move commands.
const (
	usageMove      = "move SLOTS --to G [--wait]"
	usageRebalance = "rebalance [--dry-run]"
)

// movesHint ends the line of moves that go on on their own.
const movesHint = `follow with "kvcli moves"`

// parseSlots reads a slot list such as "0-99,200,300-310": slots and
// inclusive ranges of slots, separated by commas. The ranges come back
// sorted, with overlapping and adjacent ones merged.
func parseSlots(spec string) ([][2]int, error) {
	bad := func(format string, args ...any) error {
		return usagef("SLOTS is a list of slots and ranges such as 0-99,200,300-310, each from 0 to %d: %s (usage: %s)",
			kvd.SlotCount-1, fmt.Sprintf(format, args...), usageMove)
	}
	var rs [][2]int
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, bad("an empty item in %q", spec)
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := slotNumber(lo)
		if err != nil {
			return nil, bad("%q: %v", part, err)
		}
		last := first
		if isRange {
			if last, err = slotNumber(hi); err != nil {
				return nil, bad("%q: %v", part, err)
			}
			if first > last {
				return nil, bad("%q ends before it starts", part)
			}
		}
		rs = append(rs, [2]int{first, last})
	}
	slices.SortFunc(rs, func(a, b [2]int) int { return a[0] - b[0] })
	out := rs[:1]
	for _, r := range rs[1:] {
		if prev := &out[len(out)-1]; r[0] <= prev[1]+1 {
			prev[1] = max(prev[1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// slotNumber reads one slot.
func slotNumber(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || strings.HasPrefix(strings.TrimSpace(s), "+") {
		return 0, fmt.Errorf("%q is not a slot number", s)
	}
	if n < 0 || n >= kvd.SlotCount {
		return 0, fmt.Errorf("slot %d is out of range", n)
	}
	return n, nil
}

// formatSlots writes slot ranges as parseSlots reads them.
func formatSlots(rs [][2]int) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.Itoa(r[0])
		if r[1] != r[0] {
			parts[i] += "-" + strconv.Itoa(r[1])
		}
	}
	return strings.Join(parts, ",")
}

// move runs "move SLOTS --to G [--wait]": it starts moving the slots to
// group G, and with --wait follows the moves until they end.
func (s *Shell) move(ctx context.Context, a *args) error {
	if len(a.pos) != 1 {
		return usagef("usage: %s", usageMove)
	}
	to, ok := a.flags["to"]
	if !ok {
		return usagef("say which group takes the slots with --to G (usage: %s)", usageMove)
	}
	g, err := strconv.ParseUint(to, 10, 64)
	if err != nil || g == 0 {
		return usagef("--to is a group id (a number \"kvcli cluster\" lists), not %q (usage: %s)", to, usageMove)
	}
	slots, err := parseSlots(a.pos[0])
	if err != nil {
		return err
	}
	st, err := s.c.StartMove(ctx, api.MoveRequest{Slots: slots, To: g})
	if err != nil {
		return &changeError{err: err, look: "kvcli moves", what: "move " + st.ID}
	}
	if s.o.JSON {
		if err := s.emit(st); err != nil {
			return err
		}
	} else {
		printMoveStarted(s.out, slots, g, st, a.has("wait"))
	}
	if !a.has("wait") {
		return nil
	}
	var failed []moveFailedError
	for _, id := range st.IDs {
		info, err := s.c.WaitMove(ctx, id)
		switch {
		case err == nil:
		case info.State == "failed" && errors.Is(err, kvd.ErrConflict):
			failed = append(failed, moveFailedError{info: info, err: err})
		case ctx.Err() != nil:
			state := "not listed yet"
			if info.State != "" {
				state = info.State
			}
			return fmt.Errorf("move %s is still %s after --timeout %s: it goes on on its own: %s, or raise --timeout to wait longer",
				id, state, s.o.Timeout, movesHint)
		default:
			return err
		}
		if s.o.JSON {
			if err := s.emit(info); err != nil {
				return err
			}
			continue
		}
		if err == nil {
			printMoveDone(s.out, info)
		}
	}
	if len(failed) > 0 {
		f := failed[0]
		f.more = len(failed) - 1
		return &f
	}
	return nil
}

// moveFailedError is a move that ended failed: Explain says its slots
// stay where they were.
type moveFailedError struct {
	info api.MoveInfo
	err  error // matches kvd.ErrConflict
	// more counts the other moves of the same request that failed.
	more int
}

func (e *moveFailedError) Error() string {
	why := e.info.Error
	if why == "" {
		why = "no reason given"
	}
	msg := fmt.Sprintf("move %s of slots %s from group %d to group %d: %s", e.info.ID, formatSlots(e.info.Slots), e.info.From, e.info.To, why)
	if e.more > 0 {
		msg += fmt.Sprintf(" (and %s of these slots failed: \"kvcli moves\" lists them)", plural(e.more, "more move"))
	}
	return msg
}

func (e *moveFailedError) Unwrap() error { return e.err }

// printMoveStarted reports the answer to "move".
func printMoveStarted(w io.Writer, slots [][2]int, to uint64, st api.MoveStarted, wait bool) {
	follow := "; " + movesHint
	if wait {
		follow = "; waiting for it to end"
	}
	if len(st.IDs) > 1 {
		if wait {
			follow = "; waiting for them to end"
		}
		fmt.Fprintf(w, "moves %s started: slots %s to group %d, one move per group that owns some (map epoch %d)%s\n",
			strings.Join(st.IDs, ", "), formatSlots(slots), to, st.Epoch, follow)
		return
	}
	fmt.Fprintf(w, "move %s started: slots %s to group %d (map epoch %d)%s\n", st.ID, formatSlots(slots), to, st.Epoch, follow)
}

// printMoveDone reports a move that ended done.
func printMoveDone(w io.Writer, mv api.MoveInfo) {
	fmt.Fprintf(w, "move %s done: slots %s moved from group %d to group %d", mv.ID, formatSlots(mv.Slots), mv.From, mv.To)
	if p := mv.Progress; p != nil {
		fmt.Fprintf(w, " (%s)", progressText(p))
	}
	fmt.Fprintln(w)
}

// progressText describes how far a move has gone.
func progressText(p *api.MoveProgress) string {
	parts := []string{fmt.Sprintf("%d keys, %s", p.KeysCopied, bytesText(int64(min(p.BytesCopied, 1<<62))))}
	if p.CatchUpRounds > 0 {
		parts = append(parts, fmt.Sprintf("%d catch-up rounds", p.CatchUpRounds))
	}
	if p.HandOffMillis > 0 {
		parts = append(parts, fmt.Sprintf("writes paused %d ms", p.HandOffMillis))
	}
	return strings.Join(parts, ", ")
}

// moves runs "moves": the slot moves under way, waiting, and the last
// ones that ended.
func (s *Shell) moves(ctx context.Context, a *args) error {
	if err := a.want(0, 0); err != nil {
		return err
	}
	list, err := s.c.Moves(ctx)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(list)
	}
	printMoves(s.out, list)
	return nil
}

// printMoves writes the moves as a table.
func printMoves(w io.Writer, list api.MoveList) {
	if len(list.Moves) == 0 {
		fmt.Fprintf(w, "no slot move under way or remembered (map epoch %d)\n", list.Epoch)
		return
	}
	var rows [][]string
	for _, mv := range list.Moves {
		progress := "-"
		if mv.Progress != nil {
			progress = progressText(mv.Progress)
		}
		rows = append(rows, []string{mv.ID, fmt.Sprintf("%d->%d", mv.From, mv.To), formatSlots(mv.Slots), mv.State, progress, orDash(mv.Error)})
	}
	table(w, []string{"ID", "FROM->TO", "SLOTS", "STATE", "PROGRESS", "ERROR"}, rows)
}

// rebalance runs "rebalance [--dry-run]".
func (s *Shell) rebalance(ctx context.Context, a *args) error {
	if err := a.want(0, 0); err != nil {
		return err
	}
	plan, err := s.c.Rebalance(ctx, a.has("dry-run"))
	if err != nil {
		return &changeError{err: err, look: "kvcli moves"}
	}
	if s.o.JSON {
		return s.emit(plan)
	}
	printPlan(s.out, plan)
	return nil
}

// printPlan writes a rebalance plan: what it does, the load of each group
// before and after it, and its moves.
func printPlan(w io.Writer, plan api.RebalancePlan) {
	switch {
	case len(plan.Moves) == 0:
		fmt.Fprintln(w, "the groups are balanced: nothing to move")
	case plan.DryRun:
		fmt.Fprintf(w, "dry run: %s planned, none started\n", plural(len(plan.Moves), "move"))
	default:
		fmt.Fprintf(w, "%s started (map epoch %d): a group takes part in one move at a time, the others wait as pending; %s\n",
			plural(len(plan.Moves), "move"), plan.Epoch, movesHint)
	}
	fmt.Fprintln(w)
	before, after := map[uint64]api.GroupLoad{}, map[uint64]api.GroupLoad{}
	var groups []uint64
	for _, side := range []struct {
		loads []api.GroupLoad
		into  map[uint64]api.GroupLoad
	}{{plan.Before, before}, {plan.After, after}} {
		for _, l := range side.loads {
			side.into[l.Group] = l
			if !slices.Contains(groups, l.Group) {
				groups = append(groups, l.Group)
			}
		}
	}
	slices.Sort(groups)
	var rows [][]string
	for _, g := range groups {
		b, hasB := before[g]
		f, hasF := after[g]
		pair := func(x, y string) string {
			if !hasB {
				x = "-"
			}
			if !hasF {
				y = "-"
			}
			return x + " -> " + y
		}
		rows = append(rows, []string{strconv.FormatUint(g, 10),
			pair(strconv.Itoa(b.Slots), strconv.Itoa(f.Slots)),
			pair(strconv.FormatUint(b.Keys, 10), strconv.FormatUint(f.Keys, 10)),
			pair(loadBytes(b.Bytes), loadBytes(f.Bytes))})
	}
	table(w, []string{"GROUP", "SLOTS", "KEYS", "BYTES"}, rows)
	if len(plan.Moves) == 0 {
		return
	}
	fmt.Fprintln(w)
	rows = nil
	for _, mv := range plan.Moves {
		rows = append(rows, []string{orDash(mv.ID), fmt.Sprintf("%d->%d", mv.From, mv.To), formatSlots(mv.Slots),
			strconv.FormatUint(mv.Keys, 10), loadBytes(mv.Bytes)})
	}
	table(w, []string{"MOVE", "FROM->TO", "SLOTS", "KEYS", "BYTES"}, rows)
}

// plural writes n things: "1 move", "2 moves".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return strconv.Itoa(n) + " " + thing + "s"
}

func loadBytes(n uint64) string { return bytesText(int64(min(n, 1<<62))) }

// completeFlagTo completes --to of "move": the groups of the map.
func (s *Shell) completeFlagTo(flag string) []string {
	if flag != "to" {
		return nil
	}
	return groupIDs(s.c.CachedMap())
}
