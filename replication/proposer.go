package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// A proposal is one command waiting to be put into a log entry.
type proposal struct {
	cmd  store.Cmd
	size int64
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

// An entry is one log entry this replica proposed, until it is settled:
// by the FSM when it applies the entry (on this replica, as leader or
// after losing leadership), or by a definite failure.
type entry struct {
	seq    uint64
	size   int64
	future raft.ApplyFuture
	props  []*proposal
	// index is set once raft said leadership was lost after appending:
	// if this replica applies another entry at index, ours is gone.
	index uint64
}

// pendingEntries tracks the entries this replica proposed and that are
// not yet settled.
type pendingEntries struct {
	mu      sync.Mutex // protects m and orphans
	m       map[uint64]*entry
	orphans map[uint64]*entry // seq -> entry whose leader stepped down
}

// Propose replicates cmd through the group's log and returns its result
// once it is applied on this replica. Concurrent proposals are coalesced
// into shared log entries.
//
// Errors: a *kvd.NotLeaderError (nothing proposed) when this replica is
// not the leader; kvd.ErrOverloaded (nothing proposed) when the queue of
// proposals is full (in bytes or commands); kvd.ErrUnavailable when
// nothing was or ever will be applied for another reason; kvd.ErrUnknownOutcome when the command was
// handed to Raft and its fate is not known before ctx ends: it may still
// take effect. When leadership moves while a command is in flight, the
// replica waits to see whether the entry is applied (success) or replaced
// (definite failure), within ctx.
func (g *Group) Propose(ctx context.Context, cmd store.Cmd) (store.Result, error) {
	if err := g.checkLeader(); err != nil {
		return store.Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.Result{}, fmt.Errorf("group %d: propose: %w (%v)", g.id, kvd.ErrUnavailable, err)
	}
	p := &proposal{cmd: cmd, size: int64(cmd.EncodedSize()), done: make(chan proposalResult, 1)}
	// Refuse at once rather than queue without bound: a full queue means
	// the group already has more than it can write for a while.
	if q := g.queued.Add(p.size); q > int64(g.cfg.MaxQueueBytes) && q != p.size {
		g.queued.Add(-p.size)
		g.stats.shed.Add(1)
		return store.Result{}, fmt.Errorf("group %d: propose: %d bytes already queued: %w", g.id, q-p.size, kvd.ErrOverloaded)
	}
	select {
	case g.props <- p:
	case <-g.ctx.Done():
		g.queued.Add(-p.size)
		return store.Result{}, fmt.Errorf("group %d: propose: %w", g.id, kvd.ErrClosed)
	default:
		g.queued.Add(-p.size)
		g.stats.shed.Add(1)
		return store.Result{}, fmt.Errorf("group %d: propose: %d proposals already queued: %w", g.id, cap(g.props), kvd.ErrOverloaded)
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
	var seq uint64
	buf := make([]byte, 0, 64<<10)
	for {
		if !g.waitInflight() {
			g.failQueued()
			return
		}
		var first *proposal
		if carry != nil {
			first, carry = carry, nil
		} else {
			select {
			case first = <-g.props:
				g.queued.Add(-first.size)
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
		claim(keys, &first.cmd)
	drain:
		for len(batch) < g.cfg.MaxBatchCmds && size < g.cfg.MaxBatchBytes {
			select {
			case p := <-g.props:
				g.queued.Add(-p.size)
				if !p.state.CompareAndSwap(proposalQueued, proposalTaken) {
					continue
				}
				if !claim(keys, &p.cmd) {
					carry = p
					break drain
				}
				batch = append(batch, p)
				size += p.cmd.EncodedSize()
			default:
				break drain
			}
		}
		seq++
		b := store.Batch{Time: time.Now().UnixNano(), Origin: g.origin, Seq: seq, Cmds: make([]store.Cmd, len(batch))}
		for i, p := range batch {
			b.Cmds[i] = p.cmd
		}
		buf = b.AppendEncode(buf[:0])
		data := append([]byte(nil), buf...)
		e := &entry{seq: seq, props: batch, size: int64(len(data))}
		g.inflightSize.Add(e.size)
		// Registered before raft sees it: the FSM may apply it at once.
		g.pending.mu.Lock()
		g.pending.m[seq] = e
		g.pending.mu.Unlock()
		e.future = g.raft.Apply(data, g.cfg.ApplyTimeout)
		select {
		case g.inflight <- e:
		case <-g.ctx.Done():
			// The completer has stopped; answer here.
			g.complete(e)
		}
	}
}

// releaseInflightLocked gives back an entry's bytes, once. The caller
// holds pending.mu.
func (g *Group) releaseInflightLocked(e *entry) {
	if e.size == 0 {
		return
	}
	if g.inflightSize.Add(-e.size) < int64(g.cfg.MaxInflightBytes) {
		kick(g.inflightFree)
	}
	e.size = 0
}

// waitInflight waits until the entries handed to raft and not yet applied
// take less than MaxInflightBytes; it reports false if the group closed.
func (g *Group) waitInflight() bool {
	for g.inflightSize.Load() >= int64(g.cfg.MaxInflightBytes) {
		select {
		case <-g.inflightFree:
		case <-time.After(50 * time.Millisecond):
		case <-g.ctx.Done():
			return false
		}
	}
	return true
}

// claim records the keys c writes in keys, unless one is already there
// (then it records nothing and reports false).
func claim(keys map[string]struct{}, c *store.Cmd) bool {
	if c.Key != "" {
		if _, dup := keys[c.Key]; dup {
			return false
		}
	}
	for _, k := range c.WriteKeys {
		if _, dup := keys[k]; dup {
			return false
		}
	}
	if c.Key != "" {
		keys[c.Key] = struct{}{}
	}
	for _, k := range c.WriteKeys {
		keys[k] = struct{}{}
	}
	return true
}

// failQueued answers proposals still queued at shutdown: none was proposed.
func (g *Group) failQueued() {
	for {
		select {
		case p := <-g.props:
			g.queued.Add(-p.size)
			if p.state.CompareAndSwap(proposalQueued, proposalTaken) {
				p.done <- proposalResult{err: fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)}
			}
		default:
			return
		}
	}
}

// runCompleter waits for each entry's future, in log order, and settles
// the entries the FSM did not.
func (g *Group) runCompleter() {
	for e := range g.inflight {
		g.complete(e)
	}
}

func (g *Group) complete(e *entry) {
	ferr := g.waitFuture(e.future)
	if ferr == nil {
		// Applied: the FSM has settled it, unless the entry was at or
		// below the applied index (a restore took the state past it) or
		// this replica closed before applying it. Either way it is
		// committed, and takes effect: the answer is only unknown.
		if r, ok := e.future.Response().(applyResult); ok && r.err != nil {
			g.settle(e.seq, nil, fmt.Errorf("group %d: entry %d committed, not applied here: %v: %w", g.id, e.future.Index(), r.err, kvd.ErrUnknownOutcome))
			return
		}
		g.settle(e.seq, nil, fmt.Errorf("group %d: entry %d skipped on apply: %w", g.id, e.future.Index(), kvd.ErrUnknownOutcome))
		return
	}
	err := g.classifyApplyError(ferr)
	if failpoint.Mutant(failpoint.MutantAckBeforeCommit) && errors.Is(ferr, raft.ErrLeadershipLost) {
		// Planted bug: appended is taken for committed.
		acked := make([]store.Result, len(e.props))
		for i := range acked {
			acked[i].Version = e.future.Index()
		}
		g.settle(e.seq, acked, nil)
		return
	}
	if !errors.Is(err, kvd.ErrUnknownOutcome) || !errors.Is(ferr, raft.ErrLeadershipLost) {
		g.settle(e.seq, nil, err)
		return
	}
	// Leadership was lost after the entry was appended: it may still
	// commit under the next leader. This replica will learn which when it
	// applies that index: our entry (the FSM settles it) or another one
	// (settled below as not applied).
	idx := e.future.Index()
	g.pending.mu.Lock()
	if _, open := g.pending.m[e.seq]; !open {
		g.pending.mu.Unlock()
		return
	}
	if idx == 0 {
		g.pending.mu.Unlock()
		g.settle(e.seq, nil, err)
		return
	}
	e.index = idx
	g.pending.orphans[e.seq] = e
	replaced := g.db.AppliedIndex() >= idx
	// No longer in flight from the proposer's side: raft holds it, or has
	// dropped it. Its bytes must not hold up the proposals of a later
	// term (the next leader's no-op among them) while nothing advances
	// the applied index past it.
	g.releaseInflightLocked(e)
	g.pending.mu.Unlock()
	if replaced {
		g.settle(e.seq, nil, fmt.Errorf("group %d: leadership lost; entry %d was replaced: %w", g.id, idx, kvd.ErrUnavailable))
	}
}

// onApplied runs on the FSM goroutine after each applied batch: it
// settles this replica's own entries with their results, and orphaned
// entries whose index was taken by another entry.
func (g *Group) onApplied(entries []store.Entry, results [][]store.Result) {
	last := uint64(0)
	for i, en := range entries {
		last = max(last, en.Index)
		if en.Batch == nil || en.Batch.Origin != g.origin || results[i] == nil {
			continue
		}
		g.settle(en.Batch.Seq, results[i], nil)
	}
	g.pending.mu.Lock()
	var gone []uint64
	for seq, e := range g.pending.orphans {
		if e.index <= last {
			gone = append(gone, seq)
		}
	}
	g.pending.mu.Unlock()
	for _, seq := range gone {
		g.settle(seq, nil, fmt.Errorf("group %d: leadership lost; the entry was replaced: %w", g.id, kvd.ErrUnavailable))
	}
}

// settle answers an entry's proposals once: with results, one per
// command, or with err.
func (g *Group) settle(seq uint64, results []store.Result, err error) {
	g.pending.mu.Lock()
	e, ok := g.pending.m[seq]
	delete(g.pending.m, seq)
	delete(g.pending.orphans, seq)
	g.pending.mu.Unlock()
	if !ok {
		return
	}
	g.pending.mu.Lock()
	g.releaseInflightLocked(e)
	g.pending.mu.Unlock()
	if err == nil && len(results) != len(e.props) {
		err = fmt.Errorf("group %d: %d results for %d commands: %w", g.id, len(results), len(e.props), kvd.ErrUnknownOutcome)
	}
	for i, p := range e.props {
		if err != nil {
			p.done <- proposalResult{err: err}
			continue
		}
		p.done <- proposalResult{res: results[i]}
	}
}

// settleAll answers every unsettled entry at shutdown.
func (g *Group) settleAll() {
	g.pending.mu.Lock()
	var seqs []uint64
	for seq := range g.pending.m {
		seqs = append(seqs, seq)
	}
	g.pending.mu.Unlock()
	for _, seq := range seqs {
		g.settle(seq, nil, fmt.Errorf("group %d: replica closed: %w", g.id, kvd.ErrUnknownOutcome))
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
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// Nothing was appended, and leadership is moving: like a
		// follower that knows no leader yet (the caller waits, then
		// finds the new one).
		return &kvd.NotLeaderError{Group: g.id}
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("group %d: %v: %w", g.id, err, kvd.ErrUnavailable)
	}
	return fmt.Errorf("group %d: %v: %w", g.id, err, kvd.ErrUnknownOutcome)
}
