package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kvd-project/kvd/internal/atrest"
	"log/slog"
	"math"
	"os"
	"runtime/debug"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/server"
)

// buildConfig checks the options and completes the node's Config from
// them: the state machine's fsync, the memory limit, the logger, the
// bootstrap file and the peers' addresses. It also sets the Go runtime's
// memory limit. An error is a usage error.
func buildConfig(o *options) (server.Config, error) {
	cfg := o.cfg
	if err := checkFlags(o, &cfg); err != nil {
		return cfg, err
	}
	if o.memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(o.memLimit)
	}
	if limit := debug.SetMemoryLimit(-1); limit < math.MaxInt64 {
		// Past 3/4 of the limit in live data the node sheds client
		// requests: the collector could not keep it under the limit for
		// long, and the answers being built need room.
		cfg.MemoryHighWater = limit / 4 * 3
	}
	log, err := newLogger(o.logLevel, o.logJSON)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	cfg.Version = version
	if o.keyFile != "" {
		if cfg.Encryption, err = atrest.OpenKeys(o.keyFile); err != nil {
			return cfg, err
		}
	}
	if o.initial != "" && len(cfg.Join) > 0 {
		return cfg, fmt.Errorf("--initial-cluster and --join exclude each other: a node either bootstraps a cluster or joins a running one")
	}
	if len(cfg.Join) > 0 && cfg.NodeID == "" {
		return cfg, fmt.Errorf("--join needs --id: the new node's id")
	}
	if o.initial != "" {
		if err := applyInitialCluster(&cfg, o.initial, o.set); err != nil {
			return cfg, err
		}
	}
	if o.peers != "" {
		b, err := os.ReadFile(o.peers)
		if err == nil {
			err = json.Unmarshal(b, &cfg.PeerOverrides)
		}
		if err != nil {
			return cfg, fmt.Errorf("--peer-addrs: %w", err)
		}
	}
	return cfg, nil
}

// checkFlags checks the flags' values, and sets cfg's fsync of the state
// machine from --state-sync.
func checkFlags(o *options, cfg *server.Config) error {
	switch o.stateSync {
	case "lazy":
		cfg.Replication.Store.NoSync = true
	case "always":
		cfg.Replication.Store.NoSync = false
	default:
		return fmt.Errorf("bad --state-sync %q (lazy or always)", o.stateSync)
	}
	if cfg.Replication.Store.HistoryMax < 1 || cfg.Replication.Store.HistoryMaxBytes < 1 {
		return errors.New("--watch-history and --watch-history-bytes must be positive")
	}
	if cfg.TTLInterval <= 0 || cfg.IdempotencyRetention <= 0 {
		return errors.New("--ttl-interval and --idempotency-retention must be positive")
	}
	if cfg.QuotaBytes < 0 || cfg.MinFreeBytes < 0 || cfg.MaxInflightRequests < 0 || cfg.MaxInflightBytes < 0 || cfg.MaxConnections < 0 ||
		cfg.MaxWatches < 0 || cfg.WatchBufferBytes < 0 || cfg.Replication.IntegrityInterval < 0 {
		return errors.New("--quota-bytes, --min-free-bytes, --max-inflight-requests, --max-inflight-bytes, --max-connections, --max-watches, --watch-buffer-bytes and --integrity-check-interval must not be negative")
	}
	return nil
}

// newLogger returns the logger --log-level and --log-json ask for, on
// stderr.
func newLogger(logLevel string, logJSON bool) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q", logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if logJSON {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	return slog.New(h), nil
}

// applyInitialCluster bootstraps cfg from the --initial-cluster file:
// the members, this node's listen addresses unless set (the names of the
// flags given), and the peer secret's file unless --peer-secret-file
// names one.
func applyInitialCluster(cfg *server.Config, file string, set map[string]bool) error {
	ic, err := kvd.LoadInitialCluster(file)
	if err != nil {
		return err
	}
	self, ok := ic.Map().Node(cfg.NodeID)
	if !ok {
		return fmt.Errorf("node %q is not in %s", cfg.NodeID, file)
	}
	if !set["http-addr"] {
		cfg.HTTPAddr = self.HTTP
	}
	if !set["raft-addr"] {
		cfg.RaftAddr = self.Raft
	}
	cfg.InitialCluster = &ic
	if cfg.PeerSecretFile == "" {
		cfg.PeerSecretFile = file + ".secret"
	}
	return nil
}
