package replication

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// IsLeader reports whether this replica currently believes it leads.
func (g *Group) IsLeader() bool { return g.raft.State() == raft.Leader }

// LeaderID returns the node id of the leader this replica knows of, or "".
func (g *Group) LeaderID() string {
	_, id := g.raft.LeaderWithID()
	return string(id)
}

func (g *Group) checkLeader() error {
	if g.raft.State() != raft.Leader {
		return &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	if g.health.repairs.Load() > 0 {
		// Repairing: it hands leadership over and takes no writes meanwhile.
		return fmt.Errorf("group %d: leader repairing damaged data: %w", g.id, &kvd.NotLeaderError{Group: g.id})
	}
	return nil
}

// watchLeadership forwards raft's leadership notifications to the leader
// task runner without ever blocking raft.
func (g *Group) watchLeadership(notify <-chan bool) {
	for {
		select {
		case isLeader := <-notify:
			if isLeader {
				term := g.raft.CurrentTerm()
				g.log.Info("became leader", "term", term)
				kick(g.leaderKick)
				if f := g.cfg.Observer.Leader; f != nil {
					f(term)
				}
			} else {
				g.log.Info("lost leadership")
			}
		case <-g.raftDone:
			return
		}
	}
}

// runLeaderTasks commits a no-op in each new leader's term, so that reads
// can be served (see leaderRound), then seeds the cluster map if needed.
func (g *Group) runLeaderTasks() {
	for {
		select {
		case <-g.leaderKick:
		case <-g.ctx.Done():
			return
		}
		for attempt := 0; g.IsLeader() && g.db.AppliedTerm() != g.raft.CurrentTerm(); attempt++ {
			ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
			_, err := g.Propose(ctx, store.Cmd{Kind: store.CmdNoop})
			cancel()
			if err != nil && g.ctx.Err() == nil {
				g.log.Warn("leader no-op failed", "err", err, "attempt", attempt)
				if !g.pause(100 * time.Millisecond) {
					return
				}
			}
		}
		g.seedMap()
	}
}

func (g *Group) seedMap() {
	seed := g.cfg.SeedMap
	if seed == nil || !g.IsLeader() {
		return
	}
	if cur := g.db.Map(); cur != nil && cur.Epoch >= seed.Epoch {
		return
	}
	data, err := json.Marshal(seed)
	if err != nil {
		g.log.Error("encode cluster map", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
	defer cancel()
	if _, err := g.Propose(ctx, store.Cmd{Kind: store.CmdSetMap, Data: data}); err != nil {
		g.log.Warn("store cluster map", "err", err)
	}
}

// TransferLeadership hands leadership to another replica if this one
// leads, waiting at most LeaderTransferTimeout. Raft's Shutdown does not
// do this by itself.
func (g *Group) TransferLeadership() error { return g.TransferLeadershipTo("") }

// TransferLeadershipTo hands leadership to the replica on node to (any
// replica if to is ""), if this one leads. raft first lets the target
// catch up, then tells it to start an election at once.
func (g *Group) TransferLeadershipTo(to string) error {
	if !g.IsLeader() {
		return nil
	}
	f := g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("group %d: leadership transfer: %w", g.id, err)
	}
	servers := f.Configuration().Servers
	if len(servers) < 2 {
		return nil // nobody to hand over to
	}
	var fut raft.Future
	if to == "" {
		fut = g.raft.LeadershipTransfer()
	} else {
		var target *raft.Server
		for i := range servers {
			if string(servers[i].ID) == to {
				target = &servers[i]
			}
		}
		if target == nil {
			return fmt.Errorf("group %d: leadership transfer: %q is not a member", g.id, to)
		}
		fut = g.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	done := make(chan error, 1)
	// raft answers every future, at the latest on shutdown.
	go func() { done <- fut.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("group %d: leadership transfer: %w", g.id, err)
		}
		g.log.Info("leadership transferred", "to", g.LeaderID())
		return nil
	case <-time.After(g.cfg.LeaderTransferTimeout):
		return fmt.Errorf("group %d: leadership transfer timed out", g.id)
	}
}
