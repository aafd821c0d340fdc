package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// The operations API of groups and slot moves: groups made and removed
// on demand, moves started, shown and planned by the rebalancer. Like
// the membership calls, each is made on the system group's leader.

// CreateGroup adds a group that owns no slot, on the nodes r names or,
// if none, on the least loaded live nodes.
func (s *Server) CreateGroup(ctx context.Context, r api.GroupRequest, wait time.Duration) (api.GroupChange, int, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.GroupChange{}, 0, err
	}
	m := s.Map()
	members := r.Members
	if len(members) == 0 {
		p := s.probeNodes(ctx, m)
		take := s.canTake(m, p)
		load := m.Load()
		var cands []string
		for _, n := range m.Nodes {
			if take(n.ID) {
				cands = append(cands, n.ID)
			}
		}
		sort.SliceStable(cands, func(i, j int) bool { return load[cands[i]] < load[cands[j]] })
		want := m.ReplicationFactor()
		if len(cands) < want {
			return api.GroupChange{}, 0, fmt.Errorf("a new group needs %d replicas and only %d nodes are live and active: %w", want, len(cands), kvd.ErrConflict)
		}
		members = cands[:want]
	}
	if err := s.checkFeature(members, api.FeatureSlotMoves); err != nil {
		return api.GroupChange{}, 0, err
	}
	if r.ID > 1<<32 {
		return api.GroupChange{}, 0, fmt.Errorf("%w: a group id is at most %d", kvd.ErrInvalid, uint64(1<<32))
	}
	next, err := s.editMap(ctx, mapEdit{Op: editCreateGroup, Group: kvd.GroupID(r.ID), Members: members})
	if err != nil {
		return api.GroupChange{}, 0, err
	}
	gid := kvd.GroupID(r.ID)
	if gid == 0 {
		gid = next.LastGroup
	}
	kick(s.membershipKick)
	done := s.waitFor(ctx, wait, func(m *kvd.Map) bool {
		g, ok := m.Group(gid)
		return ok && !g.New && s.leaderOf(ctx, gid) != ""
	})
	return s.groupAnswer(ctx, gid, done, "the group's replicas are starting; it owns no slot until a move gives it some")
}

// DeleteGroup removes group gid, which must own no slot and take part in
// no move; its replicas close and delete their data in the background.
func (s *Server) DeleteGroup(ctx context.Context, gid kvd.GroupID, wait time.Duration) (api.GroupChange, int, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.GroupChange{}, 0, err
	}
	grp, ok := s.Map().Group(gid)
	if !ok {
		return api.GroupChange{}, 0, fmt.Errorf("group %d is not in the cluster: %w", gid, kvd.ErrNotFound)
	}
	if len(grp.Slots) == 0 {
		// Transactions whose record the group keeps (their locks in other
		// groups name it) must finish first; owning no slot, it takes no
		// new one.
		txns, err := s.groupTxnsAnywhere(ctx, grp)
		if err != nil {
			return api.GroupChange{}, 0, err
		}
		if len(txns.Records) > 0 || len(txns.Locks) > 0 {
			return api.GroupChange{}, 0, fmt.Errorf("group %d still keeps %d transaction records and %d locks being finished (GET /v1/admin/txns): try again once they are: %w",
				gid, len(txns.Records), len(txns.Locks), kvd.ErrConflict)
		}
	}
	if _, err := s.editMap(ctx, mapEdit{Op: editDeleteGroup, Group: gid}); err != nil {
		return api.GroupChange{}, 0, err
	}
	m := s.Map()
	return api.GroupChange{Group: uint64(gid), State: api.ChangeDone, Epoch: m.Epoch,
		Message: "the group is out of the map; its replicas close and delete their data in the background"}, http.StatusOK, nil
}

// groupAnswer describes group gid after a change.
func (s *Server) groupAnswer(ctx context.Context, gid kvd.GroupID, done bool, pending string) (api.GroupChange, int, error) {
	m := s.Map()
	grp, _ := m.Group(gid)
	out := api.GroupChange{Group: uint64(gid), State: api.ChangeDone, Epoch: m.Epoch, Members: grp.Members, Leader: s.leaderOf(ctx, gid)}
	if !done {
		out.State, out.Message = api.ChangeInProgress, pending
		return out, http.StatusAccepted, nil
	}
	return out, http.StatusOK, nil
}

// checkFeature refuses (kvd.ErrConflict) a change that nodes must apply
// when one of them answered the last status round without feature: it
// runs an earlier version, which would refuse the change's commands
// while its peers apply them. A node that did not answer is not waited
// for.
func (s *Server) checkFeature(nodes []string, feature string) error {
	p := s.lastProbe.Load()
	if p == nil {
		return nil
	}
	if old := withoutFeature(p.status, nodes, feature); len(old) > 0 {
		return fmt.Errorf("nodes %v run a version of kvd without %s: upgrade every node first: %w", old, feature, kvd.ErrConflict)
	}
	return nil
}

// withoutFeature returns the nodes among nodes whose status lacks feature.
func withoutFeature(status map[string]api.Status, nodes []string, feature string) []string {
	var old []string
	for _, n := range nodes {
		if st, ok := status[n]; ok && !slices.Contains(st.Features, feature) {
			old = append(old, n)
		}
	}
	return old
}

// lowDisk returns a node among nodes whose disk refuses writes, "" if
// none: a move must not fill it further.
func (s *Server) lowDisk(nodes []string) string {
	for _, n := range nodes {
		if s.peerDisks.isLow(n) || (n == s.id && s.disk.low.Load()) {
			return n
		}
	}
	return ""
}

// groupHosts returns the nodes that host the groups ids.
func groupHosts(m *kvd.Map, ids ...kvd.GroupID) []string {
	var out []string
	for _, id := range ids {
		if g, ok := m.Group(id); ok {
			out = append(out, g.Members...)
			out = append(out, g.Learners...)
		}
	}
	return out
}

// newMoveID returns a fresh move id.
func newMoveID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "mv-" + hex.EncodeToString(b)
}

// checkSlotRanges validates the slot ranges of a request.
func checkSlotRanges(rs [][2]int) (kvd.SlotSet, error) {
	var set kvd.SlotSet
	if len(rs) == 0 {
		return set, fmt.Errorf("%w: name the slots to move: {\"slots\":[[0,99]],\"to\":2}", kvd.ErrInvalid)
	}
	if len(rs) > kvd.SlotCount {
		return set, fmt.Errorf("%w: at most %d slot ranges", kvd.ErrInvalid, kvd.SlotCount)
	}
	for _, r := range rs {
		if r[0] < 0 || r[1] >= kvd.SlotCount || r[0] > r[1] {
			return set, fmt.Errorf("%w: slot range [%d,%d]: slots are 0 to %d, first <= last", kvd.ErrInvalid, r[0], r[1], kvd.SlotCount-1)
		}
		set.AddRanges([]kvd.SlotRange{{r[0], r[1]}})
	}
	return set, nil
}

// StartMove starts moving slots to a group: one move per group that owns
// some of them. The moves run on their own (GET /v1/admin/moves).
func (s *Server) StartMove(ctx context.Context, r api.MoveRequest) (api.MoveStarted, int, error) {
	set, err := checkSlotRanges(r.Slots)
	if err != nil {
		return api.MoveStarted{}, 0, err
	}
	if r.ID != "" && !moveIDPattern.MatchString(r.ID) {
		return api.MoveStarted{}, 0, fmt.Errorf("%w: a move id is 1 to 63 letters, digits, '_' or '-', starting with a letter or digit", kvd.ErrInvalid)
	}
	if err := s.systemLeader(ctx); err != nil {
		return api.MoveStarted{}, 0, err
	}
	m := s.Map()
	to := kvd.GroupID(r.To)
	if _, ok := m.Group(to); !ok || r.To == 0 {
		return api.MoveStarted{}, 0, fmt.Errorf("group %d is not in the cluster: %w", r.To, kvd.ErrNotFound)
	}
	base := r.ID
	if base == "" {
		base = newMoveID()
	}
	if ids := movesOf(m, base); len(ids) > 0 {
		// The id is taken: by this request, recorded before (a retry,
		// answered as the first time), or by another.
		var recorded kvd.SlotSet
		same := true
		for _, id := range ids {
			mv, _ := m.Move(id)
			recorded.AddRanges(mv.Slots)
			same = same && mv.To == to
		}
		if !same || !sameSlotsBut(recorded, set, m, to) {
			return api.MoveStarted{}, 0, fmt.Errorf("move id %q is taken by another move (GET /v1/admin/moves): %w", base, kvd.ErrConflict)
		}
		return api.MoveStarted{ID: ids[0], IDs: ids, Epoch: m.Epoch}, http.StatusAccepted, nil
	}
	var moving kvd.SlotSet
	for _, mv := range m.ActiveMoves() {
		moving.AddRanges(mv.Slots)
	}
	bySource := map[kvd.GroupID]*kvd.SlotSet{}
	for sl := 0; sl < kvd.SlotCount; sl++ {
		if !set.Has(sl) {
			continue
		}
		if moving.Has(sl) {
			return api.MoveStarted{}, 0, fmt.Errorf("slot %d is already being moved (GET /v1/admin/moves): %w", sl, kvd.ErrConflict)
		}
		owner, _ := m.GroupOf(sl)
		if owner == to {
			continue
		}
		if bySource[owner] == nil {
			bySource[owner] = &kvd.SlotSet{}
		}
		bySource[owner].Add(sl)
	}
	if len(bySource) == 0 {
		return api.MoveStarted{}, 0, fmt.Errorf("group %d already owns every slot named: %w", to, kvd.ErrConflict)
	}
	ids := []kvd.GroupID{to}
	for from := range bySource {
		ids = append(ids, from)
	}
	if err := s.checkFeature(groupHosts(m, ids...), api.FeatureSlotMoves); err != nil {
		return api.MoveStarted{}, 0, err
	}
	if n := s.lowDisk(groupHosts(m, to)); n != "" {
		return api.MoveStarted{}, 0, fmt.Errorf("node %s, which holds a replica of group %d, is short of disk: the copy would fill it: %w", n, to, kvd.ErrConflict)
	}
	var moves []kvd.Move
	for _, from := range slices.Sorted(mapsKeys(bySource)) {
		id := base
		if len(bySource) > 1 {
			id = fmt.Sprintf("%s.%d", base, from)
		}
		moves = append(moves, kvd.Move{ID: id, Slots: bySource[from].Ranges(), From: from, To: to, State: kvd.MovePending})
	}
	next, err := s.editMap(ctx, mapEdit{Op: editStartMoves, Moves: moves})
	if err != nil {
		return api.MoveStarted{}, 0, err
	}
	kick(s.membershipKick)
	out := api.MoveStarted{Epoch: next.Epoch}
	for _, mv := range moves {
		out.IDs = append(out.IDs, mv.ID)
	}
	out.ID = out.IDs[0]
	s.log.Info("slot move requested", "ids", out.IDs, "to", to)
	return out, http.StatusAccepted, nil
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// moveIDPattern is what a move id given by a client may be: no '.', which
// separates the parts of one request's moves (base.group).
var moveIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// sameSlotsBut reports whether recorded, the slots of the moves recorded
// under an id, are the slots asked for, but for slots the target owns
// (it owned them when the request was first made, so no move took them).
func sameSlotsBut(recorded, asked kvd.SlotSet, m *kvd.Map, to kvd.GroupID) bool {
	for sl := 0; sl < kvd.SlotCount; sl++ {
		if recorded.Has(sl) == asked.Has(sl) {
			continue
		}
		if owner, _ := m.GroupOf(sl); recorded.Has(sl) || owner != to {
			return false
		}
	}
	return true
}

// movesOf returns the ids of the moves recorded for request id base.
func movesOf(m *kvd.Map, base string) []string {
	var ids []string
	for _, mv := range m.Moves {
		if mv.ID == base || len(mv.ID) > len(base) && mv.ID[:len(base)+1] == base+"." {
			ids = append(ids, mv.ID)
		}
	}
	return ids
}

// Moves lists the moves the map holds, with the progress of those this
// node drives.
func (s *Server) Moves(ctx context.Context) (api.MoveList, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.MoveList{}, err
	}
	m := s.Map()
	out := api.MoveList{Epoch: m.Epoch, Moves: []api.MoveInfo{}}
	s.moves.mu.Lock()
	defer s.moves.mu.Unlock()
	for _, mv := range m.Moves {
		mi := moveInfo(mv)
		if r := s.moves.running[mv.ID]; r != nil && mv.Active() {
			mi.Progress = r.progress()
		}
		out.Moves = append(out.Moves, mi)
	}
	return out, nil
}

// moveInfo converts a move for the API.
func moveInfo(mv kvd.Move) api.MoveInfo {
	return api.MoveInfo{ID: mv.ID, Slots: apiRanges(mv.Slots), From: uint64(mv.From), To: uint64(mv.To), State: mv.State,
		Attempt: mv.Attempt, Error: mv.Error, Started: msTime(mv.Started), Updated: msTime(mv.Updated)}
}

func msTime(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}

func apiRanges(rs []kvd.SlotRange) [][2]int {
	out := make([][2]int, len(rs))
	for i, r := range rs {
		out[i] = [2]int{r[0], r[1]}
	}
	return out
}

// Rebalance measures the keys and bytes each group holds per slot, plans
// the moves that even them out, and, unless dryRun, records them
// (pending: each group takes part in one move at a time).
func (s *Server) Rebalance(ctx context.Context, dryRun bool) (api.RebalancePlan, error) {
	if err := s.systemLeader(ctx); err != nil {
		return api.RebalancePlan{}, err
	}
	m := s.Map()
	if len(m.ActiveMoves()) > 0 {
		return api.RebalancePlan{}, fmt.Errorf("moves are under way (GET /v1/admin/moves): rebalance once they are done: %w", kvd.ErrConflict)
	}
	var keys, bytes [kvd.SlotCount]uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(m.Groups))
	for i, grp := range m.Groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := s.moveRead(ctx, grp.ID, moveReadRequest{Op: "stats", Slots: grp.Slots})
			if err != nil {
				errs[i] = fmt.Errorf("measure group %d: %w", grp.ID, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for sl := 0; sl < kvd.SlotCount && sl < len(a.SlotKeys) && sl < len(a.SlotBytes); sl++ {
				keys[sl] += a.SlotKeys[sl]
				bytes[sl] += a.SlotBytes[sl]
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return api.RebalancePlan{}, err
		}
	}
	plan := planRebalance(m, &keys, &bytes)
	out := api.RebalancePlan{DryRun: dryRun, Epoch: m.Epoch, Before: loads(m.Groups, &keys, &bytes), Moves: []api.PlannedMove{}}
	after := m.Clone()
	var moves []kvd.Move
	base := newMoveID()
	for i, pm := range plan {
		mv := kvd.Move{ID: fmt.Sprintf("%s.%d", base, i+1), Slots: pm.slots.Ranges(), From: pm.from, To: pm.to, State: kvd.MovePending}
		moves = append(moves, mv)
		flipSlots(after, mv)
		var k, b uint64
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if pm.slots.Has(sl) {
				k, b = k+keys[sl], b+bytes[sl]
			}
		}
		out.Moves = append(out.Moves, api.PlannedMove{Slots: apiRanges(mv.Slots), From: uint64(mv.From), To: uint64(mv.To), Keys: k, Bytes: b})
	}
	out.After = loads(after.Groups, &keys, &bytes)
	if dryRun || len(moves) == 0 {
		return out, nil
	}
	var all []kvd.GroupID
	for _, g := range m.Groups {
		all = append(all, g.ID)
	}
	if err := s.checkFeature(groupHosts(m, all...), api.FeatureSlotMoves); err != nil {
		return api.RebalancePlan{}, err
	}
	for _, mv := range moves {
		if n := s.lowDisk(groupHosts(m, mv.To)); n != "" {
			return api.RebalancePlan{}, fmt.Errorf("node %s, which holds a replica of group %d, is short of disk: the plan's copies would fill it: %w", n, mv.To, kvd.ErrConflict)
		}
	}
	next, err := s.editMap(ctx, mapEdit{Op: editStartMoves, Moves: moves})
	if err != nil {
		return api.RebalancePlan{}, err
	}
	for i := range out.Moves {
		out.Moves[i].ID = moves[i].ID
	}
	out.Epoch = next.Epoch
	kick(s.membershipKick)
	s.log.Info("rebalance started", "moves", len(moves), "epoch", next.Epoch)
	return out, nil
}

// loads sums keys and bytes per group.
func loads(groups []kvd.Group, keys, bytes *[kvd.SlotCount]uint64) []api.GroupLoad {
	out := make([]api.GroupLoad, 0, len(groups))
	for _, g := range groups {
		gl := api.GroupLoad{Group: uint64(g.ID)}
		var set kvd.SlotSet
		set.AddRanges(g.Slots)
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if set.Has(sl) {
				gl.Slots++
				gl.Keys += keys[sl]
				gl.Bytes += bytes[sl]
			}
		}
		out = append(out, gl)
	}
	return out
}

// plannedMove is a move of a rebalance plan.
type plannedMove struct {
	from, to kvd.GroupID
	slots    kvd.SlotSet
}

// planRebalance plans moves that even out the groups' shares of keys and
// bytes (and of slots, which weighs little, so that an empty cluster
// still spreads its slots). Each group's weight is the mean of its shares;
// the heaviest gives a run of its slots, from the top of its ranges, to
// the lightest, until no group is more than a tenth of an even share
// away from it. Moves between the same two groups are merged.
func planRebalance(m *kvd.Map, keys, bytes *[kvd.SlotCount]uint64) []plannedMove {
	var totalK, totalB uint64
	for sl := 0; sl < kvd.SlotCount; sl++ {
		totalK += keys[sl]
		totalB += bytes[sl]
	}
	weight := func(sl int) float64 {
		w, parts := 1.0/kvd.SlotCount*0.25, 0.25
		if totalK > 0 {
			w += float64(keys[sl]) / float64(totalK)
			parts++
		}
		if totalB > 0 {
			w += float64(bytes[sl]) / float64(totalB)
			parts++
		}
		return w / parts
	}
	n := len(m.Groups)
	if n < 2 {
		return nil
	}
	own := map[kvd.GroupID]*kvd.SlotSet{}
	load := map[kvd.GroupID]float64{}
	for _, g := range m.Groups {
		set := &kvd.SlotSet{}
		set.AddRanges(g.Slots)
		own[g.ID] = set
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if set.Has(sl) {
				load[g.ID] += weight(sl)
			}
		}
	}
	even := 1.0 / float64(n)
	merged := map[[2]kvd.GroupID]*plannedMove{}
	var order [][2]kvd.GroupID
	// Groups above an even share only give, those below only take: no
	// slot is planned to move twice.
	giver := map[kvd.GroupID]bool{}
	for _, g := range m.Groups {
		giver[g.ID] = load[g.ID] > even
	}
	for iter := 0; iter < 4*n; iter++ {
		var hi, lo kvd.GroupID
		for _, g := range m.Groups {
			if giver[g.ID] && (hi == 0 || load[g.ID] > load[hi]) {
				hi = g.ID
			}
			if !giver[g.ID] && (lo == 0 || load[g.ID] < load[lo]) {
				lo = g.ID
			}
		}
		if hi == 0 || lo == 0 {
			break
		}
		if load[hi]-even < even/10 && even-load[lo] < even/10 {
			break
		}
		need := min(load[hi]-even, even-load[lo])
		if need <= 0 {
			break
		}
		var chunk kvd.SlotSet
		got := 0.0
		for sl := kvd.SlotCount - 1; sl >= 0 && got < need; sl-- {
			if !own[hi].Has(sl) {
				continue
			}
			w := weight(sl)
			if got > 0 && got+w > need && got+w-need > need-got {
				break // a whole slot more would overshoot further than stopping here
			}
			chunk.Add(sl)
			got += w
		}
		if chunk.Len() == 0 {
			break
		}
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if chunk.Has(sl) {
				own[hi][sl/64] &^= 1 << (sl % 64)
				own[lo].Add(sl)
			}
		}
		load[hi] -= got
		load[lo] += got
		key := [2]kvd.GroupID{hi, lo}
		if merged[key] == nil {
			merged[key] = &plannedMove{from: hi, to: lo}
			order = append(order, key)
		}
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if chunk.Has(sl) {
				merged[key].slots.Add(sl)
			}
		}
	}
	out := make([]plannedMove, 0, len(order))
	for _, k := range order {
		out = append(out, *merged[k])
	}
	return out
}
