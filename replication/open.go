package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// Open opens (or creates) the replica in cfg.Dir and starts it.
func Open(cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("open group: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	kind := StoredLogStore(cfg.Dir)
	if kind == "" && cfg.RequireState {
		return nil, fmt.Errorf("open group %d: %s holds no raft log (%s or %s/): %w", cfg.Group, cfg.Dir, boltLogFile, walLogDir, ErrNoState)
	}
	if kind == "" {
		kind = cmp.Or(cfg.LogStore, LogStoreWAL)
	}
	g := newGroup(cfg)
	ok := false
	defer func() {
		if !ok {
			g.closeFiles()
		}
	}()
	hlog := newHCLog(g.log, "raft")
	hasState, err := g.openStores(kind, hlog)
	if err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	if err := g.setStartFloor(hasState); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	g.trans = g.newTransport(hlog)
	notify := make(chan bool, 16)
	if err := g.startRaft(hlog, notify, hasState); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	g.startWorkers(notify)
	ok = true
	g.log.Info("group replica started", "applied", g.db.AppliedIndex(), "existing_state", hasState)
	return g, nil
}

// newGroup returns the replica of cfg with its queues made and nothing
// opened yet.
func newGroup(cfg Config) *Group {
	g := &Group{cfg: cfg, id: cfg.Group, log: cfg.Logger.With("group", cfg.Group),
		origin:       rand.Uint64() | 1,
		props:        make(chan *proposal, 4096),
		inflight:     make(chan *entry, 1024),
		inflightFree: make(chan struct{}, 1),
		releaseKick:  make(chan struct{}, 1),
		pending:      pendingEntries{m: map[uint64]*entry{}, orphans: map[uint64]*entry{}},
		leaderKick:   make(chan struct{}, 1),
		raftDone:     make(chan struct{}),
		enc:          encryptionState{kick: make(chan struct{}, 1)},
	}
	g.fsm = &fsm{g: g}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

// openStores opens the Raft log (of kind), the snapshots and the state,
// and brings the state up to the newest snapshot. It reports whether the
// replica has Raft state.
func (g *Group) openStores(kind string, hlog hclog.Logger) (hasState bool, err error) {
	cfg := &g.cfg
	if g.bolt, err = openRaftStore(kind, cfg.Dir, cfg.WALSegmentBytes, hlog); err != nil {
		return false, err
	}
	g.logKind = kind
	fss, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog)
	if err != nil {
		return false, fmt.Errorf("snapshots: %w", err)
	}
	g.sealedSnaps = &sealedSnapshots{FileSnapshotStore: fss, dir: cfg.Dir, keys: cfg.Keys}
	g.snaps = g.sealedSnaps
	g.sealedLogs = &sealedLog{LogStore: g.bolt, keys: cfg.Keys, log: g.log}
	hasState, err = raft.HasExistingState(g.bolt, g.bolt, g.snaps)
	if err != nil {
		return false, err
	}
	if cfg.RequireState && !hasState {
		return false, fmt.Errorf("%s holds no raft state: %w", cfg.Dir, ErrNoState)
	}
	sopts := cfg.Store
	sopts.Logger = g.log
	sopts.Group = cfg.Group
	sopts.OnCorrupt = g.corruptionSeen
	sopts.Keys = cfg.Keys
	if g.db, err = store.Open(filepath.Join(cfg.Dir, "state.db"), sopts); err != nil {
		return false, err
	}
	if err := g.checkKeys(); err != nil {
		return false, err
	}
	if err := g.catchUpWithSnapshot(); err != nil {
		return false, err
	}
	g.logs = newLogStore(g.sealedLogs, cfg.LogCacheBytes, cfg.LogCacheEntries, g.log)
	g.logs.onAppend = cfg.Observer.Append
	return hasState, nil
}

// setStartFloor sets the index the replica must apply before it serves
// (see runCatchUp), before raft starts, and checks on the way that raft
// can read every entry of the log after the newest snapshot.
func (g *Group) setStartFloor(hasState bool) error {
	// Before raft starts: the end of the log, and of the newest snapshot.
	// Everything this replica applied before it stopped is at or below
	// it (see runCatchUp).
	floor, err := g.bolt.LastIndex()
	if err != nil {
		return fmt.Errorf("raft log: %w", err)
	}
	var snapIndex uint64
	if metas, err := g.snaps.List(); err == nil && len(metas) > 0 {
		snapIndex = metas[0].Index
	}
	// raft reads every entry after its newest snapshot when it starts, and
	// panics on one it cannot decode; its term is unknown, so it cannot be
	// handed over either. Such a replica must be rebuilt as a new one.
	currentTerm, err := g.bolt.GetUint64([]byte("CurrentTerm")) // raft's key
	if err != nil && hasState {
		return fmt.Errorf("read the current term: %w", err)
	}
	if err := g.logs.checkLog(snapIndex+1, floor, currentTerm); err != nil {
		g.log.Error("the raft log holds an entry that cannot be read; not starting this replica", "err", err)
		return fmt.Errorf("%w: %w", err, ErrNoState)
	}
	floor = max(floor, snapIndex, g.db.AppliedIndex(), readFloor(g.cfg.Dir))
	if g.cfg.Joining && !hasState {
		floor = joiningFloor
	}
	g.startFloor.Store(floor)
	g.health.caughtUp.Store(g.db.AppliedIndex() >= floor)
	if failpoint.Mutant(failpoint.MutantServeBeforeCatchUp) {
		g.health.caughtUp.Store(true) // planted bug: serves before re-applying its log
	}
	return nil
}

// newTransport returns Config.Transport if set, else a network transport
// over Config.Layer.
func (g *Group) newTransport(hlog hclog.Logger) raft.Transport {
	if g.cfg.Transport != nil {
		return g.cfg.Transport
	}
	return &gatedTransport{NetworkTransport: raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: g.cfg.AddressProvider,
		Logger:                hlog,
		Stream:                g.cfg.Layer,
		MaxPool:               3,
		Timeout:               10 * time.Second,
		// No pipelining: in hashicorp/raft's pipeline a follower that
		// answers Success=false or a newer term can wedge replication
		// to it for good (heartbeats still flow, so nothing heals it)
		// and block Shutdown (hashicorp/raft#612). Entries are batched
		// anyway (MaxAppendEntries per request), so one request in
		// flight per follower costs little.
		MaxRPCsInFlight: 1,
	})}
}

// raftConfig returns raft's configuration for the replica; raft tells
// notify of its leadership changes.
func (g *Group) raftConfig(hlog hclog.Logger, notify chan bool) *raft.Config {
	cfg := &g.cfg
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = cfg.MaxAppendEntries
	// The state is persistent: raft must not restore the snapshot over it
	// on start (catchUpWithSnapshot did so only if the state was behind);
	// raft still replays the log from the snapshot's index, and the store
	// skips what it has already applied.
	rc.NoSnapshotRestoreOnStart = true
	rc.NotifyCh = notify
	return rc
}

// startRaft starts raft over the opened stores and, for a new replica
// that is to, bootstraps the group.
func (g *Group) startRaft(hlog hclog.Logger, notify chan bool, hasState bool) error {
	rc := g.raftConfig(hlog, notify)
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("raft config: %w", err)
	}
	stable := &stableStore{StableStore: g.bolt, ctx: g.ctx, log: g.log}
	var err error
	if g.raft, err = raft.NewRaft(rc, g.fsm, g.logs, stable, g.snaps, g.trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	g.ready.Store(g.raft)
	if !hasState && g.cfg.Bootstrap {
		var conf raft.Configuration
		for _, p := range g.cfg.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
		}
		if err := g.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			g.raft.Shutdown().Error()
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	return nil
}

// startWorkers starts the replica's goroutines; watchLeadership reads
// raft's leadership changes from notify.
func (g *Group) startWorkers(notify <-chan bool) {
	g.leaderReads = newReadBatcher(g.leaderRound)
	g.followerReads = newReadBatcher(g.followerRound)
	g.goFunc(g.runReencrypt)
	g.goFunc(g.runProposer)
	g.goFunc(g.runCompleter)
	g.goFunc(func() { g.leaderReads.run(g.ctx) })
	g.goFunc(func() { g.followerReads.run(g.ctx) })
	g.goFunc(func() { g.watchLeadership(notify) })
	g.goFunc(g.runLeaderTasks)
	g.goFunc(g.runCatchUp)
	g.goFunc(g.runIntegrity)
	g.goFunc(g.runRelease)
}
