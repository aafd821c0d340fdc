package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// Group is one replica of a shard group: a hashicorp/raft node whose state
// machine is a store.DB. The leader is the group's primary; followers are
// backups and take over when it fails.
type Group struct {
	cfg Config
	id  kvd.GroupID
	log *slog.Logger
	db  *store.DB
	// bolt is the Raft log and stable store, raft-boltdb's or raft-wal's
	// (logKind).
	bolt    raftStore
	logKind string
	logs    *logStore
	// sealedLogs and sealedSnaps seal what the log and the snapshots
	// write (see encryption.go); snaps is sealedSnaps.
	sealedLogs  *sealedLog
	sealedSnaps *sealedSnapshots
	snaps       raft.SnapshotStore
	enc         encryptionState
	trans       raft.Transport
	raft        *raft.Raft
	// ready is raft once raft.NewRaft has returned: the FSM may apply
	// (replaying the log) before, when the raft field is not set yet.
	ready atomic.Pointer[raft.Raft]
	fsm   *fsm

	health healthState
	stats  groupStats
	// startFloor is the index the replica must apply after its start
	// before it serves stale reads (see runCatchUp).
	startFloor atomic.Uint64
	// repairQueued is set while a repair a read asked for is pending.
	repairQueued atomic.Bool
	// queued and inflight are the bytes of commands waiting for the
	// proposer and of entries raft has not yet applied; inflightFree is
	// signalled when inflight drops.
	queued       atomic.Int64
	inflightSize atomic.Int64
	inflightFree chan struct{}
	// appliedBytes counts the bytes applied since the state's mapped
	// pages were last released; releaseKick asks for a release.
	appliedBytes atomic.Int64
	releaseKick  chan struct{}

	origin        uint64 // identifies this incarnation's proposals
	props         chan *proposal
	inflight      chan *entry
	pending       pendingEntries
	leaderReads   *readBatcher
	followerReads *readBatcher
	leaderKick    chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// raftDone is closed once raft has shut down; the leadership watcher
	// drains raft's notifications until then, so raft never blocks on them.
	raftDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// goFunc runs fn on a goroutine of the group's: Close waits for it.
func (g *Group) goFunc(fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
}

// pause waits for d; it reports false if the replica closes first.
func (g *Group) pause(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-g.ctx.Done():
		return false
	}
}

// kick wakes the goroutine that waits on ch, a channel with a buffer of
// one, without blocking: a wake-up already pending stands for this one.
func kick(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// ID returns the group's id.
func (g *Group) ID() kvd.GroupID { return g.id }

// Store returns the replica's state for local reads. Call ReadBarrier
// first for anything but a stale read.
func (g *Group) Store() *store.DB { return g.db }

// Close stops the replica: queued proposals fail, raft shuts down, then
// the transport, log and state are closed. It waits for every goroutine
// the group started and is safe to call more than once.
func (g *Group) Close() error {
	g.closeOnce.Do(func() {
		g.cancel()
		var errs []error
		if g.raft != nil {
			if err := g.raft.Shutdown().Error(); err != nil {
				errs = append(errs, fmt.Errorf("shutdown raft: %w", err))
			}
		}
		if t, ok := g.trans.(*gatedTransport); ok {
			t.shut() // no heartbeat may reach the stores from here on
		}
		close(g.raftDone)
		g.wg.Wait()
		g.settleAll()
		if err := g.closeFiles(); err != nil {
			errs = append(errs, err)
		}
		g.closeErr = errors.Join(errs...)
		g.log.Info("group replica stopped")
	})
	return g.closeErr
}

func (g *Group) closeFiles() error {
	var errs []error
	if c, ok := g.trans.(raft.WithClose); ok && g.trans != nil {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close transport: %w", err))
		}
	} else if g.cfg.Layer != nil {
		g.cfg.Layer.Close()
	}
	if g.bolt != nil {
		if err := g.bolt.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log: %w", err))
		}
	}
	if g.db != nil {
		if err := g.db.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
