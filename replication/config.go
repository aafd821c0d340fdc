package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
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
	// Joining opens a replica being added to a running group: it starts
	// empty, waits for the leader to send it the log, and serves no read
	// until the leader's read index says it has caught up.
	Joining bool
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
	// LogStore picks the Raft log and stable store of a new replica:
	// LogStoreWAL (hashicorp/raft-wal: segment files and a small meta
	// file under wal/; the default) or LogStoreBolt (raft-boltdb, one
	// file: raft.db). A replica keeps the store it was created with,
	// whatever this says. WALSegmentBytes is the size of raft-wal's segment files,
	// each allocated whole when created.
	LogStore        string
	WALSegmentBytes int
	// Room, if set, tells whether the disk has room for the replica's
	// background rewrites (re-encryption): an error stops them until a
	// later try, so that they do not take the free space kept for what
	// Raft must write.
	Room func() error
	// Keys, if set, encrypt the replica's state, Raft log entries and
	// snapshots (see encryption.go); Store.Keys is set from it.
	Keys *atrest.Keys
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
	// Leader is told when this replica becomes the group's leader, with
	// its term (for the node's event log).
	Leader func(term uint64)
}

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
		LogStore:              LogStoreWAL,
		WALSegmentBytes:       16 << 20,
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
	case c.LogStore != "" && c.LogStore != LogStoreBolt && c.LogStore != LogStoreWAL:
		return fmt.Errorf("log store %q: want %s or %s", c.LogStore, LogStoreBolt, LogStoreWAL)
	case c.WALSegmentBytes < 0:
		return errors.New("the WAL segment size must not be negative")
	}
	def := DefaultConfig()
	orDefault(&c.FollowerMaxWait, def.FollowerMaxWait)
	orDefault(&c.LogCacheBytes, def.LogCacheBytes)
	orDefault(&c.LogCacheEntries, def.LogCacheEntries)
	orDefault(&c.MaxQueueBytes, def.MaxQueueBytes)
	orDefault(&c.MaxInflightBytes, def.MaxInflightBytes)
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

// orDefault sets *v to def unless *v is positive.
func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
