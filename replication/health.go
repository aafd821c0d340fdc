package replication

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
)

// A replica serves reads only while it is healthy and caught up:
//
//   - caught up: after a restart the state may be behind what this replica
//     served before it stopped (with lazy state sync a crash rebuilds it
//     from the snapshot and the log). It is caught up once it has applied
//     every entry of its log, or the read index the leader gave it after
//     the restart (which covers everything it applied before); until then
//     a stale read is sent to the leader rather than answered from an
//     older state.
//   - healthy: not repairing damage (see repair.go). An apply stalled on
//     the disk keeps the state intact, only behind: it still serves.

// Health describes a replica's ability to serve.
type Health struct {
	// State is "ok", "catching_up", "repairing" or "stalled" (applies
	// wait for the disk).
	State string `json:"state"`
	// Detail explains a state other than ok.
	Detail string `json:"detail,omitempty"`
	// Integrity is the last integrity check's outcome.
	Integrity *IntegrityCheck `json:"integrity,omitempty"`
}

// healthState tracks what keeps a replica from serving.
type healthState struct {
	caughtUp atomic.Bool
	// repairs counts repairs under way (they nest).
	repairs atomic.Int32
	stalled atomic.Bool

	// mu protects detail, stallErr and check.
	mu       sync.Mutex
	detail   string
	stallErr string
	check    *IntegrityCheck
}

func (g *Group) beginRepair(why string) {
	g.health.repairs.Add(1)
	g.health.mu.Lock()
	g.health.detail = why
	g.health.mu.Unlock()
}

func (g *Group) endRepair() { g.health.repairs.Add(-1) }

// stall records that an apply waits for the disk.
func (g *Group) stall(err error, attempt int) {
	if !g.health.stalled.Swap(true) {
		g.stats.applyStalls.Add(1)
	}
	g.health.mu.Lock()
	g.health.stallErr = err.Error()
	g.health.mu.Unlock()
	if attempt%20 == 0 {
		g.log.Error("cannot apply committed entries; retrying until the disk takes them", "err", err, "attempt", attempt)
	}
}

func (g *Group) clearStall() {
	if g.health.stalled.Swap(false) {
		g.log.Info("applying again")
	}
}

// Health returns the replica's health.
func (g *Group) Health() Health {
	h := Health{State: "ok"}
	g.health.mu.Lock()
	defer g.health.mu.Unlock()
	switch {
	case g.health.repairs.Load() > 0:
		h.State, h.Detail = "repairing", g.health.detail
	case g.health.stalled.Load():
		h.State, h.Detail = "stalled", g.health.stallErr
	case !g.health.caughtUp.Load():
		h.State, h.Detail = "catching_up", fmt.Sprintf("applied %d, catching up to %d", g.db.AppliedIndex(), g.startFloor.Load())
		if g.startFloor.Load() == joiningFloor {
			h.Detail = fmt.Sprintf("new replica: applied %d, waiting for the leader's log", g.db.AppliedIndex())
		}
	}
	if g.health.check != nil {
		c := *g.health.check
		h.Integrity = &c
	}
	return h
}

// Serving returns nil if this replica may serve reads from its state
// now: it has caught up after its start and is not repairing. Otherwise
// it returns a *kvd.NotLeaderError naming the leader, so the read goes
// there.
func (g *Group) Serving() error {
	switch {
	case g.health.repairs.Load() > 0:
		return fmt.Errorf("group %d: replica repairing damaged data: %w", g.id, &kvd.NotLeaderError{Group: g.id, Leader: g.otherLeader()})
	case !g.health.caughtUp.Load():
		return fmt.Errorf("group %d: replica catching up after its start (applied %d of %d): %w", g.id, g.db.AppliedIndex(), g.startFloor.Load(),
			&kvd.NotLeaderError{Group: g.id, Leader: g.otherLeader()})
	}
	return nil
}

// otherLeader returns the leader if it is another replica, else "".
func (g *Group) otherLeader() string {
	if l := g.LeaderID(); l != g.cfg.NodeID {
		return l
	}
	return ""
}

// waitServing waits up to max for the replica to serve.
func (g *Group) waitServing(ctx context.Context, max time.Duration) error {
	deadline := time.Now().Add(max)
	for {
		err := g.Serving()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		ch := g.db.AppliedCh()
		select {
		case <-ch:
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return err
		case <-g.ctx.Done():
			return fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)
		}
	}
}

// runCatchUp marks the replica caught up once it has applied floor (the
// end of its log at start) or the first read index the leader gives it,
// whichever comes first.
func (g *Group) runCatchUp() {
	floor := g.startFloor.Load()
	for {
		if g.db.AppliedIndex() >= floor {
			g.health.caughtUp.Store(true)
			g.log.Info("replica caught up", "applied", g.db.AppliedIndex())
			return
		}
		ch := g.db.AppliedCh()
		if g.LeaderID() != "" {
			ctx, cancel := context.WithTimeout(g.ctx, 2*time.Second)
			idx, err := g.followerReads.get(ctx)
			cancel()
			if err == nil && idx < floor {
				floor = idx
				g.startFloor.Store(idx)
				continue
			}
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-g.ctx.Done():
			return
		}
	}
}

// releaseEvery is how many applied bytes make the replica release the
// state file's mapped pages (see store.DB.ReleaseMemory).
const releaseEvery = 8 << 20

func (g *Group) noteAppliedBytes(n int) {
	if g.appliedBytes.Add(int64(n)) >= releaseEvery {
		g.appliedBytes.Store(0)
		kick(g.releaseKick)
	}
}

// runRelease releases the state file's mapped pages after every
// releaseEvery bytes applied, and every half minute.
func (g *Group) runRelease() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-g.releaseKick:
		case <-t.C:
		case <-g.ctx.Done():
			return
		}
		if err := g.db.ReleaseMemory(); err != nil {
			g.log.Debug("release the state file's mapped pages", "err", err)
		}
	}
}
