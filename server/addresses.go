package server

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"
	"github.com/kvd-project/kvd"
)

// addressBook maps node ids to the addresses this node dials, built from
// the cluster map and the overrides.
type addressBook struct {
	epoch uint64
	peers map[string]PeerAddr
}

func (s *Server) addresses() *addressBook {
	m := s.Map()
	if b := s.book.Load(); b != nil && b.epoch == m.Epoch {
		return b
	}
	b := &addressBook{epoch: m.Epoch, peers: map[string]PeerAddr{}}
	for _, n := range m.Nodes {
		pa := PeerAddr{HTTP: n.HTTP, Raft: n.Raft}
		if o, ok := s.cfg.PeerOverrides[n.ID]; ok {
			pa.HTTP = firstNonEmpty(o.HTTP, pa.HTTP)
			pa.Raft = firstNonEmpty(o.Raft, pa.Raft)
		}
		b.peers[n.ID] = pa
	}
	s.book.Store(b)
	return b
}

// ServerAddr implements raft.ServerAddressProvider: every Raft connection
// to a peer is dialed at the address the book names for it.
func (s *Server) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	pa, ok := s.addresses().peers[string(id)]
	if !ok || pa.Raft == "" {
		return "", fmt.Errorf("no raft address for node %q", id)
	}
	return raft.ServerAddress(pa.Raft), nil
}

// PeerHTTP returns the address to dial for node id's HTTP API.
func (s *Server) PeerHTTP(id string) (string, bool) {
	pa, ok := s.addresses().peers[id]
	return pa.HTTP, ok && pa.HTTP != ""
}

// leaderOrPreferred returns the leader of gid as this node knows it, or,
// if none is known, the group's preferred leader (its first member).
func (s *Server) leaderOrPreferred(ctx context.Context, gid kvd.GroupID) string {
	if l := s.leaderOf(ctx, gid); l != "" {
		return l
	}
	if grp, ok := s.Map().Group(gid); ok && len(grp.Members) > 0 {
		return grp.Members[0]
	}
	return ""
}

// forgetLeader drops what this node learned of gid's leader from peers.
func (s *Server) forgetLeader(gid kvd.GroupID) {
	s.leaders.mu.Lock()
	delete(s.leaders.m, gid)
	s.leaders.mu.Unlock()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
