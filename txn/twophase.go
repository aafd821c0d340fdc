package txn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// twoPhase runs a transaction over several groups: prepare everywhere,
// the decision in the record group, then resolution of the others. It
// answers after the decision: the votes carry every write's version (a
// write takes its prepare's, see store.Lock.Version), and a read that
// meets a committed transaction's lock before the resolution lands
// resolves it first (the server's settle), so the commit is visible to
// every read that starts after the answer.
//
// Once locks may be taken the protocol runs to its end even if the caller
// gives up: abandoned half way, it would leave locks that block the keys
// until the deadline and recovery. It runs on a goroutine of the
// coordinator, bounded by the transaction's timeout and by Close, which
// goes on resolving after the answer. finished, if set, is called on that
// goroutine with the final outcome (after resolution), whether or not the
// caller is still there.
func (c *Coordinator) twoPhase(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, id string, finished func(Response, error)) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, fmt.Errorf("transaction not started: %v: %w", err, kvd.ErrUnavailable)
	}
	var groups []kvd.GroupID
	for g := range parts {
		groups = append(groups, g)
	}
	early := c.cfg.VersionsAtPrepare == nil || c.cfg.VersionsAtPrepare(groups)
	decided := make(chan twoPhaseResult, 1)
	final := make(chan Response, 1)
	started := c.spawn(func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		r := c.runTwoPhase(dctx, req, parts, rg, id, early)
		committed := r.err == nil && r.resp.Committed
		if committed {
			c.decided.Store(id, true)
			defer c.forgetDecided(id)
			if early {
				fill(&r.resp, req, r.outs)
			}
		}
		// The caller owns what it is answered; finished reads a copy, on
		// this goroutine, while the caller may already change its own.
		mine := cloneResponse(r.resp)
		decided <- r
		if !committed {
			if finished != nil {
				finished(mine, r.err)
			}
			return
		}
		// Committed: resolve the other groups (after the answer, or for
		// the versions it carries when the prepares could not fix them).
		rctx, rcancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer rcancel()
		outs := c.resolve(rctx, id, r.groups, rg, true)
		if !early {
			resp := Response{Committed: true}
			fill(&resp, req, append(r.outs, outs...))
			mine = cloneResponse(resp)
			final <- resp
		}
		if finished != nil {
			finished(mine, nil)
		}
	})
	if !started {
		return Response{}, fmt.Errorf("transaction not started: %w", kvd.ErrClosed)
	}
	var r twoPhaseResult
	select {
	case r = <-decided:
	case <-ctx.Done():
		select {
		case r = <-decided: // decided just now: report it
		default:
			return Response{}, fmt.Errorf("transaction %s: the caller gave up before the decision (it is decided without it): %v: %w", id, ctx.Err(), kvd.ErrUnknownOutcome)
		}
	}
	if early || r.err != nil || !r.resp.Committed {
		return r.resp, r.err
	}
	select {
	case resp := <-final:
		return resp, nil
	case <-ctx.Done():
		// Committed all the same; the versions written in groups not yet
		// resolved are left out.
		resp := Response{Committed: true}
		fill(&resp, req, r.outs)
		return resp, nil
	}
}

// twoPhaseResult is the outcome of a two-phase transaction at its
// decision; a commit carries the outcomes so far and the participants.
type twoPhaseResult struct {
	resp   Response
	err    error
	outs   []*store.TxnOutcome
	groups []kvd.GroupID
}

// runTwoPhase runs the protocol up to the decision: prepare in every
// group, then decide in the record group. After an abort it leaves the
// other groups' locks to a background resolution; after a commit their
// resolution is the caller's.
func (c *Coordinator) runTwoPhase(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, id string, early bool) twoPhaseResult {
	fail := func(resp Response, err error) twoPhaseResult { return twoPhaseResult{resp: resp, err: err} }
	deadline := c.cfg.Now().Add(c.cfg.Timeout).UnixNano()
	var groups []kvd.GroupID
	for g := range parts {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i] < groups[j] })

	// Phase 1: prepare everywhere at once.
	votes := c.prepare(ctx, parts, groups, rg, id, deadline, early)
	failpoint.Hit(failpoint.TxnBeforeDecision)
	allYes := true
	var outs []*store.TxnOutcome
	for _, g := range groups {
		v := votes[g]
		if v.err != nil || v.out == nil || !v.out.Vote {
			allYes = false
		}
		outs = append(outs, v.out)
	}
	if allYes && c.cfg.AfterPrepare != nil {
		if err := c.cfg.AfterPrepare(id); err != nil {
			return fail(Response{}, fmt.Errorf("transaction %s: stopped after prepare: %w", id, err))
		}
	}

	// Phase 2: the decision, in the record group.
	decided, err := c.decide(ctx, id, rg, allYes, parts[rg].writes)
	if err != nil {
		if allYes {
			return fail(Response{}, err) // may or may not have committed
		}
		// Not committed in any case: abort is the only possible outcome.
		c.resolveLater(id, groups, rg, false)
		return fail(c.refusedOrUnavailable(ctx, votes, outs))
	}
	if decided.State != store.TxnCommitted {
		c.resolveLater(id, groups, rg, false)
		if allYes {
			return fail(Response{}, fmt.Errorf("transaction %s was aborted by recovery before it could commit: %w", id, kvd.ErrConflict))
		}
		return fail(c.refusedOrUnavailable(ctx, votes, outs))
	}

	// Committed. Phase 3, the resolution of the other groups, follows
	// the answer.
	return twoPhaseResult{resp: Response{Committed: true}, outs: append(outs, decided), groups: groups}
}

// vote is a group's answer to a prepare.
type vote struct {
	out *store.TxnOutcome
	err error
}

// prepare asks every group to prepare its part, all at once, and returns
// their votes. The record group's prepare also names the participants,
// for its record.
func (c *Coordinator) prepare(ctx context.Context, parts map[kvd.GroupID]*part, groups []kvd.GroupID, rg kvd.GroupID, id string, deadline int64, early bool) map[kvd.GroupID]*vote {
	votes := make(map[kvd.GroupID]*vote, len(groups))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range groups {
		p := parts[g]
		prep := store.TxnPrepare{ID: id, RecordGroup: rg, Deadline: deadline, Compares: p.compares, Ops: p.ops, VersionAtPrepare: early}
		if g == rg {
			prep.Participants = groups
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.g.Propose(ctx, g, encode(store.CmdTxnPrepare, prep, p.writes))
			mu.Lock()
			votes[g] = &vote{out: res.Txn, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return votes
}

// decide sets the record to committed (commit) or aborted, resolving the
// record group's locks in the same entry, and returns the record's final
// state. A decision whose outcome is unknown is retried (it is a
// compare-and-set: retrying cannot change a decision already made).
func (c *Coordinator) decide(ctx context.Context, id string, rg kvd.GroupID, commit bool, writes []string) (*store.TxnOutcome, error) {
	cmd := encode(store.CmdTxnDecide, store.TxnDecide{ID: id, Commit: commit, ResolveHere: true}, writes)
	var out *store.TxnOutcome
	err := retryBackoff.Retry(ctx, func(err error) bool {
		return errors.Is(err, kvd.ErrUnknownOutcome) || errors.Is(err, kvd.ErrUnavailable)
	}, func() error {
		res, err := c.g.Propose(ctx, rg, cmd)
		if err == nil && res.Txn == nil {
			err = fmt.Errorf("no outcome: %w", kvd.ErrUnknownOutcome)
		}
		out = res.Txn
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transaction %s: decision in group %d: %v: %w", id, rg, err, kvd.ErrUnknownOutcome)
	}
	return out, nil
}

// resolve resolves the transaction's locks in every group but the record
// group, in parallel, retrying within ctx. It returns the outcomes it
// got; a group it could not reach is left to recovery.
func (c *Coordinator) resolve(ctx context.Context, id string, groups []kvd.GroupID, rg kvd.GroupID, commit bool) []*store.TxnOutcome {
	var mu sync.Mutex
	var outs []*store.TxnOutcome
	var wg sync.WaitGroup
	for _, g := range groups {
		if g == rg {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := Resolve(ctx, c.g, id, g, commit)
			if err != nil {
				c.log.Warn("transaction resolution left to recovery", "txn", id, "group", g, "err", err)
				return
			}
			mu.Lock()
			outs = append(outs, res.Txn)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return outs
}

// resolveLater resolves an aborted transaction's locks in the background,
// in every group but rg.
func (c *Coordinator) resolveLater(id string, groups []kvd.GroupID, rg kvd.GroupID, commit bool) {
	c.decided.Store(id, commit)
	if !c.spawn(func() { // closing: the janitors and readers resolve it
		defer c.forgetDecided(id)
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer cancel()
		c.resolve(ctx, id, groups, rg, commit)
	}) {
		c.decided.Delete(id)
	}
}

// ResolveLater resolves transaction id's locks in group g in the
// background (a reader that found the transaction decided helps it
// along). The decision must be known from the record.
func (c *Coordinator) ResolveLater(id string, g kvd.GroupID, commit bool) {
	c.resolveLater(id, []kvd.GroupID{g}, 0, commit)
}

// decidedMemory is how long a coordinator remembers a transaction it
// decided after resolving it: a replica that applies the resolution
// late may still show the lock to the next transaction meanwhile.
const decidedMemory = 10 * time.Second

// forgetDecided forgets transaction id's decision a while after its
// resolution.
func (c *Coordinator) forgetDecided(id string) {
	time.AfterFunc(decidedMemory, func() { c.decided.Delete(id) })
}

// cloneResponse returns a copy of r that shares no slice with it.
func cloneResponse(r Response) Response {
	r.Results = slices.Clone(r.Results)
	r.Failed = slices.Clone(r.Failed)
	return r
}
