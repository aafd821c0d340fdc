// Package embed runs kvd in-process: a single-node store on a data
// directory, with no network listener unless asked for, behind the same
// kvd.KV interface, semantics and errors as the Go client of a cluster.
// Functions and tests can run against it and move to a cluster without
// changing their code.
//
//	kv, err := embed.Open("data", embed.Options{})
//	defer kv.Close()
//	kv.Put(ctx, "k", []byte("v"), kvd.WithTTL(time.Minute))
package embed

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/server"
)

// Options configure an embedded store.
type Options struct {
	// HTTPAddr, if set, also serves the HTTP API there (the store then
	// answers kvcli and curl too), through Frontend, which must be set
	// then: node.HTTP is kvd's. The embedded store alone does not link
	// the HTTP API in.
	HTTPAddr string
	Frontend server.FrontendFunc
	// Logger receives the store's logs (default: discarded).
	Logger *slog.Logger
	// TTLInterval is the precision of TTLs (default 100ms).
	TTLInterval time.Duration
}

// Store is an embedded store. It implements kvd.KV.
type Store struct {
	kvd.KV
	s *server.Server
}

var _ kvd.KV = (*Store)(nil)

// Open opens (creating if needed) the store in dir and starts it; it
// returns once the store accepts requests. Restarting on the same
// directory keeps the data.
func Open(dir string, o Options) (*Store, error) {
	cfg := server.DefaultConfig()
	cfg.Embedded = true
	cfg.DataDir = dir
	cfg.HTTPAddr, cfg.Frontend = o.HTTPAddr, o.Frontend
	cfg.RaftAddr = ""
	cfg.Logger = o.Logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.TTLInterval > 0 {
		cfg.TTLInterval = o.TTLInterval
	}
	// A single voter elects itself at once: no need to wait a heartbeat.
	cfg.Replication.HeartbeatTimeout = 100 * time.Millisecond
	cfg.Replication.ElectionTimeout = 100 * time.Millisecond
	cfg.Replication.LeaderLeaseTimeout = 100 * time.Millisecond
	cfg.LeaderBalanceInterval = 0
	s, err := server.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open embedded store: %w", err)
	}
	if err := s.WaitReady(10 * time.Second); err != nil {
		s.Close()
		return nil, fmt.Errorf("open embedded store: %w", err)
	}
	return &Store{KV: s.KV(), s: s}, nil
}

// HTTPAddr returns the address of the HTTP API, "" if not served.
func (st *Store) HTTPAddr() string { return st.s.HTTPAddr() }

// Close stops the store and closes its files.
func (st *Store) Close() error { return st.s.Close() }
