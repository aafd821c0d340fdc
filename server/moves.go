package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// A slot move runs on the system group's leader (its driver), through
// steps that the map records, so that a new driver (after a crash, or a
// change of the system group's leader) knows where the move stands:
//
//  1. copying: the target drops whatever it holds of the slots and takes
//     a copy of the source's state of them (CmdMoveIngest), read page by
//     page from the source's leader; the position of the first page in
//     the source's history is where the catch-up starts.
//  2. catching_up: the target takes the current state of every key of the
//     slots changed since (read from the source's history), round after
//     round, until a round finds few changes.
//  3. handing_off: the map fences the slots, and the driver proposes that
//     map to the source, so that its own log refuses writes of the slots
//     from there on (reads go on). The transactions that hold locks in the
//     slots settle (the source takes no new lock there); the target takes
//     the last changes and the idempotency records; then the map gives
//     the slots to the target (the flip). Neither group serves them until
//     the source has applied the flip, when the driver records the move
//     done and the target starts serving.
//
// Before the flip, a driver that fails for good records the move failed:
// the fence lifts, the slots stay with the source, and the target's
// copies are dropped in the background. After the flip, the move can
// only finish. Every step names the driver's attempt, and the map refuses
// the steps of an older one; a new driver starts the copy over. Once a
// group no longer owns slots it holds keys of (a finished move's source,
// a failed move's target), its leader drops those keys (sweepStray).

// Move pacing.
const (
	// movePage bounds the bytes of keys and values per copied page.
	movePage = 512 << 10
	// moveChangedKeys bounds the keys per catch-up round page.
	moveChangedKeys = 512
	// catchUpRounds bounds the catch-up before the hand-off, and
	// catchUpEnough is a round small enough to hand off after.
	catchUpRounds = 50
	catchUpEnough = 64
	// lockDrain bounds the wait for transactions holding locks in the
	// slots at the hand-off: they finish, or pass their deadline and are
	// finished by the source's janitor. A lock that would outlast it
	// fails the move at once (its fence lifts).
	lockDrain = 30 * time.Second
	// moveStepTimeout bounds the retries of one step before the move
	// fails (before the flip; after it, the driver tries on), and
	// handOffStepTimeout while the slots are fenced: a target or source
	// that cannot be reached then fails the move within seconds, so
	// that the fence lifts.
	moveStepTimeout    = time.Minute
	handOffStepTimeout = 10 * time.Second
	// dedupMargin is how far before a move's start the idempotency
	// records copied at the hand-off go back (clocks of leaders differ).
	dedupMargin = time.Minute
)

// moveDrivers are the moves this node drives, by id.
type moveDrivers struct {
	mu      sync.Mutex
	running map[string]*moveRun
}

// moveRun is one running driver.
type moveRun struct {
	cancel   context.CancelFunc
	keys     atomic.Uint64
	bytes    atomic.Uint64
	rounds   atomic.Int64
	handOffs atomic.Int64
	// fenced is when this driver fenced the slots (its goroutine only).
	fenced time.Time
}

func (r *moveRun) progress() *api.MoveProgress {
	return &api.MoveProgress{KeysCopied: r.keys.Load(), BytesCopied: r.bytes.Load(), CatchUpRounds: int(r.rounds.Load()), HandOffMillis: r.handOffs.Load()}
}

// superviseMoves runs on every node: on the system group's leader it
// starts a driver for every move under way that has none here, and
// starts pending moves whose groups are free; elsewhere it stops its
// drivers.
func (s *Server) superviseMoves(ctx context.Context) {
	sys, ok := s.hosted()[s.Map().SystemGroup()]
	leads := ok && sys.Settled()
	s.moves.mu.Lock()
	defer s.moves.mu.Unlock()
	if !leads {
		for id, r := range s.moves.running {
			r.cancel()
			delete(s.moves.running, id)
		}
		return
	}
	m := sys.Store().Map()
	if m == nil {
		return
	}
	busy := map[kvd.GroupID]bool{}
	for _, mv := range m.Moves {
		if mv.Running() {
			busy[mv.From], busy[mv.To] = true, true
		}
	}
	for _, mv := range m.Moves {
		if !mv.Active() || s.moves.running[mv.ID] != nil {
			continue
		}
		if mv.State == kvd.MovePending {
			if busy[mv.From] || busy[mv.To] {
				continue
			}
			busy[mv.From], busy[mv.To] = true, true
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &moveRun{cancel: cancel}
		s.moves.running[mv.ID] = r
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			defer cancel()
			s.driveMove(rctx, mv, r)
			s.moves.mu.Lock()
			if s.moves.running[mv.ID] == r {
				delete(s.moves.running, mv.ID)
			}
			s.moves.mu.Unlock()
			kick(s.membershipKick)
		}()
	}
}

// errStale means another driver took the move over.
var errStale = errors.New("another driver took the move over")

// driveMove claims move mv (a new attempt) and carries it to its end;
// before the flip, a failure for good fails the move.
func (s *Server) driveMove(ctx context.Context, mv kvd.Move, r *moveRun) {
	m, err := s.stepMove(ctx, mv, moveStep{Claim: true})
	if err != nil {
		s.log.Warn("slot move: cannot take the move on", "move", mv.ID, "err", err)
		return
	}
	mv, _ = m.Move(mv.ID)
	s.log.Info("slot move driven", "move", mv.ID, "from", mv.From, "to", mv.To, "slots", mv.Slots, "state", mv.State, "attempt", mv.Attempt)
	err = s.runMove(ctx, &mv, r)
	switch {
	case err == nil:
		s.metrics.moves.WithLabelValues(kvd.MoveDone).Inc()
		s.log.Info("slot move done", "move", mv.ID, "from", mv.From, "to", mv.To, "slots", mv.Slots, "keys", r.keys.Load(), "hand_off_ms", r.handOffs.Load())
	case errors.Is(err, errStale) || ctx.Err() != nil:
		s.log.Info("slot move left to another driver", "move", mv.ID, "err", err)
	case mv.Flipped:
		s.log.Warn("slot move: flipped, finishing later", "move", mv.ID, "err", err)
	default:
		s.log.Warn("slot move failed; the slots stay with their group", "move", mv.ID, "err", err)
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, ferr := s.stepMove(fctx, mv, moveStep{State: kvd.MoveFailed, Error: err.Error()}); ferr != nil {
			s.log.Warn("slot move: record the failure", "move", mv.ID, "err", ferr)
			return
		}
		s.metrics.moves.WithLabelValues(kvd.MoveFailed).Inc()
		s.pushMap(fctx, mv.From)
	}
}

// stepMove records a step of mv's current attempt and returns the map
// after it; a step refused because the attempt is stale is errStale.
func (s *Server) stepMove(ctx context.Context, mv kvd.Move, st moveStep) (*kvd.Map, error) {
	st.ID, st.Attempt = mv.ID, mv.Attempt
	var m *kvd.Map
	err := s.moveRetry(ctx, "record the move's step", func(ctx context.Context) error {
		var err error
		m, err = s.editMap(ctx, mapEdit{Op: editMoveStep, Step: &st})
		return err
	})
	if errors.Is(err, kvd.ErrConflict) || errors.Is(err, kvd.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", errStale, err)
	}
	return m, err
}

// runMove carries mv through its steps (see the comment at the top).
func (s *Server) runMove(ctx context.Context, mv *kvd.Move, r *moveRun) error {
	if !mv.Flipped {
		if err := s.copyMove(ctx, mv, r); err != nil {
			return err
		}
	}
	// The flip: the target, then the source apply it; then the move is
	// done, and the target serves.
	for _, g := range []kvd.GroupID{mv.To, mv.From} {
		if err := s.moveRetry(ctx, "apply the flip", func(ctx context.Context) error { return s.pushMap(ctx, g) }); err != nil {
			return err
		}
	}
	m, err := s.stepMove(ctx, *mv, moveStep{State: kvd.MoveDone})
	if err != nil {
		return err
	}
	*mv, _ = m.Move(mv.ID)
	if !r.fenced.IsZero() {
		r.handOffs.Store(time.Since(r.fenced).Milliseconds())
		s.metrics.moveHandOff.Observe(time.Since(r.fenced).Seconds())
	}
	for _, g := range []kvd.GroupID{mv.To, mv.From} {
		_ = s.moveRetry(ctx, "apply the end of the move", func(ctx context.Context) error { return s.pushMap(ctx, g) })
	}
	return nil
}

// copyMove runs the steps before the flip, and the flip.
func (s *Server) copyMove(ctx context.Context, mv *kvd.Move, r *moveRun) error {
	var slots kvd.SlotSet
	slots.AddRanges(mv.Slots)
	// ingest sends a piece of the copy to the target; targetIndex is the
	// index of the last piece's entry in the target's log.
	var targetIndex uint64
	ingest := func(in store.MoveIngest) error {
		in.Move, in.Attempt = mv.ID, mv.Attempt
		if n := s.lowDisk(groupHosts(s.Map(), mv.To)); n != "" && (len(in.Keys) > 0 || len(in.Dedup) > 0) {
			// The move fails (and its copies are dropped) rather than
			// filling the disk of a replica of the target.
			return fmt.Errorf("node %s, which holds a replica of group %d, is short of disk: %w", n, mv.To, kvd.ErrInsufficientStorage)
		}
		data, _ := json.Marshal(in)
		return s.moveRetry(ctx, "send a piece of the copy", func(ctx context.Context) error {
			res, err := s.proposeIn(ctx, mv.To, store.Cmd{Kind: store.CmdMoveIngest, Data: data})
			targetIndex = res.Version
			return err
		})
	}
	step := func(st moveStep) error {
		m, err := s.stepMove(ctx, *mv, st)
		if err == nil {
			*mv, _ = m.Move(mv.ID)
		}
		return err
	}
	// Both groups store the map that names the move: the target takes
	// its copies only then.
	for _, g := range []kvd.GroupID{mv.To, mv.From} {
		if err := s.moveRetry(ctx, "store the move in the groups' logs", func(ctx context.Context) error { return s.pushMap(ctx, g) }); err != nil {
			return err
		}
	}
	if mv.State == kvd.MoveHandingOff {
		// A driver stopped during the hand-off: the copy starts over,
		// and the slots take writes meanwhile (the fence lifts).
		if err := step(moveStep{State: kvd.MoveCatchingUp}); err != nil {
			return err
		}
		if err := s.moveRetry(ctx, "lift the fence in the source's log", func(ctx context.Context) error { return s.pushMap(ctx, mv.From) }); err != nil {
			return err
		}
	}
	var from store.Pos
	for restart := 0; ; restart++ {
		if err := ingest(store.MoveIngest{Reset: true}); err != nil {
			return err
		}
		var err error
		from, err = s.copySlots(ctx, mv, &slots, ingest, r)
		if err != nil {
			return err
		}
		if mv.State == kvd.MoveCopying {
			if err := step(moveStep{State: kvd.MoveCatchingUp}); err != nil {
				return err
			}
			failpoint.Hit(failpoint.MoveCatchingUp)
		}
		lost := false
		for round := 0; round < catchUpRounds; round++ {
			n, next, _, _, err := s.catchUp(ctx, mv, &slots, from, ingest)
			if errors.Is(err, store.ErrHistoryLost) {
				lost = true
				break
			}
			if err != nil {
				return err
			}
			r.rounds.Add(1)
			from = next
			if n < catchUpEnough {
				break
			}
		}
		if !lost {
			break
		}
		if restart >= 2 {
			return fmt.Errorf("the source's history keeps dropping changes before they are copied: writes outpace the copy (raise the history bounds)")
		}
		s.log.Info("slot move: the source's history dropped changes not yet copied; copying again", "move", mv.ID)
	}
	// The idempotency records made so far go before the fence; those
	// made since (and a margin for the clocks of the source's leaders)
	// after it.
	dedupSince, err := s.copyDedup(ctx, mv, time.UnixMilli(mv.Started).Add(-dedupMargin).UnixNano(), ingest)
	if err != nil {
		return err
	}
	if err := step(moveStep{State: kvd.MoveHandingOff}); err != nil {
		return err
	}
	r.fenced = time.Now()
	ctx = context.WithValue(ctx, stepTimeoutKey{}, handOffStepTimeout)
	if err := s.moveRetry(ctx, "fence the slots in the source's log", func(ctx context.Context) error { return s.pushMap(ctx, mv.From) }); err != nil {
		return err
	}
	failpoint.Hit(failpoint.MoveHandingOff)
	if err := s.drainLocks(ctx, mv, &slots); err != nil {
		return err
	}
	var last store.Pos
	var high uint64
	for {
		n, next, l, h, err := s.catchUp(ctx, mv, &slots, from, ingest)
		if err != nil {
			return err
		}
		from, last, high = next, l, max(high, h)
		if n == 0 {
			break
		}
	}
	if _, err := s.copyDedup(ctx, mv, dedupSince-int64(dedupMargin), ingest); err != nil {
		return err
	}
	// An empty piece marks, in the target's log, the end of the copy:
	// the target's changes of the slots all come after its index, with
	// versions above every version of the source (a key deleted there
	// before the copy was not copied, but its deletion had a version).
	if err := ingest(store.MoveIngest{MinVersion: high}); err != nil {
		return err
	}
	return step(moveStep{Flip: true, SourceIndex: last.Index, SourceSeq: last.Seq, TargetIndex: targetIndex})
}

// copySlots copies the source's keys of slots to the target, page by
// page, and returns the history position to catch up from.
func (s *Server) copySlots(ctx context.Context, mv *kvd.Move, slots *kvd.SlotSet, ingest func(store.MoveIngest) error, r *moveRun) (store.Pos, error) {
	var from store.Pos
	after := ""
	for first := true; ; first = false {
		page, err := s.readSource(ctx, "copy a page of the slots", mv.From, moveReadRequest{Op: "copy", Slots: mv.Slots, After: after})
		if err != nil {
			return from, err
		}
		if first {
			from = store.Pos{Index: page.At, Seq: math.MaxUint32}
		}
		if len(page.Keys) > 0 {
			if err := ingest(store.MoveIngest{Keys: page.Keys}); err != nil {
				return from, err
			}
		}
		if first {
			failpoint.Hit(failpoint.MoveCopying)
		}
		for _, k := range page.Keys {
			r.keys.Add(1)
			r.bytes.Add(uint64(len(k.Key) + len(k.Value)))
		}
		if page.Next == "" {
			return from, nil
		}
		after = page.Next
	}
}

// catchUp sends the target one round of the changes made in the source
// since position from: how many keys it sent, where the next round
// starts, the position of the last event of the source's history it saw,
// and the source's newest version. store.ErrHistoryLost means the
// history no longer reaches back to from.
func (s *Server) catchUp(ctx context.Context, mv *kvd.Move, slots *kvd.SlotSet, from store.Pos, ingest func(store.MoveIngest) error) (int, store.Pos, store.Pos, uint64, error) {
	sent := 0
	var last store.Pos
	var high uint64
	for {
		page, err := s.readSource(ctx, "read the changes since the copy", mv.From, moveReadRequest{Op: "changes", Slots: mv.Slots, Pos: from})
		if err != nil {
			return sent, from, last, high, err
		}
		if from.Less(page.Floor) {
			return sent, from, last, high, store.ErrHistoryLost
		}
		last, high = page.Last, max(high, page.High)
		if len(page.Keys) > 0 {
			if err := ingest(store.MoveIngest{Keys: page.Keys}); err != nil {
				return sent, from, last, high, err
			}
		}
		sent += len(page.Keys)
		if page.Upto == from || !page.More {
			return sent, page.Upto, last, high, nil
		}
		from = page.Upto
	}
}

// drainLocks waits until no transaction holds a lock in the slots (the
// source, fenced, takes no new one), helping expired ones along.
func (s *Server) drainLocks(ctx context.Context, mv *kvd.Move, slots *kvd.SlotSet) error {
	until := time.Now().Add(lockDrain)
	for attempt := 0; ; attempt++ {
		page, err := s.readSource(ctx, "read the locks in the slots", mv.From, moveReadRequest{Op: "locks", Slots: mv.Slots})
		if err != nil {
			return err
		}
		if len(page.Locks) == 0 {
			return nil
		}
		latest := int64(0)
		for _, l := range page.Locks {
			latest = max(latest, l.Deadline)
		}
		if time.Now().After(until) || time.Unix(0, latest).After(until) {
			return fmt.Errorf("transactions %s hold locks in the slots past the hand-off's wait (%v)", lockTxns(page.Locks), lockDrain)
		}
		if lockBackoff.Wait(ctx, attempt) != nil {
			return ctx.Err()
		}
	}
}

func lockTxns(locks []store.HeldLock) string {
	seen := map[string]bool{}
	out := ""
	for _, l := range locks {
		if !seen[l.Txn] && len(seen) < 5 {
			seen[l.Txn] = true
			if out != "" {
				out += ", "
			}
			out += l.Txn
		}
	}
	return out
}

// copyDedup copies the source's idempotency records made since Unix ns
// since, so that a retry of a request made before the move finds its
// outcome in the target; it returns the time of the newest one copied
// (since, if none).
func (s *Server) copyDedup(ctx context.Context, mv *kvd.Move, since int64, ingest func(store.MoveIngest) error) (int64, error) {
	newest := since
	after := ""
	for {
		page, err := s.readSource(ctx, "read the idempotency records", mv.From, moveReadRequest{Op: "dedup", Since: since, After: after})
		if err != nil {
			return newest, err
		}
		if len(page.Dedup) > 0 {
			if err := ingest(store.MoveIngest{Dedup: page.Dedup}); err != nil {
				return newest, err
			}
		}
		newest = max(newest, page.Newest)
		if page.Next == "" {
			return newest, nil
		}
		after = page.Next
	}
}

// moveRetry runs fn until it succeeds, fails for good, or moveStepTimeout
// passes: errors that promise nothing happened (unavailable, not the
// leader) and unknown outcomes (every step is safe to repeat) are tried
// again.
func (s *Server) moveRetry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	limit := moveStepTimeout
	if d, ok := ctx.Value(stepTimeoutKey{}).(time.Duration); ok {
		limit = d
	}
	deadline := time.Now().Add(limit)
	var err error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errStale) || errors.Is(err, kvd.ErrConflict) || errors.Is(err, kvd.ErrNotFound) || errors.Is(err, kvd.ErrInvalid) ||
			errors.Is(err, kvd.ErrWrongGroup) || errors.Is(err, kvd.ErrInsufficientStorage) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		s.log.Debug("slot move step failed; trying again", "step", what, "err", err)
		if leaderBackoff.Wait(ctx, attempt+4) != nil {
			return ctx.Err()
		}
	}
}

// stepTimeoutKey carries, in a driver's context, a bound on its steps'
// retries other than moveStepTimeout.
type stepTimeoutKey struct{}

// readSource reads a piece of group g's state for a move (moveRead),
// retried as a step (moveRetry).
func (s *Server) readSource(ctx context.Context, what string, g kvd.GroupID, req moveReadRequest) (moveReadAnswer, error) {
	var page moveReadAnswer
	err := s.moveRetry(ctx, what, func(ctx context.Context) error {
		var err error
		page, err = s.moveRead(ctx, g, req)
		return err
	})
	return page, err
}

// proposeIn proposes cmd in group g (Propose), and returns the command's
// refusal as its error.
func (s *Server) proposeIn(ctx context.Context, g kvd.GroupID, cmd store.Cmd) (store.Result, error) {
	res, err := s.Propose(ctx, g, cmd)
	if err == nil {
		err = res.Err
	}
	return res, err
}

// pushMap proposes this node's map to group g, so that g's log holds it
// (or a newer one) once it returns.
func (s *Server) pushMap(ctx context.Context, g kvd.GroupID) error {
	data, err := json.Marshal(s.Map())
	if err != nil {
		return err
	}
	if _, err := s.proposeIn(ctx, g, store.Cmd{Kind: store.CmdSetMap, Data: data}); err != nil {
		return fmt.Errorf("store the map in group %d: %w", g, err)
	}
	return nil
}

// moveReadRequest asks a group's leader for a piece of a move's source
// state (POST /v1/internal/moveread).
type moveReadRequest struct {
	// Op is copy, changes, locks or dedup.
	Op    string          `json:"op"`
	Slots []kvd.SlotRange `json:"slots,omitempty"`
	After string          `json:"after,omitempty"`
	Pos   store.Pos       `json:"pos"`
	Since int64           `json:"since,omitempty"`
}

// moveReadAnswer answers a moveReadRequest.
type moveReadAnswer struct {
	Keys  []store.MovedKey   `json:"keys,omitempty"`
	Dedup []store.MovedDedup `json:"dedup,omitempty"`
	Locks []store.HeldLock   `json:"locks,omitempty"`
	Next  string             `json:"next,omitempty"`
	At    uint64             `json:"at,omitempty"`
	Upto  store.Pos          `json:"upto"`
	Floor store.Pos          `json:"floor"`
	// SlotKeys and SlotBytes count, per slot, the keys the group holds
	// and their bytes (op stats).
	SlotKeys  []uint64 `json:"slot_keys,omitempty"`
	SlotBytes []uint64 `json:"slot_bytes,omitempty"`
	// Newest is the time of the newest idempotency record read (op
	// dedup), Unix ns.
	Newest int64 `json:"newest,omitempty"`
	// More tells that changes were left for the next page, Last is the
	// position of the history's last event (op changes).
	More bool      `json:"more,omitempty"`
	Last store.Pos `json:"last"`
	// High is the source's newest version (op changes).
	High uint64 `json:"high,omitempty"`
}

// moveRead reads a piece of group g's state for a move, at g's leader.
func (s *Server) moveRead(ctx context.Context, g kvd.GroupID, req moveReadRequest) (moveReadAnswer, error) {
	retry := func(err error) bool {
		return errors.Is(err, kvd.ErrUnavailable) && !errors.Is(err, kvd.ErrUnknownOutcome)
	}
	return atLeader(ctx, s, g, retry,
		func(local *replication.Group) (moveReadAnswer, error) { return moveReadLocal(ctx, local, req) },
		func(target string) (moveReadAnswer, error) {
			body, _ := json.Marshal(req)
			out, err := s.call(ctx, peerCall{op: "read a move's source at", method: http.MethodPost, node: target,
				path: "/v1/internal/moveread?" + groupQuery(g), body: body, group: g, limit: 64 << 20, retryRefusals: true})
			if err != nil {
				return moveReadAnswer{}, err
			}
			var a moveReadAnswer
			if err := json.Unmarshal(out, &a); err != nil {
				return a, fmt.Errorf("read a move's source at %s: %v: %w", target, err, kvd.ErrUnavailable)
			}
			return a, nil
		})
}

// MoveRead serves the internal move read endpoint for group g, which this
// node must lead.
func (s *Server) MoveRead(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
	grp, err := s.replica(g)
	if err != nil {
		return nil, err
	}
	var req moveReadRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("%w: move read: %v", kvd.ErrInvalid, err)
	}
	a, err := moveReadLocal(ctx, grp, req)
	if err != nil {
		return nil, err
	}
	return json.Marshal(a)
}

// moveReadLocal reads a piece of g's state for a move, linearizably.
func moveReadLocal(ctx context.Context, g *replication.Group, req moveReadRequest) (moveReadAnswer, error) {
	if !g.IsLeader() {
		return moveReadAnswer{}, &kvd.NotLeaderError{Group: g.ID(), Leader: g.LeaderID()}
	}
	if err := g.ReadBarrier(ctx, kvd.Linearizable); err != nil {
		return moveReadAnswer{}, err
	}
	var slots kvd.SlotSet
	slots.AddRanges(req.Slots)
	db := g.Store()
	var a moveReadAnswer
	var err error
	switch req.Op {
	case "copy":
		a.Keys, a.Next, a.At, err = db.CopySlots(&slots, req.After, movePage)
	case "changes":
		var c store.Changes
		c, err = db.ChangedKeys(&slots, req.Pos, moveChangedKeys, movePage)
		a.Keys, a.Upto, a.Floor, a.Last, a.More, a.High = c.Keys, c.Upto, c.Floor, c.Last, c.More, c.High
	case "locks":
		var all []store.HeldLock
		all, err = db.Locks()
		for _, l := range all {
			if slots.Has(kvd.Slot(l.Key)) {
				a.Locks = append(a.Locks, l)
			}
		}
	case "stats":
		var k, b [kvd.SlotCount]uint64
		k, b, err = db.SlotStats()
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if !slots.Has(sl) { // leftovers of moves are not the group's
				k[sl], b[sl] = 0, 0
			}
		}
		a.SlotKeys, a.SlotBytes = k[:], b[:]
	case "dedup":
		a.Dedup, a.Next, a.Newest, err = db.DedupSince(req.Since, req.After, 1024)
	case "haskeys":
		a.More, err = db.HasKeys()
	default:
		return a, fmt.Errorf("%w: move read: unknown op %q", kvd.ErrInvalid, req.Op)
	}
	return a, err
}

// sweepStray drops, in each group this node leads, a batch of the keys
// it holds of slots it no longer owns (a finished move's source, a
// failed move's target).
func (s *Server) sweepStray(ctx context.Context) {
	for gid, g := range s.hosted() {
		if !g.Settled() {
			continue
		}
		keys, err := g.Store().StrayKeys(1000)
		if err != nil || len(keys) == 0 {
			continue
		}
		data, _ := json.Marshal(store.DropKeys{Keys: keys})
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := g.Propose(pctx, store.Cmd{Kind: store.CmdDropKeys, Data: data})
		cancel()
		if err != nil {
			s.log.Debug("drop keys of slots moved away", "group", gid, "err", err)
			continue
		}
		s.metrics.strayDropped.Add(float64(res.Version))
	}
}
