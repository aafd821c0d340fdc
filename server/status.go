package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// NodeID returns this node's id.
func (s *Server) NodeID() string { return s.id }

// Cluster returns the cluster map with each group's leader, as this
// node knows them.
func (s *Server) Cluster(ctx context.Context) (api.Cluster, error) {
	c := clusterOf(s.Map())
	var wg sync.WaitGroup
	for i := range c.Groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Groups[i].Leader = s.leaderOf(ctx, kvd.GroupID(c.Groups[i].ID))
		}()
	}
	wg.Wait()
	return c, nil
}

// Epoch returns the epoch of this node's cluster map.
func (s *Server) Epoch() uint64 { return s.Map().Epoch }

// Status describes this node: its addresses, uptime, map epoch, the
// state of each replica it hosts, and its storage.
func (s *Server) Status(ctx context.Context) api.Status {
	raftAddr := "in-memory"
	if s.mux != nil {
		raftAddr = s.mux.Addr().String()
	}
	st := api.Status{Node: s.id, HTTP: s.HTTPAddr(), Raft: raftAddr, Version: s.cfg.Version,
		Uptime: time.Since(s.started).Round(time.Second).String(), Epoch: s.Map().Epoch, Features: []string{api.FeatureSlotMoves, api.FeatureBackup, api.FeatureTxnVersions}, Restores: s.runningRestores()}
	m := s.Map()
	hosted := s.hosted() // one snapshot: a replica may be retired meanwhile
	for _, gid := range slices.Sorted(maps.Keys(hosted)) {
		g := hosted[gid]
		grp, _ := m.Group(gid)
		place := "removed"
		if grp.IsMember(s.id) {
			place = "member"
		} else if grp.Hosts(s.id) {
			place = "learner"
		}
		gs := g.Status()
		h := g.Health()
		ah := &api.Health{State: h.State, Detail: h.Detail}
		if c := h.Integrity; c != nil {
			ah.Integrity = &api.IntegrityCheck{At: c.At, Index: c.Index, OK: c.OK, Hashes: c.Hashes, Alarm: c.Alarm, Unreached: c.Unreached}
		}
		st.Groups = append(st.Groups, api.GroupStatus{Group: uint64(gs.Group), Role: gs.Role, Term: gs.Term, Leader: gs.Leader,
			CommitIndex: gs.CommitIndex, AppliedIndex: gs.AppliedIndex, LastIndex: gs.LastIndex, LastContact: gs.LastContact, Members: gs.Members,
			Replica: place, Health: ah, StateBytes: g.Stats().StateBytes, DiskBytes: s.disk.groupBytes(gs.Group), Traffic: s.groupTraffic(gs.Group).Snapshot()})
	}
	for gid, reason := range s.missing {
		if grp, ok := m.Group(gid); !ok || !grp.IsMember(s.id) {
			continue // no longer this node's: nothing to re-add
		}
		st.Missing = append(st.Missing, api.MissingGroup{Group: uint64(gid), Reason: reason})
	}
	sort.Slice(st.Missing, func(i, j int) bool { return st.Missing[i].Group < st.Missing[j].Group })
	if s.disk != nil {
		d := s.disk.status()
		st.Storage = &d
	}
	return st
}

// Ready returns nil when every hosted group has a leader and this node's
// replica of it serves (kvd.ErrUnavailable otherwise).
func (s *Server) Ready() error {
	m := s.Map()
	if _, ok := m.Node(s.id); !ok {
		return fmt.Errorf("node %s is not in the cluster map (it was removed): %w", s.id, kvd.ErrUnavailable)
	}
	for gid, g := range s.hosted() {
		if grp, ok := m.Group(gid); !ok || !grp.IsMember(s.id) {
			continue // a learner catching up, or a replica being removed
		}
		if g.LeaderID() == "" {
			return fmt.Errorf("group %d has no leader: %w", gid, kvd.ErrUnavailable)
		}
		if err := g.Serving(); err != nil {
			return fmt.Errorf("group %d: %v: %w", gid, err, kvd.ErrUnavailable)
		}
		// A replica whose applies wait for the disk still answers stale
		// reads, but from a state that falls further behind.
		if h := g.Health(); h.State == "stalled" {
			return fmt.Errorf("group %d: replica stalled, its applies wait for the disk (%s): %w", gid, h.Detail, kvd.ErrUnavailable)
		}
	}
	return nil
}

// ReadIndex returns a read index of group gid, which this node must lead.
func (s *Server) ReadIndex(ctx context.Context, gid kvd.GroupID) (uint64, error) {
	g, err := s.replica(gid)
	if err != nil {
		return 0, err
	}
	return g.ReadIndex(ctx)
}
