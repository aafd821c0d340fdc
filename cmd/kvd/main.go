// Command kvd runs one node of the kvd key-value store.
//
// With no flags it runs the single-node default: data in ./kvd-data, HTTP
// on 127.0.0.1:7070, Raft on 127.0.0.1:7071. With --initial-cluster FILE
// every member started with the same file forms the cluster; a restarted
// member resumes from its data directory and ignores the file. SIGTERM
// (or SIGINT) hands off leadership, drains in-flight requests and exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/node"
	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := server.DefaultConfig()
	fs := flag.NewFlagSet("kvd", flag.ContinueOnError)
	fs.StringVar(&cfg.NodeID, "id", cfg.NodeID, "this node's id")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for this node's data")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address (default: this node's address in --initial-cluster, else 127.0.0.1:7070)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "Raft listen address (default: this node's address in --initial-cluster, else 127.0.0.1:7071)")
	fs.StringVar(&cfg.HTTPAdvertise, "http-advertise", "", "HTTP address clients and peers dial (default: the listen address)")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial (default: the listen address)")
	initial := fs.String("initial-cluster", "", "bootstrap `file`: {\"nodes\":[{\"id\",\"http\",\"raft\"}...],\"groups\":G,\"replicas\":R}")
	fs.StringVar(&cfg.PeerSecretFile, "peer-secret-file", "", "`file` holding the cluster's peer secret, for a node that has none yet (first start, or joining); created with a random secret if absent (default: the --initial-cluster file's path + \".secret\")")
	fs.Var(byteSize{&cfg.QuotaBytes}, "quota-bytes", "refuse writes (507) once the data directory takes this much disk, e.g. 8GiB (0: no quota)")
	fs.Var(byteSize{&cfg.MinFreeBytes}, "min-free-bytes", "refuse writes (507) while the data directory's disk has less free space than this")
	fs.IntVar(&cfg.MaxInflightRequests, "max-inflight-requests", cfg.MaxInflightRequests, "requests served at once; past it a request gets 429 at once (0: no cap)")
	fs.Var(byteSize{&cfg.MaxInflightBytes}, "max-inflight-bytes", "body bytes of the requests served at once; past it a request gets 429 at once (0: no cap)")
	cfg.MaxConnections = defaultMaxConnections()
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "HTTP connections open at once; past it a new one gets 503 and is closed (default: 3/4 of the limit of open files; 0: no cap)")
	fs.IntVar(&cfg.MaxWatches, "max-watches", cfg.MaxWatches, "watches served at once; past it a new watch gets 429 (0: no cap)")
	fs.Var(byteSize{&cfg.WatchBufferBytes}, "watch-buffer-bytes", "keys and values all watches may hold read but not yet sent; past it watches wait for slow readers (0: no cap)")
	memLimit := int64(512 << 20)
	fs.Var(byteSize{&memLimit}, "memory-limit", "soft limit of the Go runtime's memory: the garbage collector works harder near it (0: none; the GOMEMLIMIT environment variable, if set, wins)")
	fs.DurationVar(&cfg.Replication.IntegrityInterval, "integrity-check-interval", cfg.Replication.IntegrityInterval, "how often each replica scrubs its state and the leaders compare the replicas' state hashes (0: never)")
	peers := fs.String("peer-addrs", "", "`file` mapping node ids to the addresses to dial for them: {\"n2\":{\"http\":\"..\",\"raft\":\"..\"}}")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "time limit of one client request")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "time limit for draining requests on SIGTERM")
	fs.Uint64Var(&cfg.Replication.SnapshotThreshold, "snapshot-threshold", cfg.Replication.SnapshotThreshold, "log entries between snapshots")
	fs.DurationVar(&cfg.Replication.SnapshotInterval, "snapshot-interval", cfg.Replication.SnapshotInterval, "how often to check whether --snapshot-threshold was reached")
	fs.Uint64Var(&cfg.Replication.TrailingLogs, "trailing-logs", cfg.Replication.TrailingLogs, "log entries kept after a snapshot")
	fs.DurationVar(&cfg.Replication.ElectionTimeout, "election-timeout", cfg.Replication.ElectionTimeout, "Raft election timeout")
	fs.DurationVar(&cfg.Replication.HeartbeatTimeout, "heartbeat-timeout", cfg.Replication.HeartbeatTimeout, "Raft heartbeat timeout")
	fs.DurationVar(&cfg.TTLInterval, "ttl-interval", cfg.TTLInterval, "how often a leader expires keys whose ttl ran out (the precision of ttls)")
	fs.DurationVar(&cfg.IdempotencyRetention, "idempotency-retention", cfg.IdempotencyRetention, "how long Idempotency-Key outcomes are remembered")
	fs.IntVar(&cfg.Replication.Store.HistoryMax, "watch-history", store.DefaultOptions().HistoryMax, "changes each group keeps for watches to resume from")
	fs.IntVar(&cfg.Replication.Store.HistoryMaxBytes, "watch-history-bytes", store.DefaultOptions().HistoryMaxBytes, "bytes of changes each group keeps for watches to resume from")
	stateSync := fs.String("state-sync", "lazy", "fsync of the state machine: lazy (the Raft log is the durable record; a crash rebuilds the state from the snapshot and the log) or always (every applied batch)")
	fs.BoolVar(&cfg.Profiling, "pprof", false, "serve Go profiles under /debug/pprof/ on the HTTP address")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logJSON := fs.Bool("log-json", false, "log as JSON lines")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kvd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Println("kvd", version)
		return 0
	}
	switch *stateSync {
	case "lazy":
		cfg.Replication.Store.NoSync = true
	case "always":
		cfg.Replication.Store.NoSync = false
	default:
		fmt.Fprintf(os.Stderr, "kvd: bad --state-sync %q (lazy or always)\n", *stateSync)
		return 2
	}
	if cfg.Replication.Store.HistoryMax < 1 || cfg.Replication.Store.HistoryMaxBytes < 1 {
		fmt.Fprintln(os.Stderr, "kvd: --watch-history and --watch-history-bytes must be positive")
		return 2
	}
	if cfg.TTLInterval <= 0 || cfg.IdempotencyRetention <= 0 {
		fmt.Fprintln(os.Stderr, "kvd: --ttl-interval and --idempotency-retention must be positive")
		return 2
	}
	if cfg.QuotaBytes < 0 || cfg.MinFreeBytes < 0 || cfg.MaxInflightRequests < 0 || cfg.MaxInflightBytes < 0 || cfg.MaxConnections < 0 ||
		cfg.MaxWatches < 0 || cfg.WatchBufferBytes < 0 || cfg.Replication.IntegrityInterval < 0 {
		fmt.Fprintln(os.Stderr, "kvd: --quota-bytes, --min-free-bytes, --max-inflight-requests, --max-inflight-bytes, --max-connections, --max-watches, --watch-buffer-bytes and --integrity-check-interval must not be negative")
		return 2
	}
	if memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memLimit)
	}
	if limit := debug.SetMemoryLimit(-1); limit < math.MaxInt64 {
		// Past 3/4 of the limit in live data the node sheds client
		// requests: the collector could not keep it under the limit for
		// long, and the answers being built need room.
		cfg.MemoryHighWater = limit / 4 * 3
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "kvd: bad --log-level %q\n", *logLevel)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	log := slog.New(h)
	cfg.Logger = log
	cfg.Version = version

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *initial != "" {
		ic, err := kvd.LoadInitialCluster(*initial)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kvd: %v\n", err)
			return 2
		}
		self, ok := ic.Map().Node(cfg.NodeID)
		if !ok {
			fmt.Fprintf(os.Stderr, "kvd: node %q is not in %s\n", cfg.NodeID, *initial)
			return 2
		}
		if !set["http-addr"] {
			cfg.HTTPAddr = self.HTTP
		}
		if !set["raft-addr"] {
			cfg.RaftAddr = self.Raft
		}
		cfg.InitialCluster = &ic
		if cfg.PeerSecretFile == "" {
			cfg.PeerSecretFile = *initial + ".secret"
		}
	}
	if *peers != "" {
		b, err := os.ReadFile(*peers)
		if err == nil {
			err = json.Unmarshal(b, &cfg.PeerOverrides)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "kvd: --peer-addrs: %v\n", err)
			return 2
		}
	}

	srv, err := node.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	start := time.Now()
	err = srv.Run(ctx)
	if err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	log.Info("bye", "uptime", time.Since(start).Round(time.Second).String())
	return 0
}
