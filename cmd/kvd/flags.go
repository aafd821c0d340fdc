package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

// options are what the command line says: the node's Config as the flags
// set it, and the flags that buildConfig turns into more of it.
type options struct {
	cfg server.Config
	// initial and peers name the --initial-cluster and --peer-addrs
	// files.
	initial, peers      string
	stateSync, logLevel string
	// keyFile names the --encryption-key-file.
	keyFile     string
	memLimit    int64
	logJSON     bool
	showVersion bool
	// set holds the names of the flags given.
	set map[string]bool
}

// parseFlags parses the command line. An error is a usage error, already
// reported on stderr; flag.ErrHelp means -h was asked for.
func parseFlags(args []string) (*options, error) {
	o := &options{cfg: server.DefaultConfig()}
	cfg := &o.cfg
	fs := flag.NewFlagSet("kvd", flag.ContinueOnError)
	fs.StringVar(&cfg.NodeID, "id", cfg.NodeID, "this node's id")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for this node's data")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address (default: this node's address in --initial-cluster, else 127.0.0.1:7070)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "Raft listen address (default: this node's address in --initial-cluster, else 127.0.0.1:7071)")
	fs.StringVar(&cfg.HTTPAdvertise, "http-advertise", "", "HTTP address clients and peers dial (default: the listen address)")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial (default: the listen address)")
	fs.StringVar(&o.initial, "initial-cluster", "", "bootstrap `file`: {\"nodes\":[{\"id\",\"http\",\"raft\"}...],\"groups\":G,\"replicas\":R}")
	fs.Func("join", "join a running cluster through a member: `URL`s of members' HTTP APIs, comma-separated (http://host:port); needs --peer-secret-file (a copy of a member's peer.secret); ignored once the node has joined", func(v string) error {
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				cfg.Join = append(cfg.Join, u)
			}
		}
		if len(cfg.Join) == 0 {
			return errors.New("no member URL")
		}
		return nil
	})
	fs.DurationVar(&cfg.ReplaceDeadAfter, "replace-dead-after", 0, "rebuild the replicas of a node unreachable this long on other nodes, one group at a time, and remove it (0: never; an operator removes dead nodes)")
	fs.BoolVar(&cfg.BalanceReplicas, "balance-replicas", cfg.BalanceReplicas, "move replicas between nodes while one holds two more than another (a node that joins gets its share)")
	fs.StringVar(&cfg.PeerSecretFile, "peer-secret-file", "", "`file` holding the cluster's peer secret, for a node that has none yet (first start, or joining); created with a random secret if absent (default: the --initial-cluster file's path + \".secret\")")
	fs.Var(byteSize{&cfg.QuotaBytes}, "quota-bytes", "refuse writes (507) once the data directory takes this much disk, e.g. 8GiB (0: no quota)")
	fs.Var(byteSize{&cfg.MinFreeBytes}, "min-free-bytes", "refuse writes (507) while the data directory's disk has less free space than this")
	fs.IntVar(&cfg.MaxInflightRequests, "max-inflight-requests", cfg.MaxInflightRequests, "requests served at once; past it a request gets 429 at once (0: no cap)")
	fs.Var(byteSize{&cfg.MaxInflightBytes}, "max-inflight-bytes", "body bytes of the requests served at once; past it a request gets 429 at once (0: no cap)")
	cfg.MaxConnections = defaultMaxConnections()
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "HTTP connections open at once; past it a new one gets 503 and is closed (default: 3/4 of the limit of open files; 0: no cap)")
	fs.IntVar(&cfg.MaxWatches, "max-watches", cfg.MaxWatches, "watches served at once; past it a new watch gets 429 (0: no cap)")
	fs.Var(byteSize{&cfg.WatchBufferBytes}, "watch-buffer-bytes", "keys and values all watches may hold read but not yet sent; past it watches wait for slow readers (0: no cap)")
	o.memLimit = 512 << 20
	fs.Var(byteSize{&o.memLimit}, "memory-limit", "soft limit of the Go runtime's memory: the garbage collector works harder near it (0: none; the GOMEMLIMIT environment variable, if set, wins)")
	fs.DurationVar(&cfg.Replication.IntegrityInterval, "integrity-check-interval", cfg.Replication.IntegrityInterval, "how often each replica scrubs its state and the leaders compare the replicas' state hashes (0: never)")
	fs.StringVar(&o.peers, "peer-addrs", "", "`file` mapping node ids to the addresses to dial for them: {\"n2\":{\"http\":\"..\",\"raft\":\"..\"}}")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "time limit of one client request")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "time limit for draining requests on SIGTERM")
	fs.Uint64Var(&cfg.Replication.SnapshotThreshold, "snapshot-threshold", cfg.Replication.SnapshotThreshold, "log entries between snapshots")
	fs.DurationVar(&cfg.Replication.SnapshotInterval, "snapshot-interval", cfg.Replication.SnapshotInterval, "how often to check whether --snapshot-threshold was reached")
	fs.StringVar(&cfg.Replication.LogStore, "raft-log", cfg.Replication.LogStore, "Raft log store of new replicas: wal (hashicorp/raft-wal segment files) or boltdb (raft.db); a replica keeps the store it was made with")
	fs.Uint64Var(&cfg.Replication.TrailingLogs, "trailing-logs", cfg.Replication.TrailingLogs, "log entries kept after a snapshot")
	fs.DurationVar(&cfg.Replication.ElectionTimeout, "election-timeout", cfg.Replication.ElectionTimeout, "Raft election timeout")
	fs.DurationVar(&cfg.Replication.HeartbeatTimeout, "heartbeat-timeout", cfg.Replication.HeartbeatTimeout, "Raft heartbeat timeout")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "`file`: the certificate the HTTP port serves TLS with (PEM, with its chain; read again when it changes)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "`file`: the key of --tls-cert")
	fs.StringVar(&cfg.TLSClientCAFile, "tls-client-ca", "", "`file`: require client certificates signed by this CA (needs peer TLS)")
	fs.StringVar(&cfg.PeerTLSCertFile, "peer-tls-cert", "", "`file`: this node's certificate for mutual TLS with its peers (naming its id; kvd certs create-node)")
	fs.StringVar(&cfg.PeerTLSKeyFile, "peer-tls-key", "", "`file`: the key of --peer-tls-cert")
	fs.StringVar(&cfg.PeerTLSCAFile, "peer-tls-ca", "", "`file`: the CA of the peers' node certificates")
	fs.BoolVar(&cfg.Auth, "auth", false, "require a bearer token on every client request (see docs/security.md)")
	fs.StringVar(&cfg.RootTokenFile, "root-token-file", "", "`file` holding the admin token every node with it accepts; created with a random token (mode 0600) if absent (default: DATA-DIR/root.token)")
	fs.StringVar(&o.keyFile, "encryption-key-file", "", "`file` of keys that encrypt values, Raft log entries, snapshots and backups on disk (AES-256-GCM): 32 random bytes in base64 a line, the first active, mode 0600, the same on every node; read again when it changes (kvd rotate-key makes one)")
	fs.StringVar(&cfg.BackupDir, "backup-dir", "", "`directory` for scheduled backups, written by the node that leads the cluster map (none by default)")
	fs.DurationVar(&cfg.BackupEvery, "backup-every", 0, "interval of scheduled backups (with --backup-dir)")
	fs.IntVar(&cfg.BackupKeep, "backup-keep", 7, "how many scheduled backups to keep in --backup-dir (the oldest are removed)")
	fs.DurationVar(&cfg.TTLInterval, "ttl-interval", cfg.TTLInterval, "how often a leader expires keys whose ttl ran out (the precision of ttls)")
	fs.DurationVar(&cfg.IdempotencyRetention, "idempotency-retention", cfg.IdempotencyRetention, "how long Idempotency-Key outcomes are remembered")
	fs.IntVar(&cfg.Replication.Store.HistoryMax, "watch-history", store.DefaultOptions().HistoryMax, "changes each group keeps for watches to resume from")
	fs.IntVar(&cfg.Replication.Store.HistoryMaxBytes, "watch-history-bytes", store.DefaultOptions().HistoryMaxBytes, "bytes of changes each group keeps for watches to resume from")
	fs.StringVar(&o.stateSync, "state-sync", "lazy", "fsync of the state machine: lazy (the Raft log is the durable record; a crash rebuilds the state from the snapshot and the log) or always (every applied batch)")
	fs.BoolVar(&cfg.Profiling, "pprof", false, "serve Go profiles under /debug/pprof/ on the HTTP address")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&o.logJSON, "log-json", false, "log as JSON lines")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kvd: unexpected argument %q\n", fs.Arg(0))
		return nil, errors.New("unexpected argument")
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	return o, nil
}
