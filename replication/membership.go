package replication

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
)

// Replica is one server of a group's Raft configuration.
type Replica struct {
	ID    string `json:"id"`
	Addr  string `json:"addr"`
	Voter bool   `json:"voter"`
}

// Configuration is a group's latest Raft configuration, which
// hashicorp/raft uses as soon as it is appended, committed or not.
type Configuration struct {
	Replicas []Replica
	// Index is the log index of the entry that holds it.
	Index uint64
	// Committed is false while a change is in flight.
	Committed bool
}

// Configuration returns the group's latest Raft configuration.
func (g *Group) Configuration() (Configuration, error) {
	f := g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return Configuration{}, fmt.Errorf("group %d: configuration: %w", g.id, err)
	}
	c := Configuration{Index: f.Index(), Committed: f.Index() <= g.raft.CommitIndex()}
	for _, s := range f.Configuration().Servers {
		c.Replicas = append(c.Replicas, Replica{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return c, nil
}

// Settled reports whether this replica leads and has applied every entry
// committed before its term (its own no-op): its state, the cluster map
// stored in it included, is then as new as any earlier leader's was.
func (g *Group) Settled() bool {
	return g.IsLeader() && g.db.AppliedTerm() == g.raft.CurrentTerm()
}

// changeTimeout bounds one configuration change.
const changeTimeout = 10 * time.Second

// AddLearner adds node id (dialed at addr) as a non-voter: it receives the
// log (a snapshot first if it is far behind) but does not vote, so a
// replica that has not caught up does not weigh on the group's quorum.
// The replica must lead the group.
func (g *Group) AddLearner(id, addr string) error {
	return g.change("add learner "+id, g.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, changeTimeout))
}

// Promote makes node id's replica (dialed at addr) a voter. Promote a
// learner only once it has caught up.
func (g *Group) Promote(id, addr string) error {
	return g.change("promote "+id, g.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, changeTimeout))
}

// RemoveReplica removes node id's replica from the group's configuration.
// The replica must lead the group and must not be id (hand leadership
// over first).
func (g *Group) RemoveReplica(id string) error {
	if id == g.cfg.NodeID {
		return fmt.Errorf("group %d: a leader cannot remove itself; transfer leadership first", g.id)
	}
	return g.change("remove "+id, g.raft.RemoveServer(raft.ServerID(id), 0, changeTimeout))
}

// change waits for a configuration change's future and logs it.
func (g *Group) change(what string, f raft.IndexFuture) error {
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return fmt.Errorf("group %d: %s: %w", g.id, what, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()})
		}
		return fmt.Errorf("group %d: %s: %w", g.id, what, err)
	}
	g.log.Info("configuration changed", "change", what, "index", f.Index())
	return nil
}

// joiningFloor is the start floor of a replica added to a running group:
// it serves no read until the leader's read index says it has caught up.
const joiningFloor = math.MaxUint64
