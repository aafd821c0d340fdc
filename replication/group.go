package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// Peer is one replica of a group as Raft sees it.
type Peer struct {
	// ID is the node id of the replica's node.
	ID string
	// Addr is the node's advertised Raft address.
	Addr string
}

// Config configures one replica of a group.
type Config struct {
	// Group is the group's id.
	Group kvd.GroupID
	// NodeID is this node's id; it is the replica's Raft server id.
	NodeID string
	// Dir holds the replica's files: raft.db (log and stable store),
	// snapshots/ and state.db (the bbolt state).
	Dir string
	// Peers are the group's initial members, this node included. Used
	// only to bootstrap a replica without existing state.
	Peers []Peer
	// Bootstrap, when the replica has no state yet, bootstraps the group
	// with Peers. Every initial member may do so with the same Peers.
	Bootstrap bool
	// Layer carries the group's Raft traffic (see Mux.Layer).
	Layer raft.StreamLayer
	// Transport, if set, is used instead of a network transport over
	// Layer (an embedded single node uses raft's in-memory transport).
	Transport raft.Transport
	// AddressProvider, if set, names the address to dial for each peer,
	// overriding the address in the Raft configuration.
	AddressProvider raft.ServerAddressProvider
	// Remote reaches this group's replicas on other nodes: for follower
	// reads, repairs and integrity checks. Nil disables them.
	Remote Remote
	// RequireState refuses to open a replica that has no Raft state (its
	// directory was lost): a replica that comes back empty would have
	// forgotten its term and vote and the entries it acknowledged.
	RequireState bool
	// SeedMap, if set, is proposed as the stored cluster map by the first
	// leader whose store holds no map or an older one.
	SeedMap *kvd.Map

	// Raft timing.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is how many entries since the last snapshot
	// trigger a new one, checked every SnapshotInterval.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot,
	// so a briefly lagging follower catches up without one.
	TrailingLogs uint64
	// MaxAppendEntries bounds the entries per AppendEntries RPC and per
	// applied batch.
	MaxAppendEntries int
	// MaxBatchCmds and MaxBatchBytes bound how many proposals one log
	// entry carries.
	MaxBatchCmds  int
	MaxBatchBytes int
	// ApplyTimeout bounds how long a proposal waits to be enqueued in Raft.
	ApplyTimeout time.Duration
	// LeaderTransferTimeout bounds TransferLeadership.
	LeaderTransferTimeout time.Duration
	// FollowerMaxWait bounds how long a follower read waits for this
	// replica to apply the leader's read index before it is refused as
	// lagging (and sent to the leader).
	FollowerMaxWait time.Duration
	// LogCacheBytes and LogCacheEntries bound the cache of recent log
	// entries (leaders send from it, followers apply from it).
	LogCacheBytes   int
	LogCacheEntries int
	// MaxQueueBytes bounds the commands waiting to be put into a log
	// entry, MaxInflightBytes the entries handed to raft and not yet
	// applied. Past them a proposal is refused at once with
	// kvd.ErrOverloaded: memory stays bounded under any load.
	MaxQueueBytes    int
	MaxInflightBytes int
	// IntegrityInterval is how often the replica scrubs its state and, as
	// leader, compares the replicas' state hashes (see integrity.go); 0
	// disables it.
	IntegrityInterval time.Duration
	// Observer, if set, is told of applies and log appends, for metrics.
	Observer Observer

	// Store configures the replica's bbolt state.
	Store store.Options
	// Logger receives the replica's logs, Raft's included.
	Logger *slog.Logger
}

// Remote reaches a group's replicas on other nodes. The node implements
// it over its node-to-node API; each method must fail (not hang) once ctx
// ends.
type Remote interface {
	// ReadIndex asks the replica on node leader for a read index.
	ReadIndex(ctx context.Context, leader string, g kvd.GroupID) (uint64, error)
	// FetchLog returns entry index of node's log of group g; node must
	// have applied it.
	FetchLog(ctx context.Context, node string, g kvd.GroupID, index uint64) (*raft.Log, error)
	// FetchSnapshot streams a snapshot of node's replica of g, taken once
	// it has applied minIndex.
	FetchSnapshot(ctx context.Context, node string, g kvd.GroupID, minIndex uint64) (io.ReadCloser, error)
	// HashAt returns the state hash node's replica of g recorded at index
	// (see CheckIntegrity).
	HashAt(ctx context.Context, node string, g kvd.GroupID, index uint64) (uint64, error)
}

// Observer is told of the replica's work, for metrics. Every field is
// optional; each is called on a hot path and must not block.
type Observer struct {
	// Apply is told of every applied batch: how long it took.
	Apply func(d time.Duration)
	// Append is told of every append to the Raft log (an fsync).
	Append func(d time.Duration)
}

// ErrNoState is returned by Open for a replica that must have state
// (Config.RequireState) and has none.
var ErrNoState = errors.New("no raft state")

// DefaultConfig returns a configuration with kvd's defaults; the caller
// fills in Group, NodeID, Dir, Peers and Layer.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:      1000 * time.Millisecond,
		ElectionTimeout:       1000 * time.Millisecond,
		LeaderLeaseTimeout:    500 * time.Millisecond,
		CommitTimeout:         20 * time.Millisecond,
		SnapshotThreshold:     8192,
		SnapshotInterval:      30 * time.Second,
		TrailingLogs:          4096,
		MaxAppendEntries:      32,
		MaxBatchCmds:          512,
		MaxBatchBytes:         1 << 20,
		ApplyTimeout:          5 * time.Second,
		LeaderTransferTimeout: 5 * time.Second,
		FollowerMaxWait:       500 * time.Millisecond,
		LogCacheBytes:         32 << 20,
		LogCacheEntries:       1024,
		MaxQueueBytes:         32 << 20,
		MaxInflightBytes:      32 << 20,
		IntegrityInterval:     5 * time.Minute,
		Store:                 lazyStore(),
		Logger:                slog.Default(),
	}
}

// lazyStore is the state's default: no fsync per applied batch. The Raft
// log (fsynced) is the durable record; a state left dirty by a crash is
// rebuilt at start from the newest snapshot and the log (see store.Open).
func lazyStore() store.Options {
	o := store.DefaultOptions()
	o.NoSync = true
	return o
}

func (c *Config) validate() error {
	switch {
	case c.Group == 0:
		return errors.New("group id is required")
	case c.NodeID == "":
		return errors.New("node id is required")
	case c.Dir == "":
		return errors.New("dir is required")
	case c.Layer == nil && c.Transport == nil:
		return errors.New("a stream layer or a transport is required")
	case c.MaxBatchCmds < 1 || c.MaxBatchBytes < 1 || c.MaxAppendEntries < 1:
		return errors.New("batch limits must be positive")
	}
	def := DefaultConfig()
	if c.FollowerMaxWait <= 0 {
		c.FollowerMaxWait = def.FollowerMaxWait
	}
	if c.LogCacheBytes <= 0 {
		c.LogCacheBytes = def.LogCacheBytes
	}
	if c.LogCacheEntries <= 0 {
		c.LogCacheEntries = def.LogCacheEntries
	}
	if c.MaxQueueBytes <= 0 {
		c.MaxQueueBytes = def.MaxQueueBytes
	}
	if c.MaxInflightBytes <= 0 {
		c.MaxInflightBytes = def.MaxInflightBytes
	}
	if c.Bootstrap {
		found := false
		for _, p := range c.Peers {
			found = found || p.ID == c.NodeID
		}
		if !found {
			return fmt.Errorf("bootstrap peers do not include this node %q", c.NodeID)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Group is one replica of a shard group: a hashicorp/raft node whose state
// machine is a store.DB. The leader is the group's primary; followers are
// backups and take over when it fails.
type Group struct {
	cfg   Config
	id    kvd.GroupID
	log   *slog.Logger
	db    *store.DB
	bolt  *raftboltdb.BoltStore
	logs  *logStore
	snaps raft.SnapshotStore
	trans raft.Transport
	raft  *raft.Raft
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

// Open opens (or creates) the replica in cfg.Dir and starts it.
func Open(cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("open group: %w", err)
	}
	log := cfg.Logger.With("group", cfg.Group)
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	raftPath := filepath.Join(cfg.Dir, "raft.db")
	if _, err := os.Stat(raftPath); cfg.RequireState && os.IsNotExist(err) {
		return nil, fmt.Errorf("open group %d: %s is missing: %w", cfg.Group, raftPath, ErrNoState)
	}
	g := &Group{cfg: cfg, id: cfg.Group, log: log,
		origin:       rand.Uint64() | 1,
		props:        make(chan *proposal, 4096),
		inflight:     make(chan *entry, 1024),
		inflightFree: make(chan struct{}, 1),
		releaseKick:  make(chan struct{}, 1),
		pending:      pendingEntries{m: map[uint64]*entry{}, orphans: map[uint64]*entry{}},
		leaderKick:   make(chan struct{}, 1),
		raftDone:     make(chan struct{}),
	}
	g.fsm = &fsm{g: g}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			g.closeFiles()
		}
	}()

	var err error
	if g.bolt, err = raftboltdb.New(raftboltdb.Options{Path: raftPath}); err != nil {
		return nil, fmt.Errorf("open group %d: raft log: %w", cfg.Group, err)
	}
	hlog := newHCLog(log, "raft")
	if g.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog); err != nil {
		return nil, fmt.Errorf("open group %d: snapshots: %w", cfg.Group, err)
	}
	hasState, err := raft.HasExistingState(g.bolt, g.bolt, g.snaps)
	if err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	if cfg.RequireState && !hasState {
		return nil, fmt.Errorf("open group %d: %s holds no raft state: %w", cfg.Group, raftPath, ErrNoState)
	}
	sopts := cfg.Store
	sopts.Logger = log
	sopts.Group = cfg.Group
	sopts.OnCorrupt = g.corruptionSeen
	if g.db, err = store.Open(filepath.Join(cfg.Dir, "state.db"), sopts); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	if err := g.catchUpWithSnapshot(); err != nil {
		return nil, fmt.Errorf("open group %d: %w", cfg.Group, err)
	}
	g.logs = newLogStore(g.bolt, cfg.LogCacheBytes, cfg.LogCacheEntries, log)
	g.logs.onAppend = cfg.Observer.Append
	// Before raft starts: the end of the log, and of the newest snapshot.
	// Everything this replica applied before it stopped is at or below
	// it (see runCatchUp).
	floor, err := g.bolt.LastIndex()
	if err != nil {
		return nil, fmt.Errorf("open group %d: raft log: %w", cfg.Group, err)
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
		return nil, fmt.Errorf("open group %d: read the current term: %w", cfg.Group, err)
	}
	if err := g.logs.checkLog(snapIndex+1, floor, currentTerm); err != nil {
		log.Error("the raft log holds an entry that cannot be read; not starting this replica", "err", err)
		return nil, fmt.Errorf("open group %d: %w: %w", cfg.Group, err, ErrNoState)
	}
	floor = max(floor, snapIndex, g.db.AppliedIndex(), readFloor(cfg.Dir))
	g.startFloor.Store(floor)
	g.health.caughtUp.Store(g.db.AppliedIndex() >= floor)
	if failpoint.Mutant(failpoint.MutantServeBeforeCatchUp) {
		g.health.caughtUp.Store(true) // planted bug: serves before re-applying its log
	}
	if cfg.Transport != nil {
		g.trans = cfg.Transport
	} else {
		g.trans = &gatedTransport{NetworkTransport: raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			ServerAddressProvider: cfg.AddressProvider,
			Logger:                hlog,
			Stream:                cfg.Layer,
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

	notify := make(chan bool, 16)
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
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("open group %d: raft config: %w", cfg.Group, err)
	}
	stable := &stableStore{StableStore: g.bolt, ctx: g.ctx, log: log}
	if g.raft, err = raft.NewRaft(rc, g.fsm, g.logs, stable, g.snaps, g.trans); err != nil {
		return nil, fmt.Errorf("open group %d: start raft: %w", cfg.Group, err)
	}
	if !hasState && cfg.Bootstrap {
		var conf raft.Configuration
		for _, p := range cfg.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
		}
		if err := g.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			g.raft.Shutdown().Error()
			return nil, fmt.Errorf("open group %d: bootstrap: %w", cfg.Group, err)
		}
	}

	g.leaderReads = newReadBatcher(g.leaderRound)
	g.followerReads = newReadBatcher(g.followerRound)
	g.goFunc(g.runProposer)
	g.goFunc(g.runCompleter)
	g.goFunc(func() { g.leaderReads.run(g.ctx) })
	g.goFunc(func() { g.followerReads.run(g.ctx) })
	g.goFunc(func() { g.watchLeadership(notify) })
	g.goFunc(g.runLeaderTasks)
	g.goFunc(g.runCatchUp)
	g.goFunc(g.runIntegrity)
	g.goFunc(g.runRelease)
	ok = true
	log.Info("group replica started", "applied", g.db.AppliedIndex(), "existing_state", hasState)
	return g, nil
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
	_, rc, err := g.snaps.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", metas[0].ID, err)
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
	_, rc, err = g.snaps.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", metas[0].ID, err)
	}
	defer rc.Close()
	return g.db.Restore(rc)
}

func (g *Group) goFunc(fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
}

// ID returns the group's id.
func (g *Group) ID() kvd.GroupID { return g.id }

// Store returns the replica's state for local reads. Call ReadBarrier
// first for anything but a stale read.
func (g *Group) Store() *store.DB { return g.db }

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

// WaitApplied waits until this replica has applied index idx.
func (g *Group) WaitApplied(ctx context.Context, idx uint64) error {
	for {
		if g.db.AppliedIndex() >= idx {
			return nil
		}
		ch := g.db.AppliedCh()
		if g.db.AppliedIndex() >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("group %d: wait for index %d (applied %d): %w (%v)", g.id, idx, g.db.AppliedIndex(), kvd.ErrUnavailable, ctx.Err())
		case <-g.ctx.Done():
			return fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)
		}
	}
}

// ReadBarrier waits until this replica may serve a read at consistency c:
// at once for Stale; for Linearizable, only on the leader, after a read
// index round confirmed by a quorum and applied here; for Follower, on any
// replica, after asking the leader for its read index and applying it.
// Concurrent reads share rounds. A *kvd.NotLeaderError means a
// linearizable read must go to the leader.
func (g *Group) ReadBarrier(ctx context.Context, c kvd.Consistency) error {
	var idx uint64
	var err error
	switch {
	case c == kvd.Stale:
		// No round trip, but never an older state than this replica
		// served before it stopped, nor one under repair. Nor is the
		// read sent to the leader meanwhile: served there, then here
		// once caught up, reads through this node would go back in time.
		if err := g.waitServing(ctx, g.cfg.FollowerMaxWait); err != nil {
			return fmt.Errorf("%v; read from another replica: %w", err, kvd.ErrUnavailable)
		}
		return nil
	case g.health.repairs.Load() > 0:
		return g.Serving()
	case g.raft.State() == raft.Leader:
		if failpoint.Mutant(failpoint.MutantLeaderReadNoQuorum) {
			return nil // planted bug: no read-index round, no wait
		}
		idx, err = g.leaderReads.get(ctx)
	case c == kvd.Linearizable:
		return &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	default:
		idx, err = g.followerReads.get(ctx)
		if err != nil {
			return err
		}
		if failpoint.Mutant(failpoint.MutantFollowerReadNoWait) {
			return nil // planted bug: the read index is not waited for
		}
		// A follower far behind (after a partition heals, raft may take
		// seconds to resume replicating to it) sends the read to the
		// leader rather than make it wait.
		wctx, cancel := context.WithTimeout(ctx, g.cfg.FollowerMaxWait)
		defer cancel()
		if err := g.WaitApplied(wctx, idx); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("group %d: replica lags the leader (applied %d, read index %d): %w", g.id, g.db.AppliedIndex(), idx,
				&kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()})
		}
		return nil
	}
	if err != nil {
		return err
	}
	return g.WaitApplied(ctx, idx)
}

// ReadIndex returns, on the leader, an index such that every write
// acknowledged before the call is at or below it, confirmed by a quorum.
// Followers call it remotely to serve follower reads.
func (g *Group) ReadIndex(ctx context.Context) (uint64, error) {
	if err := g.checkLeader(); err != nil {
		return 0, err
	}
	return g.leaderReads.get(ctx)
}

// leaderRound is one read-index round on the leader: once the leader has
// applied an entry of its own term (so its commit index covers every
// earlier term), capture the commit index, then confirm leadership with a
// quorum. Capturing before confirming closes the window in which a
// deposed leader could hand out a stale index.
func (g *Group) leaderRound(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.ElectionTimeout*5)
	defer cancel()
	term := g.raft.CurrentTerm()
	for g.db.AppliedTerm() != term {
		if err := g.checkLeader(); err != nil {
			return 0, err
		}
		ch := g.db.AppliedCh()
		if g.db.AppliedTerm() == term {
			break
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return 0, fmt.Errorf("group %d: new leader has not committed in its term: %w", g.id, kvd.ErrUnavailable)
		}
		if t := g.raft.CurrentTerm(); t != term {
			term = t
		}
	}
	idx := g.raft.CommitIndex()
	if err := g.raft.VerifyLeader().Error(); err != nil {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	if g.raft.CurrentTerm() != term {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	return idx, nil
}

// followerRound asks the leader for a read index. While leadership moves
// (a planned hand-over, an election) there is briefly no leader, or the
// one asked has just stepped down: the round waits for the next leader
// for up to two election timeouts rather than fail the reads that share
// it. A replica cut off from its leader still gives up soon enough for
// the client to try another.
func (g *Group) followerRound(ctx context.Context) (uint64, error) {
	if g.cfg.Remote == nil {
		return 0, &kvd.NotLeaderError{Group: g.id, Leader: g.LeaderID()}
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.ElectionTimeout*5)
	defer cancel()
	giveUp := time.Now().Add(2 * g.cfg.ElectionTimeout)
	for {
		idx, err := g.followerRoundOnce(ctx)
		var nl *kvd.NotLeaderError
		if err == nil || ctx.Err() != nil || time.Now().After(giveUp) ||
			!(errors.As(err, &nl) || errors.Is(err, errNoLeader)) {
			return idx, err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return 0, err
		case <-g.ctx.Done():
			return 0, fmt.Errorf("group %d: %w", g.id, kvd.ErrClosed)
		}
	}
}

// errNoLeader says a replica knows of no leader for now.
var errNoLeader = errors.New("no leader known")

func (g *Group) followerRoundOnce(ctx context.Context) (uint64, error) {
	switch leader := g.LeaderID(); leader {
	case "":
		return 0, fmt.Errorf("group %d: %w: %w", g.id, errNoLeader, kvd.ErrUnavailable)
	case g.cfg.NodeID:
		return g.leaderRound(ctx)
	default:
		return g.cfg.Remote.ReadIndex(ctx, leader, g.id)
	}
}

// watchLeadership forwards raft's leadership notifications to the leader
// task runner without ever blocking raft.
func (g *Group) watchLeadership(notify <-chan bool) {
	for {
		select {
		case isLeader := <-notify:
			if isLeader {
				g.log.Info("became leader", "term", g.raft.CurrentTerm())
				select {
				case g.leaderKick <- struct{}{}:
				default:
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
				select {
				case <-time.After(100 * time.Millisecond):
				case <-g.ctx.Done():
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

// Snapshot asks raft to take a snapshot now (used by tests and operators).
func (g *Group) Snapshot() error {
	if err := g.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("group %d: snapshot: %w", g.id, err)
	}
	return nil
}

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
