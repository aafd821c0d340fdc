package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// PeerAddr is where this node dials a peer, overriding the cluster map.
type PeerAddr struct {
	HTTP string `json:"http,omitempty"`
	Raft string `json:"raft,omitempty"`
}

// Config configures one node.
type Config struct {
	// NodeID is this node's id.
	NodeID string
	// DataDir holds the node's state: node.json and one directory per
	// hosted group under groups/.
	DataDir string
	// HTTPAddr and RaftAddr are the listen addresses.
	HTTPAddr string
	RaftAddr string
	// HTTPAdvertise and RaftAdvertise are what peers and clients dial;
	// empty means the listen address.
	HTTPAdvertise string
	RaftAdvertise string
	// HTTPListener and RaftListener, if set, are used instead of listening
	// on HTTPAddr and RaftAddr (tests listen on port 0 first).
	HTTPListener net.Listener
	RaftListener net.Listener
	// Frontend, if set, serves the node's API on its HTTP listener
	// (package node sets httpapi's). A node that is not embedded needs
	// one: its peers reach it there.
	Frontend FrontendFunc
	// Embedded runs a single node without a Raft listener (Raft over an
	// in-memory transport), serving HTTP only if HTTPAddr or HTTPListener
	// is set: the embedded store.
	Embedded bool
	// InitialCluster, if set, is the bootstrap file. It is read only on
	// the first start; a restarted node resumes from DataDir. Nil starts
	// a single-node cluster of this node alone.
	InitialCluster *kvd.InitialCluster
	// PeerOverrides maps node ids to the addresses to dial for them,
	// overriding the cluster map, for both Raft and node-to-node HTTP
	// (the fault-injection harness puts a proxy on every link this way).
	PeerOverrides map[string]PeerAddr
	// PeerSecret, if set, is the cluster's peer secret, for a node that
	// has none yet (see secret.go). PeerSecretFile names a file holding
	// it instead, created with a random secret if absent.
	PeerSecret     []byte
	PeerSecretFile string
	// Limits are enforced on every request.
	Limits kvd.Limits
	// QuotaBytes, if positive, caps the size of the data directory: past
	// it writes are refused (507 insufficient_storage) and reads go on.
	QuotaBytes int64
	// MinFreeBytes is the free space the data directory's disk must keep:
	// below it writes are refused, so that Raft's own records (terms,
	// votes, the entries that finish transactions) still fit.
	MinFreeBytes int64
	// MaxInflightRequests and MaxInflightBytes cap the requests (and the
	// bytes of their bodies) a node serves at once; past them a request
	// is refused at once with 429 overloaded. Watches do not count.
	MaxInflightRequests int
	MaxInflightBytes    int64
	// MaxWatches caps the watches a node serves at once; past it a new
	// watch is refused with 429 overloaded. WatchBufferBytes caps the
	// keys and values that all of them hold read but not yet sent: a
	// watch past it waits for others to drain. 0 means no cap.
	MaxWatches       int
	WatchBufferBytes int64
	// MaxConnections caps the HTTP connections open at once (0: no cap):
	// past it a new connection is answered 503 and closed, so that
	// clients cannot take the descriptors the node needs for its files
	// and peers. kvd derives it from its limit of open files.
	MaxConnections int
	// MemoryHighWater, if positive, is the live Go heap past which the
	// node refuses new client requests (429 overloaded) until it is back
	// below: the backstop for what the caps above leave out, such as the
	// answers being built. kvd sets it to 3/4 of its memory limit.
	MemoryHighWater int64
	// Encryption, if set, encrypts what the node writes to disk: values
	// in its groups' state, Raft log entries, snapshots, backups and
	// restore uploads, under the ring's active key. Every node of a
	// cluster holds the same keys (see docs/security.md).
	Encryption *atrest.Keys
	// Replication is the template for every hosted group (timing,
	// snapshots, batching); identity fields are filled in per group.
	Replication replication.Config
	// RequestTimeout bounds each client request.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds the drain of in-flight requests on Close.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers.
	ReadHeaderTimeout time.Duration
	// TxnTimeout is how long a cross-group transaction may stay pending
	// before anyone may abort it.
	TxnTimeout time.Duration
	// TxnAfterPrepare, if set, runs in the coordinator after every
	// participant voted yes and before the decision (a test hook; an
	// error stops the coordinator there).
	TxnAfterPrepare func(id string) error
	// TLSCertFile and TLSKeyFile, if set, make the HTTP port serve TLS
	// with that certificate; TLSClientCAFile also requires clients to
	// present a certificate that CA signed (peer TLS is then required:
	// nodes call each other on that port). PeerTLSCertFile, PeerTLSKeyFile
	// and PeerTLSCAFile put the calls between nodes on mutual TLS: the
	// node's certificate (naming its id) and the CA of its peers'. Files
	// are read again when they change. See security.md.
	TLSCertFile, TLSKeyFile, TLSClientCAFile       string
	PeerTLSCertFile, PeerTLSKeyFile, PeerTLSCAFile string
	// Auth makes every client request carry a bearer token with grants
	// covering what it touches (see auth.go). RootTokenFile holds the
	// admin token every node holding it accepts (default
	// <DataDir>/root.token), created with a random token if absent.
	Auth          bool
	RootTokenFile string
	// BackupDir, if set, receives a backup every BackupEvery, taken by the
	// node that leads the system group (the map's leader); the newest
	// BackupKeep files are kept.
	BackupDir   string
	BackupEvery time.Duration
	BackupKeep  int
	// TTLInterval is how often a leader looks for expired keys: the
	// precision of TTLs.
	TTLInterval time.Duration
	// IdempotencyRetention is how long idempotency keys are remembered.
	IdempotencyRetention time.Duration
	// Join, if set, lists members' HTTP URLs: a node without a data
	// directory yet registers itself with the first that answers (proving
	// it holds the cluster's peer secret, PeerSecret or PeerSecretFile),
	// takes the cluster's map, and waits for replicas. Ignored once the
	// node has joined.
	Join []string
	// ReplaceDeadAfter, if positive, makes the system group's leader
	// rebuild the replicas of a node unreachable that long on other
	// nodes, one group at a time, and remove it.
	ReplaceDeadAfter time.Duration
	// BalanceReplicas moves replicas between nodes while one node holds
	// two more than another (a node that joined gets its share).
	BalanceReplicas bool
	// LeaderBalanceInterval is how often the node hands leadership of
	// groups it leads back to their preferred leaders; 0 disables it.
	LeaderBalanceInterval time.Duration
	// Profiling serves Go's profiles (net/http/pprof) under /debug/pprof/
	// on the HTTP address. Off by default: profiles expose internals and
	// cost CPU while taken.
	Profiling bool
	// Version is reported by /v1/status.
	Version string
	// Logger receives the node's logs.
	Logger *slog.Logger
}

// DefaultConfig returns the single-node default of the contract: node n1,
// data in ./kvd-data, HTTP on 127.0.0.1:7070, Raft on 127.0.0.1:7071.
func DefaultConfig() Config {
	return Config{
		NodeID:                "n1",
		DataDir:               "kvd-data",
		HTTPAddr:              "127.0.0.1:7070",
		RaftAddr:              "127.0.0.1:7071",
		Limits:                kvd.DefaultLimits(),
		MinFreeBytes:          64 << 20,
		MaxInflightRequests:   4096,
		MaxInflightBytes:      64 << 20,
		MaxWatches:            1024,
		WatchBufferBytes:      32 << 20,
		Replication:           replication.DefaultConfig(),
		RequestTimeout:        10 * time.Second,
		ShutdownTimeout:       10 * time.Second,
		ReadHeaderTimeout:     10 * time.Second,
		LeaderBalanceInterval: 3 * time.Second,
		BalanceReplicas:       true,
		TxnTimeout:            10 * time.Second,
		TTLInterval:           100 * time.Millisecond,
		IdempotencyRetention:  10 * time.Minute,
		Version:               "dev",
		Logger:                slog.Default(),
	}
}

func (c *Config) validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("node id is required")
	case c.DataDir == "":
		return errors.New("data dir is required")
	case !c.Embedded && c.HTTPListener == nil && c.HTTPAddr == "":
		return errors.New("http address is required")
	case c.Frontend == nil && (!c.Embedded || c.HTTPAddr != "" || c.HTTPListener != nil):
		return errors.New("a node that serves HTTP needs a frontend: start it with node.New, or set Config.Frontend (embed.Options.Frontend) to node.HTTP")
	case !c.Embedded && c.RaftListener == nil && c.RaftAddr == "":
		return errors.New("raft address is required")
	case c.Embedded && c.InitialCluster != nil && len(c.InitialCluster.Nodes) > 1:
		return errors.New("an embedded store runs a single node")
	case c.RequestTimeout <= 0 || c.ShutdownTimeout <= 0 || c.TTLInterval <= 0 || c.IdempotencyRetention <= 0:
		return errors.New("timeouts and intervals must be positive")
	case c.TxnTimeout > store.MaxTxnLifetime/2:
		// Half: room for the clocks of coordinator and leader to differ.
		return fmt.Errorf("the transaction timeout %v is over %v, half the most a lock may live", c.TxnTimeout, store.MaxTxnLifetime/2)
	case c.QuotaBytes < 0 || c.MinFreeBytes < 0 || c.MaxInflightRequests < 0 || c.MaxInflightBytes < 0 ||
		c.MaxWatches < 0 || c.WatchBufferBytes < 0 || c.MemoryHighWater < 0 || c.MaxConnections < 0:
		return errors.New("quotas and caps must not be negative")
	}
	if err := c.checkTLS(); err != nil {
		return err
	}
	switch {
	case c.BackupDir != "" && c.BackupEvery <= 0:
		return errors.New("a backup directory needs a positive backup interval (--backup-every)")
	case c.BackupDir == "" && c.BackupEvery != 0:
		return errors.New("a backup interval needs a backup directory (--backup-dir)")
	case c.BackupDir != "" && c.BackupKeep < 1:
		return errors.New("backups to keep (--backup-keep) must be at least 1")
	}
	if c.TxnTimeout > 0 && c.IdempotencyRetention < 2*c.TxnTimeout {
		// A claim must outlive the transaction it names, or a repeat
		// could run a transaction whose first attempt may still commit.
		return fmt.Errorf("idempotency retention %v must be at least twice the transaction timeout %v", c.IdempotencyRetention, c.TxnTimeout)
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	if c.InitialCluster != nil {
		if err := c.InitialCluster.Validate(); err != nil {
			return fmt.Errorf("initial cluster: %w", err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
