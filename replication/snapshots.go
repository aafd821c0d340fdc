package replication

import (
	"fmt"
	"io"

	"github.com/kvd-project/kvd/store"
)

// Snapshot asks raft to take a snapshot now (used by tests and operators).
func (g *Group) Snapshot() error {
	if err := g.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("group %d: snapshot: %w", g.id, err)
	}
	return nil
}

// catchUpWithSnapshot restores the newest snapshot into the store when the
// store is behind it. raft starts applying from the snapshot's index, so a
// store behind it would silently skip the entries in between.
func (g *Group) catchUpWithSnapshot() error {
	metas, err := g.snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if len(metas) == 0 {
		return nil
	}
	rc, err := g.openSnapshot(metas[0].ID)
	if err != nil {
		return err
	}
	applied, _, err := store.ReadSnapshotHeader(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", metas[0].ID, err)
	}
	if g.db.AppliedIndex() >= applied {
		return nil
	}
	g.log.Warn("state is behind the latest snapshot, restoring it", "state_applied", g.db.AppliedIndex(), "snapshot_applied", applied)
	if rc, err = g.openSnapshot(metas[0].ID); err != nil {
		return err
	}
	defer rc.Close()
	return g.db.Restore(rc)
}

// openSnapshot opens the local snapshot id for reading.
func (g *Group) openSnapshot(id string) (io.ReadCloser, error) {
	_, rc, err := g.snaps.Open(id)
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	return rc, nil
}
