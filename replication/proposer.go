package replication

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// A proposal is one command waiting to be put into a log entry.
type proposal struct {
	cmd store.Cmd
	// state moves from queued to taken (by the proposer, which will put
	// it in an entry) or to abandoned (by its caller, whose context
	// ended first); whichever comes first wins.
	state atomic.Int32
	done  chan proposalResult
}

const (
	proposalQueued int32 = iota
	proposalTaken
	proposalAbandoned
)

type proposalResult struct {
	res store.Result
	err error
}

type inflightEntry struct {
	future raft.ApplyFuture
	props  []*proposal
}

// Propose replicates cmd through the group's log and returns its result
// once it is applied on this replica. Concurrent proposals are coalesced
// into shared log entries.
//
// Errors: a *kvd.NotLeaderError (nothing proposed) when this replica is
// not the leader; kvd.ErrUnavailable when nothing was proposed for another
// reason; kvd.ErrUnknownOutcome when the command was handed to Raft but its
// fate is unknown (leadership lost, timeout): it may still take effect.
func (g *Group) Propose(ctx context.Context, cmd store.Cmd) (store.Result, error) {
	if err := g.checkLeader(); err != nil {
		return store.Result{}, err
	}
	p := &proposal{cmd: cmd, done: make(chan proposalResult, 1)}
	select {
	case g.props <- p:
	case <-ctx.Done():
		return store.Result{}, fmt.Errorf("group %d: propose: %w (%v)", g.id, kvd.ErrUnavailable, ctx.Err())
	case <-g.ctx.Done():
		return store.Result{}, fmt.Errorf("group %d: propose: %w", g.id, kvd.ErrClosed)
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		if p.state.CompareAndSwap(proposalQueued, proposalAbandoned) {
			return store.Result{}, fmt.Errorf("group %d: propose: %w (%v before proposing)", g.id, kvd.ErrUnavailable, ctx.Err())
		}
		return store.Result{}, fmt.Errorf("group %d: propose: %w (%v)", g.id, kvd.ErrUnknownOutcome, ctx.Err())
	case <-g.raftDone:
		// Closed: the proposer may be gone without taking this one.
		select {
		case r := <-p.done:
			return r.res, r.err
		default:
		}
		if p.state.CompareAndSwap(proposalQueued, proposalAbandoned) {
			return store.Result{}, fmt.Errorf("group %d: propose: %w", g.id, kvd.ErrClosed)
		}
		return store.Result{}, fmt.Errorf("group %d: propose: replica closed: %w", g.id, kvd.ErrUnknownOutcome)
	}
}

// runProposer takes queued proposals, packs those that arrived together
// into one log entry (one encode, one log record, one apply) and hands it
// to Raft. While Raft is busy writing the previous entry, new proposals
// queue up, so batches grow with load: group commit. No entry holds two
// writes of the same key, so every change gets its own version.
func (g *Group) runProposer() {
	defer close(g.inflight)
	var carry *proposal
	buf := make([]byte, 0, 64<<10)
	for {
		var first *proposal
		if carry != nil {
			first, carry = carry, nil
		} else {
			select {
			case first = <-g.props:
			case <-g.ctx.Done():
				g.failQueued()
				return
			}
			if !first.state.CompareAndSwap(proposalQueued, proposalTaken) {
				continue
			}
		}
		batch := []*proposal{first}
		size := first.cmd.EncodedSize()
		keys := map[string]struct{}{}
		if first.cmd.Key != "" {
			keys[first.cmd.Key] = struct{}{}
		}
	drain:
		for len(batch) < g.cfg.MaxBatchCmds && size < g.cfg.MaxBatchBytes {
			select {
			case p := <-g.props:
				if !p.state.CompareAndSwap(proposalQueued, proposalTaken) {
					continue
				}
				if p.cmd.Key != "" {
					if _, dup := keys[p.cmd.Key]; dup {
						carry = p
						break drain
					}
					keys[p.cmd.Key] = struct{}{}
				}
				batch = append(batch, p)
				size += p.cmd.EncodedSize()
			default:
				break drain
			}
		}
		b := store.Batch{Time: time.Now().UnixNano(), Cmds: make([]store.Cmd, len(batch))}
		for i, p := range batch {
			b.Cmds[i] = p.cmd
		}
		buf = b.AppendEncode(buf[:0])
		data := append([]byte(nil), buf...)
		f := g.raft.Apply(data, g.cfg.ApplyTimeout)
		select {
		case g.inflight <- inflightEntry{future: f, props: batch}:
		case <-g.ctx.Done():
			// The completer has stopped; answer here.
			g.complete(inflightEntry{future: f, props: batch})
		}
	}
}

// failQueued answers proposals still queued at shutdown: none was proposed.
func (g *Group) failQueued() {
	for {
		select {
		case p := <-g.props:
			if p.state.CompareAndSwap(proposalQueued, proposalTaken) {
				p.done <- proposalResult{err: fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)}
			}
		default:
			return
		}
	}
}

// runCompleter waits for each entry's outcome, in log order, and answers
// its proposals.
func (g *Group) runCompleter() {
	for e := range g.inflight {
		g.complete(e)
	}
}

func (g *Group) complete(e inflightEntry) {
	var err error
	var results []store.Result
	if ferr := g.waitFuture(e.future); ferr != nil {
		err = g.classifyApplyError(ferr)
	} else {
		switch r := e.future.Response().(type) {
		case applyResult:
			if r.err != nil {
				err = fmt.Errorf("group %d: entry not applied: %v: %w", g.id, r.err, kvd.ErrInvalid)
			} else if len(r.results) != len(e.props) {
				// The entry was at or below the applied index: it cannot
				// be ours. Say we do not know rather than guess.
				err = fmt.Errorf("group %d: entry %d skipped on apply: %w", g.id, e.future.Index(), kvd.ErrUnknownOutcome)
			}
			results = r.results
		default:
			err = fmt.Errorf("group %d: unexpected apply response %T: %w", g.id, r, kvd.ErrUnknownOutcome)
		}
	}
	for i, p := range e.props {
		if err != nil {
			p.done <- proposalResult{err: err}
			continue
		}
		p.done <- proposalResult{res: results[i]}
	}
}

// waitFuture waits for an apply future, or for raft to shut down: raft
// never answers the futures of entries still queued for its FSM when it
// stops (hashicorp/raft#498), and waiting on them would hang Close. The
// goroutine left waiting on such a future ends with the process.
func (g *Group) waitFuture(f raft.ApplyFuture) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-g.raftDone:
		select {
		case err := <-done:
			return err
		default:
			return raft.ErrRaftShutdown
		}
	}
}

// classifyApplyError tells definite failures (nothing was appended) from
// unknown outcomes (the entry may still commit in a later term).
func (g *Group) classifyApplyError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	case errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("group %d: %v: %w", g.id, err, kvd.ErrUnavailable)
	}
	return fmt.Errorf("group %d: %v: %w", g.id, err, kvd.ErrUnknownOutcome)
}
