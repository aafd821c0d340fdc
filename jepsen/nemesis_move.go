package jepsen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// moveNemesis moves slots between groups while the clients run, through
// the admin API (POST /v1/admin/moves), with a crash or a partition
// mixed in. Each fault window starts a move, then (drawn in turn from a
// random first) does nothing more, SIGKILLs a random node, SIGKILLs the
// leader of the move's source group, of its target group or of group 1
// (which drives every move), isolates the source's or the target's
// leader, or cuts the cluster in halves; meanwhile a new move starts a
// second or so after the last one ended, until the window closes. A
// move takes a few slots: half the time those of keys the clients used
// just before (so that the workloads' keys change groups under them),
// otherwise a random run of up to 16 slots of one group, or a few slots
// scattered over several groups (one move per source group). No move
// takes a group's last slot.
//
// When the window closes the killed node is restarted and the links
// healed; then every move must end (done or failed) within a bound, and
// every node's map must give each slot to exactly one group. A move
// still under way after the bound, or a slot with two owners or none,
// fails the run (the `moves` check); a move that failed is allowed (the
// faults may fail one) and counted.
//
// It needs two groups that own slots: on a cluster of one group, Prepare
// creates a second and moves half the slots to it before the workload
// sets up. Its moves change what each group owns, so mixed does not draw
// it; it is run on its own.
type moveNemesis struct {
	// companion is the next window's companion fault, an index into
	// moveCompanions; -1 until the first window draws it.
	companion int
	// seq numbers the moves' ids.
	seq int

	// The window under way, for Stop.
	stopMover context.CancelFunc
	moverDone chan struct{}
	killed    int // index of the node killed, -1 for none
	cut       bool

	// mu protects started and notes, which the mover goroutine appends
	// to.
	mu      sync.Mutex
	started []startedMove
	notes   []string

	// Over the run.
	res      CheckResult
	outcomes map[string]int
}

// startedMove is a move request of the nemesis: its ids (one per source
// group) and what it asked for.
type startedMove struct {
	ids      []string
	desc     string
	from, to uint64 // from: the first slot's group
}

// moveCompanions are the faults a move window mixes in, in turn.
var moveCompanions = []string{"none", "kill", "kill-source-leader", "kill-target-leader", "kill-driver",
	"isolate-source-leader", "isolate-target-leader", "partition"}

const (
	// moveSettle bounds the wait, once a window is healed, for every
	// move to end.
	moveSettle = 90 * time.Second
	// moveCallTimeout bounds one admin call of the nemesis.
	moveCallTimeout = 5 * time.Second
)

func newMoveNemesis() *moveNemesis {
	return &moveNemesis{companion: -1, killed: -1, outcomes: map[string]int{}}
}

func (n *moveNemesis) Name() string { return "move" }

// Applicable implements Nemesis: any cluster will do (Prepare gives it a
// second group if it has one).
func (n *moveNemesis) Applicable(c *Cluster) error { return nil }

// Prepare implements Preparer: a cluster of one group gets a second,
// which is given the upper half of the slots.
func (n *moveNemesis) Prepare(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	cl, err := c.anyMap(ctx)
	if err != nil {
		return "", err
	}
	owning := 0
	for _, g := range cl.Groups {
		if len(g.Slots) > 0 {
			owning++
		}
	}
	if owning >= 2 {
		return fmt.Sprintf("%d groups own slots", owning), nil
	}
	if len(cl.Groups) != 1 {
		return "", fmt.Errorf("moves need two groups that own slots: the map has %d groups, %d own slots", len(cl.Groups), owning)
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	status, b, err := c.Call(cctx, 0, http.MethodPost, "/v1/admin/groups", api.GroupRequest{})
	if err != nil || (status != http.StatusOK && status != http.StatusAccepted) {
		return "", fmt.Errorf("create a second group: %d %s %v", status, b, err)
	}
	var gc api.GroupChange
	if err := json.Unmarshal(b, &gc); err != nil || gc.Group == 0 {
		return "", fmt.Errorf("create a second group: %s", b)
	}
	if _, err := c.WaitMap(cctx, func(cl api.Cluster) error {
		if g := groupOfMap(cl, gc.Group); g.Leader == "" {
			return fmt.Errorf("group %d has no leader", gc.Group)
		}
		return nil
	}); err != nil {
		return "", fmt.Errorf("the new group %d: %w", gc.Group, err)
	}
	half := [2]int{kvd.SlotCount / 2, kvd.SlotCount - 1}
	status, b, err = c.Call(cctx, 0, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{half}, To: gc.Group, ID: "nemesis-setup"})
	if err != nil || status != http.StatusAccepted {
		return "", fmt.Errorf("move slots %v to group %d: %d %s %v", half, gc.Group, status, b, err)
	}
	var ms api.MoveStarted
	if err := json.Unmarshal(b, &ms); err != nil {
		return "", fmt.Errorf("move slots %v to group %d: %s", half, gc.Group, b)
	}
	l, err := c.WaitMoves(cctx, func(l api.MoveList) error { return kvdproc.MovesIdle(l) })
	if err != nil {
		return "", fmt.Errorf("move slots %v to group %d: %w", half, gc.Group, err)
	}
	if mv, _ := kvdproc.FindMove(l, ms.ID); mv.State != kvd.MoveDone {
		return "", fmt.Errorf("move slots %v to group %d ended %s: %s", half, gc.Group, mv.State, mv.Error)
	}
	if gc.Group == 2 {
		c.Spec.Groups = 2 // groups 1..2: what the nemeses and the recovery check look at
	}
	return fmt.Sprintf("created group %d and moved slots %d-%d to it (%.1f s)", gc.Group, half[0], half[1], time.Since(start).Seconds()), nil
}

func (n *moveNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	if n.companion < 0 {
		n.companion = rng.IntN(len(moveCompanions))
	}
	companion := moveCompanions[n.companion%len(moveCompanions)]
	n.companion++
	n.killed, n.cut = -1, false
	n.mu.Lock()
	n.started, n.notes = nil, nil
	n.mu.Unlock()
	mrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))

	first, err := n.startMove(ctx, env, mrng)
	if err != nil {
		return "move: " + err.Error(), err
	}
	desc := []string{first.desc}
	sleepCtx(ctx, time.Duration(100+rng.IntN(500))*time.Millisecond) // the move is under way
	what, err := n.inject(ctx, c, rng, companion, first)
	desc = append(desc, what)
	if err != nil {
		return strings.Join(desc, "; "), err
	}

	mctx, cancel := context.WithCancel(ctx)
	n.stopMover, n.moverDone = cancel, make(chan struct{})
	go func() {
		defer close(n.moverDone)
		n.mover(mctx, env, mrng, first)
	}()
	return strings.Join(desc, "; "), nil
}

// inject applies the companion fault of a window whose first move is mv.
func (n *moveNemesis) inject(ctx context.Context, c *Cluster, rng *rand.Rand, companion string, mv startedMove) (string, error) {
	from, to := mv.from, mv.to
	switch companion {
	case "none":
		return "no other fault", nil
	case "kill":
		v := rng.IntN(c.Size())
		n.killed = v
		return "SIGKILL " + c.Nodes[v].ID, c.Kill(v)
	case "kill-source-leader", "kill-target-leader", "kill-driver":
		g := map[string]uint64{"kill-source-leader": from, "kill-target-leader": to, "kill-driver": 1}[companion]
		v := leaderOfGroup(c, g)
		if v < 0 {
			v = rng.IntN(c.Size())
			n.killed = v
			return fmt.Sprintf("SIGKILL %s (group %d has no leader known: a random node)", c.Nodes[v].ID, g), c.Kill(v)
		}
		n.killed = v
		return fmt.Sprintf("SIGKILL %s (%s, group %d)", c.Nodes[v].ID, strings.TrimPrefix(companion, "kill-"), g), c.Kill(v)
	case "isolate-source-leader", "isolate-target-leader":
		g := from
		if companion == "isolate-target-leader" {
			g = to
		}
		l := leaderOfGroup(c, g)
		if l < 0 {
			l = rng.IntN(c.Size())
		}
		var rest []int
		for i := range c.Size() {
			if i != l {
				rest = append(rest, i)
			}
		}
		c.Partition([]int{l}, rest)
		n.cut = true
		return fmt.Sprintf("isolate %s (leader of group %d, the move's %s)", c.Nodes[l].ID, g, strings.TrimSuffix(strings.TrimPrefix(companion, "isolate-"), "-leader")), nil
	default: // halves
		perm := rng.Perm(c.Size())
		a, b := perm[:c.Size()/2], perm[c.Size()/2:]
		slices.Sort(a)
		slices.Sort(b)
		c.Partition(a, b)
		n.cut = true
		ids := func(ns []int) []string {
			var out []string
			for _, i := range ns {
				out = append(out, c.Nodes[i].ID)
			}
			return out
		}
		return fmt.Sprintf("partition %v | %v", ids(a), ids(b)), nil
	}
}

// leaderOfGroup returns the node that a running node reports as group
// g's leader, or -1.
func leaderOfGroup(c *Cluster, g uint64) int {
	for i, node := range c.Nodes {
		if !node.Running() {
			continue
		}
		if l := c.LeaderAsSeenBy(i, g); l >= 0 {
			return l
		}
	}
	return -1
}

// mover starts a move a second or so after the last one ended, until ctx
// ends.
func (n *moveNemesis) mover(ctx context.Context, env *Env, rng *rand.Rand, last startedMove) {
	for ctx.Err() == nil {
		state := n.waitEnded(ctx, env.Cluster, rng, last.ids)
		n.note(fmt.Sprintf("%s: %s", strings.Join(last.ids, ","), state))
		sleepCtx(ctx, time.Duration(500+rng.IntN(1000))*time.Millisecond)
		if ctx.Err() != nil {
			return
		}
		mv, err := n.startMove(ctx, env, rng)
		if err != nil {
			if ctx.Err() == nil {
				n.note("no move: " + err.Error())
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		n.note(mv.desc)
		last = mv
	}
}

func (n *moveNemesis) note(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notes = append(n.notes, s)
}

// waitEnded waits until the moves ids have ended (or the list forgot
// them) or ctx ends, and says how they stand.
func (n *moveNemesis) waitEnded(ctx context.Context, c *Cluster, rng *rand.Rand, ids []string) string {
	state := "not seen"
	for ctx.Err() == nil {
		if i := c.randomRunning(rng, -1); i >= 0 {
			if l, err := c.Moves(ctx, i); err == nil {
				var states []string
				ended := true
				for _, id := range ids {
					mv, ok := kvdproc.FindMove(l, id)
					switch {
					case !ok:
						states = append(states, "ended (no longer listed)")
					default:
						states = append(states, mv.State)
						ended = ended && kvdproc.MoveFinished(mv.State)
					}
				}
				state = strings.Join(states, ",")
				if ended {
					return state
				}
			}
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
	return state + " when the window closed"
}

// errSlotsBusy is a move refused because its slots are already moving.
var errSlotsBusy = errors.New("slots already moving")

// startMove picks slots and a target and starts moving them, trying
// other slots while the ones picked are busy. Each request has an id of
// its own, so a try whose answer was lost is not started twice.
func (n *moveNemesis) startMove(ctx context.Context, env *Env, rng *rand.Rand) (startedMove, error) {
	c := env.Cluster
	var last error
	for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
		cl, err := c.anyMap(ctx)
		if err != nil {
			return startedMove{}, err
		}
		slots, from, to, how, err := pickMove(cl, env, rng)
		if err != nil {
			return startedMove{}, err
		}
		n.seq++
		id := fmt.Sprintf("nemesis-%d", n.seq)
		ms, err := n.post(ctx, c, rng, api.MoveRequest{Slots: slots, To: to, ID: id})
		if errors.Is(err, errSlotsBusy) {
			last = err
			n.note(fmt.Sprintf("move %s refused: %v", id, err))
			sleepCtx(ctx, 300*time.Millisecond)
			continue
		}
		if err != nil {
			return startedMove{}, err
		}
		mv := startedMove{ids: ms.IDs, from: from, to: to,
			desc: fmt.Sprintf("move %s: slots %s (%s) of group %d to %d", id, rangesText(slots), how, from, to)}
		n.mu.Lock()
		n.started = append(n.started, mv)
		n.mu.Unlock()
		return mv, nil
	}
	if last == nil {
		last = ctx.Err()
	}
	return startedMove{}, last
}

// post sends a move request to a random running node until one answers
// it (a node that is down or cut off from the system group's leader
// cannot), within a bound. 409 is errSlotsBusy; another 4xx is an error.
func (n *moveNemesis) post(ctx context.Context, c *Cluster, rng *rand.Rand, req api.MoveRequest) (api.MoveStarted, error) {
	var ms api.MoveStarted
	deadline := time.Now().Add(30 * time.Second)
	last := "no node running"
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if i := c.randomRunning(rng, -1); i >= 0 {
			// Not cut short when the window closes: an answer lost would
			// leave a move started that the nemesis does not know of.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), moveCallTimeout)
			status, b, err := c.Call(cctx, i, http.MethodPost, "/v1/admin/moves", req)
			cancel()
			switch {
			case err != nil:
				last = err.Error()
			case status == http.StatusAccepted:
				if err := json.Unmarshal(b, &ms); err != nil || len(ms.IDs) == 0 {
					return ms, fmt.Errorf("move %s: undecodable answer %s", req.ID, b)
				}
				return ms, nil
			case status == http.StatusConflict:
				return ms, fmt.Errorf("%w: %s", errSlotsBusy, b)
			case status >= 500:
				last = fmt.Sprintf("%s: %d %s", c.Nodes[i].ID, status, strings.TrimSpace(string(b)))
			default:
				return ms, fmt.Errorf("move %s (slots %v to %d) refused by %s: %d %s", req.ID, req.Slots, req.To, c.Nodes[i].ID, status, b)
			}
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
	return ms, fmt.Errorf("move %s: no node took it: %s", req.ID, last)
}

// pickMove chooses slots to move and their target in map cl: half the
// time around the slot of a key the clients used just before, else a run
// of up to 16 slots of one group, or (one time in five) a few slots
// scattered over the groups. It never takes a group's last slot. from is
// the source group (of the first slot, if several).
func pickMove(cl api.Cluster, env *Env, rng *rand.Rand) (slots [][2]int, from, to uint64, how string, err error) {
	var owner [kvd.SlotCount]uint64
	count := map[uint64]int{}
	var groups []uint64
	for _, g := range cl.Groups {
		groups = append(groups, g.ID)
		for _, r := range g.Slots {
			for s := r[0]; s <= r[1] && s < kvd.SlotCount; s++ {
				owner[s] = g.ID
				count[g.ID]++
			}
		}
	}
	if len(groups) < 2 {
		return nil, 0, 0, "", fmt.Errorf("moves need two groups; the map has %d", len(groups))
	}
	other := func(g uint64) uint64 {
		for {
			if t := groups[rng.IntN(len(groups))]; t != g {
				return t
			}
		}
	}
	if rng.IntN(5) == 0 {
		// A few slots, each of any group, to a group that does not own
		// them all; none a group's last.
		to = groups[rng.IntN(len(groups))]
		taken := map[uint64]int{}
		var picked []int
		for tries := 0; len(picked) < 2+rng.IntN(3) && tries < 100; tries++ {
			s := rng.IntN(kvd.SlotCount)
			g := owner[s]
			if g == 0 || g == to || slices.Contains(picked, s) || count[g]-taken[g] <= 1 {
				continue
			}
			taken[g]++
			picked = append(picked, s)
		}
		if len(picked) > 0 {
			slices.Sort(picked)
			for _, s := range picked {
				slots = append(slots, [2]int{s, s})
			}
			return slots, owner[picked[0]], to, "scattered", nil
		}
	}
	start, how := -1, "a run of slots"
	if rng.IntN(2) == 0 {
		if keys := recentKeys(env.History, 300); len(keys) > 0 {
			k := keys[rng.IntN(len(keys))]
			start, how = kvd.Slot(k), "around the slot of "+k
		}
	}
	if start < 0 || count[owner[start]] <= 1 {
		// A random slot of a group with more than one.
		for tries := 0; tries < 1000; tries++ {
			s := rng.IntN(kvd.SlotCount)
			if count[owner[s]] > 1 {
				start, how = s, "a run of slots"
				break
			}
		}
	}
	from = owner[start]
	if from == 0 || count[from] <= 1 {
		return nil, 0, 0, "", fmt.Errorf("no group owns more than one slot: %v", count)
	}
	width := 1 + rng.IntN(16)
	end := start
	for end+1 < kvd.SlotCount && owner[end+1] == from && end-start+1 < width && end-start+2 < count[from] {
		end++
	}
	return [][2]int{{start, end}}, from, other(from), how, nil
}

// recentKeys returns the keys of the last n operations of h (both of a
// transfer, the keys of a transaction's micro-operations).
func recentKeys(h *History, n int) []string {
	var out []string
	for _, op := range h.Recent(n) {
		if op.Key != "" {
			a, b, ok := strings.Cut(op.Key, "->")
			out = append(out, a)
			if ok {
				out = append(out, b)
			}
		}
		for _, m := range op.Txn {
			out = append(out, m.K)
		}
	}
	return out
}

// rangesText renders slot ranges as "a-b,c".
func rangesText(rs [][2]int) string {
	var parts []string
	for _, r := range rs {
		if r[0] == r[1] {
			parts = append(parts, fmt.Sprint(r[0]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
	}
	return strings.Join(parts, ",")
}

func (n *moveNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	if n.stopMover != nil {
		n.stopMover()
		<-n.moverDone
		n.stopMover = nil
	}
	var done []string
	if n.killed >= 0 && !c.Nodes[n.killed].Running() {
		if err := c.Start(n.killed); err != nil {
			return "", err
		}
		done = append(done, "restarted "+c.Nodes[n.killed].ID)
	}
	if n.cut {
		c.Heal()
		done = append(done, "healed")
	}
	n.mu.Lock()
	started, notes := slices.Clone(n.started), slices.Clone(n.notes)
	n.mu.Unlock()
	if len(notes) > 0 {
		done = append(done, "then: "+strings.Join(notes, "; "))
	}

	// Every move ends, and every map gives each slot one owner.
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, moveSettle)
	defer cancel()
	l, err := c.WaitMoves(wctx, func(l api.MoveList) error { return kvdproc.MovesIdle(l) })
	if err != nil {
		b, _ := json.Marshal(l.Moves)
		n.res.fail("a move did not end within %v of the faults' end: %v (moves: %s)", moveSettle, err, b)
		return strings.Join(done, "; "), fmt.Errorf("moves not ended within %v: %w", moveSettle, err)
	}
	var ends []string
	for _, mv := range started {
		for _, id := range mv.ids {
			state := "ended, no longer listed"
			if m, ok := kvdproc.FindMove(l, id); ok {
				state = m.State
				if m.Error != "" {
					state += " (" + m.Error + ")"
				}
				n.outcomes[m.State]++
			} else {
				n.outcomes["forgotten"]++
			}
			ends = append(ends, id+" "+state)
		}
	}
	done = append(done, fmt.Sprintf("every move ended within %.1f s: %s", time.Since(start).Seconds(), strings.Join(ends, ", ")))
	for i, node := range c.Nodes {
		if !node.Running() {
			continue
		}
		cl, err := c.ClusterMap(i)
		if err != nil {
			continue
		}
		if err := kvdproc.SlotOwnership(cl); err != nil {
			n.res.fail("%s's map after the moves: %v", node.ID, err)
			return strings.Join(done, "; "), fmt.Errorf("%s's map: %w", node.ID, err)
		}
	}
	return strings.Join(done, "; "), nil
}

// Checks implements Checker: every move ended once its window healed,
// and no map gave a slot two owners or none.
func (n *moveNemesis) Checks() []CheckResult {
	total := 0
	for _, k := range n.outcomes {
		total += k
	}
	if total == 0 && n.res.Verdict == "" {
		return nil
	}
	var parts []string
	for _, state := range slices.Sorted(maps.Keys(n.outcomes)) {
		parts = append(parts, fmt.Sprintf("%d %s", n.outcomes[state], state))
	}
	summary := fmt.Sprintf("%d moves: %s", total, strings.Join(parts, ", "))
	if n.res.Verdict == "" {
		summary += "; after each window every move ended and every map gave each slot one owner"
	}
	return checkOver(n.res, "moves", summary)
}
