package replication

import (
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
)

// Status describes the replica.
type Status struct {
	Group        kvd.GroupID `json:"group"`
	Role         string      `json:"role"`
	Term         uint64      `json:"term"`
	Leader       string      `json:"leader"`
	CommitIndex  uint64      `json:"commit_index"`
	AppliedIndex uint64      `json:"applied_index"`
	LastIndex    uint64      `json:"last_index"`
	LastContact  time.Time   `json:"last_contact,omitzero"`
	Members      []string    `json:"members"`
}

// Status returns the replica's current status.
func (g *Group) Status() Status {
	s := Status{
		Group:        g.id,
		Role:         roleName(g.raft.State()),
		Term:         g.raft.CurrentTerm(),
		Leader:       g.LeaderID(),
		CommitIndex:  g.raft.CommitIndex(),
		AppliedIndex: g.db.AppliedIndex(),
		LastIndex:    g.raft.LastIndex(),
	}
	if s.Role != "leader" {
		s.LastContact = g.raft.LastContact()
	}
	if f := g.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			s.Members = append(s.Members, string(srv.ID))
		}
	}
	return s
}

func roleName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}
