package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// Repairs. A replica that finds damage (a log entry that fails its
// checksum, a stored value that fails its seal, a state hash that does not
// add up) stops serving the group and repairs itself before it applies
// anything more:
//
//   - a damaged log entry is fetched from a peer that has committed it
//     (same index and term, checksum intact), written over the local copy
//     and applied;
//   - a damaged state is replaced by a peer's snapshot taken at or past
//     the index this replica had applied (the leader first), checked whole
//     before it is installed; failing that, it is rebuilt from the newest
//     local snapshot and the local log, in a separate file that replaces
//     the state only once it has caught up.
//
// The state never goes back in time: every repair installs a state at or
// past the applied index. Repairs run with the FSM's lock held, so raft's
// applies wait for them, and are retried until they succeed or the replica
// closes.

// repairPeers returns the other members of the group, the leader first.
// While raft is starting (a damaged entry met replaying the log) it
// returns the group's initial members: raft is not there to ask yet.
func (g *Group) repairPeers() []string {
	var out []string
	r := g.ready.Load()
	if r == nil {
		for _, p := range g.cfg.Peers {
			if p.ID != g.cfg.NodeID {
				out = append(out, p.ID)
			}
		}
		return out
	}
	_, lid := r.LeaderWithID()
	leader := string(lid)
	if leader != "" && leader != g.cfg.NodeID {
		out = append(out, leader)
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return out
	}
	for _, s := range f.Configuration().Servers {
		if id := string(s.ID); id != g.cfg.NodeID && id != leader {
			out = append(out, id)
		}
	}
	return out
}

// repairEntry returns the intact batch of entry l, which failed to decode
// here, from a peer; or, if no peer has it intact, restores the state from
// a peer's snapshot past it and returns nil.
func (g *Group) repairEntry(l *raft.Log, cause error) (*store.Batch, error) {
	g.stats.damaged.Add(1)
	g.beginRepair(fmt.Sprintf("log entry %d is damaged: %v", l.Index, cause))
	defer g.endRepair()
	g.log.Error("damaged raft log entry; repairing it from a peer", "index", l.Index, "err", cause)
	for attempt := 0; ; attempt++ {
		for _, peer := range g.repairPeers() {
			b, err := g.fetchEntry(peer, l)
			if err != nil {
				g.log.Warn("cannot repair a log entry from this peer", "index", l.Index, "peer", peer, "err", err)
				continue
			}
			g.stats.repairs.Add(1)
			g.log.Info("repaired a damaged raft log entry from a peer", "index", l.Index, "peer", peer)
			return b, nil
		}
		if err := g.restoreFromPeers(l.Index); err == nil {
			g.stats.repairs.Add(1)
			return nil, nil
		} else {
			g.log.Warn("no peer could repair the damaged log entry yet", "index", l.Index, "err", err)
		}
		g.stats.repairFailures.Add(1)
		if !g.pause(repairBackoff.Delay(attempt)) {
			return nil, fmt.Errorf("repair log entry %d: %w", l.Index, kvd.ErrClosed)
		}
	}
}

// fetchEntry fetches entry l.Index from peer, checks it and writes it
// over the local copy.
func (g *Group) fetchEntry(peer string, l *raft.Log) (*store.Batch, error) {
	if g.cfg.Remote == nil {
		return nil, errors.New("no peer access")
	}
	ctx, cancel := context.WithTimeout(g.ctx, 10*time.Second)
	defer cancel()
	e, err := g.cfg.Remote.FetchLog(ctx, peer, g.id, l.Index)
	if err != nil {
		return nil, err
	}
	switch {
	case e.Index != l.Index || e.Type != raft.LogCommand:
		return nil, fmt.Errorf("peer sent entry %d of type %v", e.Index, e.Type)
	case e.Term != l.Term:
		return nil, fmt.Errorf("peer's entry %d has term %d, ours %d", e.Index, e.Term, l.Term)
	}
	b, err := store.DecodeBatch(e.Data)
	if err != nil {
		return nil, fmt.Errorf("peer's copy is damaged too: %w", err)
	}
	if err := g.logs.repair(e); err != nil {
		g.log.Warn("cannot rewrite the damaged log entry; applying the peer's copy anyway", "index", e.Index, "err", err)
	}
	return b, nil
}

// repairState replaces a damaged state with one at or past minIndex,
// retrying until it succeeds or the replica closes. The caller holds the
// FSM's lock.
func (g *Group) repairState(minIndex uint64, cause error) error {
	g.stats.damaged.Add(1)
	g.beginRepair(fmt.Sprintf("state is damaged: %v", cause))
	defer g.endRepair()
	g.log.Error("damaged state; repairing it", "applied", minIndex, "err", cause)
	if g.IsLeader() {
		// Let a healthy replica lead while this one repairs.
		g.goFunc(func() {
			if err := g.TransferLeadership(); err != nil {
				g.log.Warn("leadership hand-off before a repair failed", "err", err)
			}
		})
	}
	for attempt := 0; ; attempt++ {
		err := g.restoreFromPeers(minIndex)
		if err == nil {
			g.stats.repairs.Add(1)
			return nil
		}
		g.log.Warn("no peer could repair the state yet; trying the local snapshot and log", "err", err)
		if err = g.rebuildLocally(minIndex); err == nil {
			g.stats.repairs.Add(1)
			g.log.Info("state rebuilt from the local snapshot and log", "applied", g.db.AppliedIndex())
			return nil
		}
		g.log.Warn("cannot rebuild the state locally either; retrying", "err", err)
		g.stats.repairFailures.Add(1)
		if !g.pause(repairBackoff.Delay(attempt)) {
			return fmt.Errorf("repair state: %w", kvd.ErrClosed)
		}
	}
}

// restoreFromPeers installs a snapshot of a peer's state taken at or past
// minIndex, from the first peer that can give one.
func (g *Group) restoreFromPeers(minIndex uint64) error {
	peers := g.repairPeers()
	if g.cfg.Remote == nil || len(peers) == 0 {
		return errors.New("no peer to repair from")
	}
	var errs []error
	for _, peer := range peers {
		err := func() error {
			ctx, cancel := context.WithTimeout(g.ctx, 10*time.Minute)
			defer cancel()
			rc, err := g.cfg.Remote.FetchSnapshot(ctx, peer, g.id, minIndex)
			if err != nil {
				return err
			}
			defer rc.Close()
			return g.db.RestoreAtLeast(rc, minIndex)
		}()
		if err == nil {
			g.log.Info("state repaired from a peer's snapshot", "peer", peer, "applied", g.db.AppliedIndex())
			if err := writeFloor(g.cfg.Dir, g.db.AppliedIndex()); err != nil {
				g.log.Warn("cannot record the index the repair installed", "err", err)
			}
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", peer, err))
	}
	return errors.Join(errs...)
}

// rebuildLocally rebuilds the state from the newest local snapshot and the
// local log up to minIndex, in a separate file, then installs it.
func (g *Group) rebuildLocally(minIndex uint64) error {
	path := filepath.Join(g.cfg.Dir, "state.db.rebuild")
	os.Remove(path)
	os.Remove(path + ".dirty")
	defer func() {
		os.Remove(path)
		os.Remove(path + ".dirty")
	}()
	opts := g.cfg.Store
	opts.Group = g.id // the same checks as the live state: a rebuild must not diverge
	opts.NoSync, opts.InitialMmapSize, opts.OnCorrupt, opts.Logger = true, 0, nil, g.log
	tmp, err := store.Open(path, opts)
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	defer tmp.Close()
	if metas, err := g.snaps.List(); err == nil && len(metas) > 0 {
		rc, err := g.openSnapshot(metas[0].ID)
		if err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		err = tmp.Restore(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("rebuild: snapshot %s: %w", metas[0].ID, err)
		}
	}
	const chunk = 64
	for next := tmp.AppliedIndex() + 1; next <= minIndex; {
		var entries []store.Entry
		for ; next <= minIndex && len(entries) < chunk; next++ {
			var l raft.Log
			if err := g.logs.GetLog(next, &l); err != nil {
				return fmt.Errorf("rebuild: log entry %d: %w", next, err)
			}
			e := store.Entry{Index: l.Index, Term: l.Term}
			if l.Type == raft.LogCommand {
				if e.Batch, err = store.DecodeBatch(l.Data); err != nil {
					return fmt.Errorf("rebuild: log entry %d: %w", next, err)
				}
			}
			entries = append(entries, e)
		}
		if _, err := tmp.Apply(entries); err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
	}
	if tmp.AppliedIndex() < minIndex {
		return fmt.Errorf("rebuild reached index %d, %d needed", tmp.AppliedIndex(), minIndex)
	}
	snap, err := tmp.Snapshot()
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := snap.WriteTo(pw)
		snap.Close()
		pw.CloseWithError(err)
	}()
	err = g.db.RestoreAtLeast(pr, minIndex)
	pr.CloseWithError(err)
	return err
}

// corruptionSeen is told (by the store) when a read met damaged data: the
// replica stops serving and repairs its state in the background.
func (g *Group) corruptionSeen(err error) {
	if g.ctx.Err() != nil || !g.repairQueued.CompareAndSwap(false, true) {
		return
	}
	g.log.Error("a read met damaged data; the replica stops serving the group until it is repaired", "err", err)
	g.beginRepair(fmt.Sprintf("a read met damaged data: %v", err))
	seen := g.stats.repairs.Load()
	g.goFunc(func() {
		defer g.repairQueued.Store(false)
		defer g.endRepair()
		g.fsm.mu.Lock()
		defer g.fsm.mu.Unlock()
		if g.fsm.broken || g.ctx.Err() != nil {
			return
		}
		// An apply may have met the damage and repaired it meanwhile.
		if g.stats.repairs.Load() != seen {
			return
		}
		if rerr := g.repairState(g.db.AppliedIndex(), err); rerr != nil {
			g.log.Warn("state repair interrupted", "err", rerr)
		}
	})
}
