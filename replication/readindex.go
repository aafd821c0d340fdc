package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
)

// WaitApplied waits until this replica has applied index idx.
func (g *Group) WaitApplied(ctx context.Context, idx uint64) error {
	for {
		if g.db.AppliedIndex() >= idx {
			return nil
		}
		ch := g.db.AppliedCh()
		if g.db.AppliedIndex() >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("group %d: wait for index %d (applied %d): %w (%v)", g.id, idx, g.db.AppliedIndex(), kvd.ErrUnavailable, ctx.Err())
		case <-g.ctx.Done():
			return fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)
		}
	}
}

// ReadBarrier waits until this replica may serve a read at consistency c:
// at once for Stale; for Linearizable, only on the leader, after a read
// index round confirmed by a quorum and applied here; for Follower, on any
// replica, after asking the leader for its read index and applying it.
// Concurrent reads share rounds. A *kvd.NotLeaderError means a
// linearizable read must go to the leader.
func (g *Group) ReadBarrier(ctx context.Context, c kvd.Consistency) error {
	var idx uint64
	var err error
	switch {
	case c == kvd.Stale:
		// No round trip, but never an older state than this replica
		// served before it stopped, nor one under repair. Nor is the
		// read sent to the leader meanwhile: served there, then here
		// once caught up, reads through this node would go back in time.
		if err := g.waitServing(ctx, g.cfg.FollowerMaxWait); err != nil {
			return fmt.Errorf("%v; read from another replica: %w", err, kvd.ErrUnavailable)
		}
		return nil
	case g.health.repairs.Load() > 0:
		return g.Serving()
	case g.raft.State() == raft.Leader:
		if failpoint.Mutant(failpoint.MutantLeaderReadNoQuorum) {
			return nil // planted bug: no read-index round, no wait
		}
		idx, err = g.leaderReads.get(ctx)
	case c == kvd.Linearizable:
		return &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	default:
		idx, err = g.followerReads.get(ctx)
		if err != nil {
			return err
		}
		if failpoint.Mutant(failpoint.MutantFollowerReadNoWait) {
			return nil // planted bug: the read index is not waited for
		}
		// A follower far behind (after a partition heals, raft may take
		// seconds to resume replicating to it) sends the read to the
		// leader rather than make it wait.
		wctx, cancel := context.WithTimeout(ctx, g.cfg.FollowerMaxWait)
		defer cancel()
		if err := g.WaitApplied(wctx, idx); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("group %d: replica lags the leader (applied %d, read index %d): %w", g.id, g.db.AppliedIndex(), idx,
				&kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()})
		}
		return nil
	}
	if err != nil {
		return err
	}
	return g.WaitApplied(ctx, idx)
}

// ReadIndex returns, on the leader, an index such that every write
// acknowledged before the call is at or below it, confirmed by a quorum.
// Followers call it remotely to serve follower reads.
func (g *Group) ReadIndex(ctx context.Context) (uint64, error) {
	if err := g.checkLeader(); err != nil {
		return 0, err
	}
	return g.leaderReads.get(ctx)
}

// leaderRound is one read-index round on the leader: once the leader has
// applied an entry of its own term (so its commit index covers every
// earlier term), capture the commit index, then confirm leadership with a
// quorum. Capturing before confirming closes the window in which a
// deposed leader could hand out a stale index.
func (g *Group) leaderRound(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.ElectionTimeout*5)
	defer cancel()
	term := g.raft.CurrentTerm()
	for g.db.AppliedTerm() != term {
		if err := g.checkLeader(); err != nil {
			return 0, err
		}
		ch := g.db.AppliedCh()
		if g.db.AppliedTerm() == term {
			break
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return 0, fmt.Errorf("group %d: new leader has not committed in its term: %w", g.id, kvd.ErrUnavailable)
		}
		if t := g.raft.CurrentTerm(); t != term {
			term = t
		}
	}
	idx := g.raft.CommitIndex()
	if err := g.raft.VerifyLeader().Error(); err != nil {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	if g.raft.CurrentTerm() != term {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	return idx, nil
}

// followerRound asks the leader for a read index. While leadership moves
// (a planned hand-over, an election) there is briefly no leader, or the
// one asked has just stepped down: the round waits for the next leader
// for up to two election timeouts rather than fail the reads that share
// it. A replica cut off from its leader still gives up soon enough for
// the client to try another.
func (g *Group) followerRound(ctx context.Context) (uint64, error) {
	if g.cfg.Remote == nil {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.ElectionTimeout*5)
	defer cancel()
	giveUp := time.Now().Add(2 * g.cfg.ElectionTimeout)
	for {
		idx, err := g.followerRoundOnce(ctx)
		var nl *kvd.NotLeaderError
		if err == nil || ctx.Err() != nil || time.Now().After(giveUp) ||
			!(errors.As(err, &nl) || errors.Is(err, errNoLeader)) {
			return idx, err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return 0, err
		case <-g.ctx.Done():
			return 0, fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)
		}
	}
}

func (g *Group) followerRoundOnce(ctx context.Context) (uint64, error) {
	switch leader := g.LeaderID(); leader {
	case "":
		return 0, fmt.Errorf("group %d: %w: %w", g.id, errNoLeader, kvd.ErrUnavailable)
	case g.cfg.NodeID:
		return g.leaderRound(ctx)
	default:
		return g.cfg.Remote.ReadIndex(ctx, leader, g.id)
	}
}

// readBatcher shares one read-index round among every read that arrives
// while no round is running, and starts the next round for the reads that
// arrived during the previous one. A read never uses an index captured
// before it arrived: that would let it miss a write acknowledged just
// before.
type readBatcher struct {
	round func(ctx context.Context) (uint64, error)
	// stopped is closed when run returns; later callers fail at once.
	stopped chan struct{}

	// mu protects waiters.
	mu      sync.Mutex
	waiters []chan readIndexResult
	kick    chan struct{}
}

type readIndexResult struct {
	index uint64
	err   error
}

func newReadBatcher(round func(ctx context.Context) (uint64, error)) *readBatcher {
	return &readBatcher{round: round, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// get joins the next round and returns its index.
func (b *readBatcher) get(ctx context.Context) (uint64, error) {
	ch := make(chan readIndexResult, 1)
	b.mu.Lock()
	b.waiters = append(b.waiters, ch)
	b.mu.Unlock()
	kick(b.kick)
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-b.stopped:
		return 0, kvd.ErrClosed
	}
}

// run serves rounds until ctx ends. Its owner starts and waits for it.
func (b *readBatcher) run(ctx context.Context) {
	for {
		select {
		case <-b.kick:
		case <-ctx.Done():
			close(b.stopped)
			answer(b.take(), readIndexResult{err: ctx.Err()})
			return
		}
		for {
			ws := b.take()
			if len(ws) == 0 {
				break
			}
			idx, err := b.round(ctx)
			answer(ws, readIndexResult{index: idx, err: err})
		}
	}
}

// take removes and returns the reads waiting for a round.
func (b *readBatcher) take() []chan readIndexResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	ws := b.waiters
	b.waiters = nil
	return ws
}

// answer gives r to every read in ws.
func answer(ws []chan readIndexResult, r readIndexResult) {
	for _, w := range ws {
		w <- r
	}
}
