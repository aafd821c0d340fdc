package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/fsutil"
	"github.com/kvd-project/kvd/replication"
)

// A group's replicas change one step at a time, and always in the same
// order, so that a crash between two steps leaves a state the next pass
// finishes:
//
//  1. The map names a new replica as a learner (a map edit).
//  2. Its node opens an empty replica (openReplicas); the group's leader
//     adds it to the Raft configuration as a non-voter, and it catches up
//     through a snapshot and the log.
//  3. Once it is within learnerSlack entries of the leader's commit
//     index, the leader makes it a voter, and then the map names it a
//     member.
//
// Removal runs the other way: the map drops the replica first (its node
// stops serving the group's reads at once), then the leader removes it
// from the Raft configuration (after handing leadership over if it is
// the one removed), then the removed node, seeing the leader's
// configuration without it, closes the replica and deletes its data.
//
// Each group's leader compares the map stored in its own group's log with
// the group's Raft configuration and makes the next step (reconcileGroup);
// each node compares the map with the replicas it runs (openReplicas,
// retireReplicas). Both are idempotent, so every step is safe to repeat.

// learnerSlack is how many entries a learner may trail the leader's commit
// index and still be promoted: a replica that keeps up under load is
// always a little behind.
const learnerSlack = 256

// groupDir is the directory of this node's replica of gid.
func (s *Server) groupDir(gid kvd.GroupID) string {
	return filepath.Join(s.cfg.DataDir, "groups", strconv.FormatUint(uint64(gid), 10))
}

// storedGroups lists the groups this node has a replica directory of.
func (s *Server) storedGroups() map[kvd.GroupID]bool {
	out := map[kvd.GroupID]bool{}
	entries, err := os.ReadDir(filepath.Join(s.cfg.DataDir, "groups"))
	if err != nil {
		return out
	}
	for _, e := range entries {
		id, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || id == 0 || !e.IsDir() {
			continue
		}
		if replication.StoredLogStore(filepath.Join(s.cfg.DataDir, "groups", e.Name())) != "" {
			out[kvd.GroupID(id)] = true
		}
	}
	return out
}

// droppedPrefix names a replica directory being deleted.
const droppedPrefix = ".dropped-"

// dropReplicaDir deletes the directory of this node's replica of gid: it
// is first renamed out of the way (one atomic step, so a crash while
// deleting never leaves a half-deleted replica that a restart would try
// to open), then removed; openGroups removes what a crash left.
func (s *Server) dropReplicaDir(gid kvd.GroupID) error {
	dir := s.groupDir(gid)
	gone := filepath.Join(filepath.Dir(dir), fmt.Sprintf("%s%d-%d", droppedPrefix, gid, time.Now().UnixNano()))
	if err := os.Rename(dir, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("drop replica %d: %w", gid, err)
	}
	if err := fsutil.SyncDir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("drop replica %d: %w", gid, err)
	}
	return os.RemoveAll(gone)
}

// removeDropped removes replica directories a crash left half deleted.
func (s *Server) removeDropped() {
	root := filepath.Join(s.cfg.DataDir, "groups")
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), droppedPrefix) {
			if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
				s.log.Warn("remove a dropped replica's directory", "dir", e.Name(), "err", err)
			}
		}
	}
}

// replicaMode says how a replica is opened.
type replicaMode int

const (
	// resume a replica from its directory, which must hold Raft state.
	resume replicaMode = iota
	// bootstrap a replica of the initial cluster.
	bootstrap
	// join: a new, empty replica of a running group.
	join
)

// openReplica opens this node's replica of grp and adds it to the hosted
// ones. It reports replication.ErrNoState for a replica that must be
// resumed but whose state was lost.
func (s *Server) openReplica(grp kvd.Group, mode replicaMode) error {
	gid := grp.ID
	rc := s.cfg.Replication
	rc.Group = gid
	rc.NodeID = s.id
	rc.Dir = s.groupDir(gid)
	rc.Bootstrap = mode == bootstrap
	rc.Joining = mode == join
	rc.RequireState = mode == resume
	rc.Peers = nil
	for _, mem := range grp.Members {
		n, _ := s.Map().Node(mem)
		rc.Peers = append(rc.Peers, replication.Peer{ID: mem, Addr: n.Raft})
	}
	rc.AddressProvider = s
	rc.Remote = remote{s}
	rc.SeedMap = s.Map()
	rc.Logger = s.log
	rc.Observer = s.metrics.observer(gid)
	rc.Observer.Leader = func(term uint64) {
		s.events.record("leader", gid, "group %d: %s became leader (term %d)", gid, s.id, term)
	}
	rc.LogCacheBytes = s.logCacheBytes(rc.LogCacheBytes)
	rc.Keys = s.cfg.Encryption
	rc.Room = s.disk.room
	if s.mux != nil {
		layer, err := s.mux.Layer(gid)
		if err != nil {
			return err
		}
		rc.Layer = layer
	} else {
		addr, trans := raft.NewInmemTransport(raft.ServerAddress(rc.Peers[0].Addr))
		rc.Transport = trans
		rc.Peers[0].Addr = string(addr)
	}
	g, err := replication.Open(rc)
	if err != nil {
		if s.mux != nil {
			rc.Layer.Close()
		}
		return err
	}
	s.replicasMu.Lock()
	next := maps.Clone(s.hosted())
	next[gid] = g
	s.groups.Store(&next)
	s.replicasMu.Unlock()
	return nil
}

// openGroups opens the replicas of this node at start: on the first
// start of an initial member, those the seed map places here
// (bootstrapped); otherwise every replica found in the data directory. A
// group the map makes this node a voting member of whose directory is
// missing is not started: its Raft state was lost, and it must come back
// as a new replica.
func (s *Server) openGroups(first bool) error {
	s.missing = map[kvd.GroupID]string{}
	s.removeDropped()
	m := s.Map()
	stored := s.storedGroups()
	if first && !s.nodeFile.Joined {
		for _, gid := range s.seed.GroupsOf(s.id) {
			grp, _ := s.seed.Group(gid)
			if err := s.openReplica(grp, bootstrap); err != nil {
				return err
			}
			delete(stored, gid)
		}
	}
	for _, gid := range slices.Sorted(maps.Keys(stored)) {
		grp, ok := m.Group(gid)
		if !ok {
			grp = kvd.Group{ID: gid}
		}
		err := s.openReplica(grp, resume)
		if errors.Is(err, replication.ErrNoState) && slices.Contains(grp.Learners, s.id) {
			// A learner that stopped before the leader sent it anything:
			// it has nothing to lose, and starts again empty.
			s.log.Info("a new replica stopped before it received the log; it starts again", "group", gid)
			continue
		}
		if errors.Is(err, replication.ErrNoState) {
			s.missing[gid] = err.Error()
			s.log.Error("not starting a replica whose Raft state was lost; it must be re-added as a new replica (remove this node from the group and add it again)",
				"group", gid, "err", err)
			continue
		}
		if err != nil {
			return err
		}
	}
	if !first {
		for _, gid := range m.GroupsOf(s.id) {
			grp, _ := m.Group(gid)
			if _, ok := s.hosted()[gid]; !ok && grp.IsMember(s.id) && s.missing[gid] == "" && !grp.New {
				s.missing[gid] = fmt.Sprintf("group %d: %s is missing: %v", gid, s.groupDir(gid), replication.ErrNoState)
				s.log.Error("not starting a replica whose directory was lost; it must be re-added as a new replica (remove this node from the group and add it again)", "group", gid)
			}
		}
	}
	return nil
}

// openReplicas opens an empty replica of every group the map names this
// node a learner of and that it does not run yet, and bootstraps its
// replica of every new group it is a member of (see kvd.Group.New).
func (s *Server) openReplicas() {
	m := s.Map()
	for _, grp := range m.Groups {
		if grp.New && grp.IsMember(s.id) && !s.storedGroups()[grp.ID] && s.missing[grp.ID] == "" {
			if _, ok := s.hosted()[grp.ID]; !ok {
				if err := s.openReplica(grp, bootstrap); err != nil {
					s.log.Warn("start a new group's replica", "group", grp.ID, "err", err)
				} else {
					s.log.Info("new group's replica started", "group", grp.ID, "members", grp.Members, "epoch", m.Epoch)
				}
			}
			continue
		}
		if !slices.Contains(grp.Learners, s.id) {
			continue
		}
		if _, ok := s.hosted()[grp.ID]; ok || s.missing[grp.ID] != "" {
			continue
		}
		if s.storedGroups()[grp.ID] {
			// Left over from an earlier membership of this group, and not
			// yet deleted: start from a clean directory.
			if err := s.dropReplicaDir(grp.ID); err != nil {
				s.log.Warn("clear an old replica's directory", "group", grp.ID, "err", err)
				continue
			}
		}
		if err := s.openReplica(grp, join); err != nil {
			s.log.Warn("open a new replica", "group", grp.ID, "err", err)
			continue
		}
		s.log.Info("new replica opened; it catches up from the leader", "group", grp.ID, "epoch", m.Epoch)
	}
}

// retireReplicas closes, and deletes the data of, every replica this node
// runs that the map no longer names, once the group's leader confirms
// that its Raft configuration no longer holds it. Until then the replica
// goes on taking part in Raft but serves no reads (see servingReplica).
func (s *Server) retireReplicas(ctx context.Context) {
	m := s.Map()
	for gid, g := range s.hosted() {
		grp, ok := m.Group(gid)
		if ok && grp.Hosts(s.id) {
			continue
		}
		deleted := !ok && m.LastGroup >= gid // the group was removed
		if !deleted && (!ok || !s.removedFrom(ctx, grp, g)) {
			continue
		}
		s.replicasMu.Lock()
		next := maps.Clone(s.hosted())
		delete(next, gid)
		s.groups.Store(&next)
		s.replicasMu.Unlock()
		if err := g.Close(); err != nil {
			s.log.Warn("close a removed replica", "group", gid, "err", err)
		}
		if err := s.dropReplicaDir(gid); err != nil {
			s.log.Warn("delete a removed replica's data", "group", gid, "err", err)
			continue
		}
		s.metrics.replicasRetired.Add(1)
		s.log.Info("replica removed from its group; its data is deleted", "group", gid, "epoch", m.Epoch)
	}
}

// removedFrom reports whether the leader of grp confirms that this
// node's replica is out of its Raft configuration.
func (s *Server) removedFrom(ctx context.Context, grp kvd.Group, g *replication.Group) bool {
	for _, mem := range grp.Members {
		st, err := s.peerStatus(ctx, mem)
		if err != nil {
			continue
		}
		for _, gs := range st.Groups {
			if gs.Group == uint64(grp.ID) && gs.Role == "leader" {
				return !slices.Contains(gs.Members, s.id)
			}
		}
	}
	return false
}

// servingReplica returns this node's replica of g if it may serve g's
// requests: the map names this node a voting member of g. A learner has
// not caught up, and a removed replica no longer receives the log: both
// refuse every read, stale ones included.
func (s *Server) servingReplica(g kvd.GroupID) (*replication.Group, bool) {
	r, ok := s.hosted()[g]
	if !ok {
		return nil, false
	}
	if grp, ok := s.Map().Group(g); !ok || !grp.IsMember(s.id) {
		return nil, false
	}
	return r, true
}

// reconcileGroups makes one step, in each group this node leads, toward
// the replicas the map stored in that group names.
func (s *Server) reconcileGroups(ctx context.Context) {
	for gid, g := range s.hosted() {
		if !g.Settled() {
			continue // not the leader, or it has not applied what earlier leaders did
		}
		gm := g.Store().Map()
		if gm == nil {
			continue
		}
		grp, ok := gm.Group(gid)
		if !ok {
			continue
		}
		if grp.New {
			s.groupReady(ctx, grp)
		}
		if err := s.reconcileGroup(ctx, g, gm, grp); err != nil {
			s.log.Warn("membership change step failed; it is tried again", "group", gid, "err", err)
		}
	}
}

// reconcileGroup makes the next step toward grp's replicas in g, which
// this node leads.
func (s *Server) reconcileGroup(ctx context.Context, g *replication.Group, gm *kvd.Map, grp kvd.Group) error {
	c, err := g.Configuration()
	if err != nil || !c.Committed {
		return err // a change is in flight: wait for it
	}
	conf := c.Replicas
	inConf := map[string]replication.Replica{}
	for _, r := range conf {
		inConf[r.ID] = r
	}
	addr := func(id string) string { n, _ := gm.Node(id); return n.Raft }
	// Replicas the map no longer names leave first: the map already
	// stopped their reads.
	for _, r := range conf {
		if grp.Hosts(r.ID) {
			continue
		}
		if r.ID == s.id {
			s.log.Info("handing leadership over before this replica is removed", "group", grp.ID)
			return g.TransferLeadership()
		}
		if !s.knowsRemoval(ctx, r.ID, gm.Epoch) || !s.votersHaveConfig(ctx, g.ID(), c, r.ID) {
			return nil
		}
		if err := g.RemoveReplica(r.ID); err != nil {
			return err
		}
		s.metrics.configChanges.WithLabelValues("remove").Inc()
		s.log.Info("replica removed from the Raft configuration", "group", grp.ID, "node", r.ID, "epoch", gm.Epoch)
		return nil
	}
	if len(grp.Learners) > 0 { // one at a time: the map admits no second
		id := grp.Learners[0]
		r, ok := inConf[id]
		switch {
		case !ok:
			if err := g.AddLearner(id, addr(id)); err != nil {
				return err
			}
			s.metrics.configChanges.WithLabelValues("add_learner").Inc()
			return nil
		case !r.Voter:
			if !s.caughtUp(ctx, g, grp.ID, id) {
				return nil
			}
			if err := g.Promote(id, addr(id)); err != nil {
				return err
			}
			s.metrics.configChanges.WithLabelValues("promote").Inc()
			s.log.Info("learner caught up and promoted to voter", "group", grp.ID, "node", id)
		}
		// A voter in Raft, still a learner in the map: the map follows.
		_, err := s.editMap(ctx, mapEdit{Op: editPromote, Group: grp.ID, Node: kvd.Node{ID: id}})
		return err
	}
	for _, id := range grp.Members {
		if r, ok := inConf[id]; !ok {
			// Named a member but unknown to Raft (a change undone half
			// way): add it as a learner; it is promoted once caught up.
			return g.AddLearner(id, addr(id))
		} else if !r.Voter && s.caughtUp(ctx, g, grp.ID, id) {
			return g.Promote(id, addr(id))
		}
	}
	return nil
}

// groupReady clears the mark of a new group, which this node leads, once
// every member runs its replica: a member that loses its data after that
// must be added again like any replica, not bootstrapped.
func (s *Server) groupReady(ctx context.Context, grp kvd.Group) {
	for _, mem := range grp.Members {
		st, err := s.peerStatus(ctx, mem)
		if err != nil {
			return
		}
		if _, ok := groupStatusOf(st, grp.ID); !ok {
			return
		}
	}
	if _, err := s.editMap(ctx, mapEdit{Op: editGroupReady, Group: grp.ID}); err != nil {
		s.log.Debug("mark a new group ready", "group", grp.ID, "err", err)
	}
}

// knowsRemoval reports whether node has learned the map (epoch or later)
// that removes its replica, so that it stops serving reads before it is
// cut off from the log; a node that cannot be reached is not waited for
// beyond a few seconds.
func (s *Server) knowsRemoval(ctx context.Context, node string, epoch uint64) bool {
	st, err := s.peerStatus(ctx, node)
	if err == nil {
		s.removalWait.Delete(node)
		return st.Epoch >= epoch
	}
	first, _ := s.removalWait.LoadOrStore(node, time.Now())
	return time.Since(first.(time.Time)) > 5*time.Second
}

// votersHaveConfig reports whether every voter but the leader and the one
// being removed holds the group's latest configuration in its log. A voter
// that missed a change (it was down) keeps the older configuration and
// refuses votes from replicas it does not list (hashicorp/raft#524): with
// one more replica removed, the voters left could hold a majority and
// still elect no leader. So a removal waits until they all have it.
func (s *Server) votersHaveConfig(ctx context.Context, gid kvd.GroupID, c replication.Configuration, removed string) bool {
	for _, r := range c.Replicas {
		if !r.Voter || r.ID == removed || r.ID == s.id {
			continue
		}
		st, err := s.peerStatus(ctx, r.ID)
		gs, ok := groupStatusOf(st, gid)
		if err != nil || !ok || gs.LastIndex < c.Index {
			s.log.Debug("removal waits for a voter to hold the latest configuration", "group", gid, "removing", removed, "voter", r.ID)
			return false
		}
	}
	return true
}

// caughtUp reports whether learner id's replica of gid is within
// learnerSlack entries of g's commit index, and records how far behind it
// is for the metrics.
func (s *Server) caughtUp(ctx context.Context, g *replication.Group, gid kvd.GroupID, id string) bool {
	st, err := s.peerStatus(ctx, id)
	if err != nil {
		return false
	}
	commit := g.Status().CommitIndex
	for _, gs := range st.Groups {
		if gs.Group != uint64(gid) {
			continue
		}
		behind := uint64(0)
		if commit > gs.AppliedIndex {
			behind = commit - gs.AppliedIndex
		}
		s.metrics.learnerBehind.WithLabelValues(strconv.FormatUint(uint64(gid), 10), id).Set(float64(behind))
		return behind <= learnerSlack && gs.AppliedIndex > 0
	}
	return false
}

// groupStatusOf returns the status of gid in st, if st holds it.
func groupStatusOf(st api.Status, gid kvd.GroupID) (api.GroupStatus, bool) {
	for _, gs := range st.Groups {
		if gs.Group == uint64(gid) {
			return gs, true
		}
	}
	return api.GroupStatus{}, false
}

// logCacheBytes bounds a group's cache of recent log entries by the
// node's memory: the caches of the groups it hosts take at most a quarter
// of its high-water mark together. The cache stays full once requests
// have gone: left at its default (32 MiB a group) under a small memory
// limit, it alone would keep the node over the mark and refusing every
// client.
func (s *Server) logCacheBytes(configured int) int {
	if s.cfg.MemoryHighWater <= 0 {
		return configured
	}
	if configured <= 0 {
		configured = replication.DefaultConfig().LogCacheBytes
	}
	hosted := max(1, len(s.Map().GroupsOf(s.id)))
	return int(min(int64(configured), max(1<<20, s.cfg.MemoryHighWater/4/int64(hosted))))
}
