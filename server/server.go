// Package server is the core of one kvd node: Config, New, Run, Close.
// It opens the node's listeners and its replicas of the groups the
// cluster map places on it, routes keys to groups, coordinates
// transactions, calls its peers, and does the leader's duties. Its
// methods take and return kvd types: the HTTP API (package httpapi) and
// the in-process store (Server.KV) are adapters over it, and package node
// composes it with the HTTP API as its Frontend. It shuts down in one
// order: stop the frontend (stop accepting clients and drain them), hand
// off leadership, close the groups (raft, transport, state), close the
// Raft listener.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/txn"
)

// Server is one kvd node.
type Server struct {
	cfg      Config
	keyState keyState
	log      *slog.Logger
	id       string
	seed     *kvd.Map
	started  time.Time
	// dirLock holds the data directory for this process.
	dirLock *os.File

	// groups holds the hosted replicas: an immutable map, replaced (not
	// changed) while New opens them, since raft calls back into the
	// server (ServerAddr) as soon as the first one starts.
	groups   atomic.Pointer[map[kvd.GroupID]*replication.Group]
	mux      *replication.Mux
	httpLn   net.Listener
	frontend Frontend
	registry *prometheus.Registry
	peerHTTP *http.Client
	// tls is the node's TLS settings (nil: plain HTTP).
	tls *nodeTLS
	// auth is the node's root token and token table (Config.Auth).
	auth authState

	book    atomic.Pointer[addressBook]
	leaders leaderCache
	coord   *txn.Coordinator
	// keys are the credentials derived from the cluster's peer secret.
	keys peerKeys
	// missing holds the groups the map places here that this node
	// refuses to start (their data was lost), with the reason.
	missing   map[kvd.GroupID]string
	disk      *diskGuard
	peerDisks peerDisks
	metrics   *nodeMetrics
	// watchMem counts the bytes that watches hold read but not yet sent.
	watchMem *byteBudget
	memory   *memPressure

	serveErr chan error

	// nodeFile is node.json as read or written at start.
	nodeFile  *nodeFile
	clusterID string
	// learned is the newest map this node has been told of (by the
	// system group's leader, a peer, or node.json); see Map.
	learned atomic.Pointer[kvd.Map]
	learnMu sync.Mutex // serializes learnMap's compare and write
	// mapMu serializes this node's changes to the map.
	mapMu sync.Mutex
	// replicasMu serializes changes to the set of hosted replicas.
	replicasMu sync.Mutex
	// membershipKick wakes the membership loop early.
	membershipKick chan struct{}
	// removalWait remembers since when a replica to remove did not answer.
	removalWait sync.Map
	// moves are the slot moves this node drives.
	moves moveDrivers
	// restores are the restores this node drives (see restore.go).
	restores restores
	// seen is what this node saw of each node's answers to its probes.
	seenMu sync.Mutex
	seen   map[string]*sighting
	// lastProbe is the last round of status requests to every node.
	lastProbe atomic.Pointer[probe]
	// events is the node's event log (GET /v1/events).
	events eventLog
	// traffic holds, by group, the client requests this node served:
	// *api.TrafficCounter.
	traffic sync.Map

	// bgCancel stops the node's background loops; bg waits for them.
	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New opens the node: its data directory, listeners and group replicas.
// Call Run to serve and Close to stop.
func New(cfg Config) (_ *Server, err error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("server config: %w", err)
	}
	s := &Server{cfg: cfg, id: cfg.NodeID, log: cfg.Logger.With("node", cfg.NodeID), started: time.Now(), events: eventLog{node: cfg.NodeID},
		serveErr: make(chan error, 1), leaders: leaderCache{m: map[kvd.GroupID]leaderEntry{}},
		membershipKick: make(chan struct{}, 1), seen: map[string]*sighting{}, moves: moveDrivers{running: map[string]*moveRun{}},
		restores: restores{running: map[string]bool{}, seen: map[string]time.Time{}}}
	s.groups.Store(&map[kvd.GroupID]*replication.Group{})
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if s.dirLock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	removeLeftovers(cfg.DataDir, restoreSpool, 0, s.log)
	if s.tls, err = loadTLS(cfg); err != nil {
		return nil, err
	}
	if cfg.Auth {
		path := cfg.RootTokenFile
		if path == "" {
			path = filepath.Join(cfg.DataDir, "root.token")
		}
		if s.auth.rootHash, err = loadRootToken(path); err != nil {
			return nil, err
		}
	}
	raftLn, err := s.listen()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && raftLn != nil && s.mux == nil {
			raftLn.Close()
		}
	}()
	httpAdv, raftAdv := s.advertised(raftLn)
	_, first, err := s.loadNodeFile(httpAdv, raftAdv)
	if err != nil {
		return nil, err
	}
	secret, err := s.loadPeerSecret(len(s.seed.Nodes) == 1)
	if err != nil {
		return nil, err
	}
	s.keys = keysOf(secret)
	if raftLn != nil {
		if raftAdv, err = s.openMux(raftLn); err != nil {
			return nil, err
		}
	}
	s.peerHTTP = s.newPeerClient()
	s.metrics = newNodeMetrics()
	s.watchMem = newByteBudget(cfg.WatchBufferBytes)
	s.memory = &memPressure{high: uint64(cfg.MemoryHighWater)}
	// Before the groups: their replicas ask it for room (see Room).
	s.disk = newDiskGuard(cfg.DataDir, cfg.QuotaBytes, cfg.MinFreeBytes, s.log)
	if err := s.openGroups(first); err != nil {
		return nil, err
	}
	s.warnSmallReserve()
	tc := txn.DefaultConfig()
	tc.Timeout, tc.Limits, tc.Logger = cfg.TxnTimeout, cfg.Limits, s.log
	tc.AfterPrepare = cfg.TxnAfterPrepare
	tc.VersionsAtPrepare = func(groups []kvd.GroupID) bool {
		return s.checkFeature(groupHosts(s.Map(), groups...), api.FeatureTxnVersions) == nil
	}
	s.coord = txn.New(s, tc)
	s.registerMetrics()
	if cfg.Frontend != nil && s.httpLn != nil {
		if s.frontend, err = cfg.Frontend(s, FrontendEnv{Config: cfg, Registry: s.registry, Logger: s.log,
			PeerCredential: s.keys.http, UnderPressure: s.memory.underPressure,
			PeerClient: s.newPeerClient(), PeerScheme: s.tls.scheme(), PeerCA: s.tls.peerChain(), TLS: s.tls.serverConfig()}); err != nil {
			return nil, fmt.Errorf("http frontend: %w", err)
		}
	}
	s.startBackground()
	if s.frontend != nil {
		go func() { s.serveErr <- s.frontend.Serve(s.httpLn) }()
	}
	s.log.Info("node started", "http", httpAdv, "raft", raftAdv, "groups", len(s.hosted()), "first_start", first, "embedded", cfg.Embedded)
	return s, nil
}

// listen opens the HTTP listener (unless given one) and returns the Raft
// listener: an embedded node has no Raft listener, and serves HTTP only
// when asked to.
func (s *Server) listen() (raftLn net.Listener, err error) {
	cfg := s.cfg
	if s.httpLn = cfg.HTTPListener; s.httpLn == nil && (!cfg.Embedded || cfg.HTTPAddr != "") {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("listen http: %w", err)
		}
	}
	if cfg.Embedded {
		return nil, nil
	}
	if raftLn = cfg.RaftListener; raftLn == nil {
		if raftLn, err = net.Listen("tcp", cfg.RaftAddr); err != nil {
			return nil, fmt.Errorf("listen raft: %w", err)
		}
	}
	return raftLn, nil
}

// advertised returns the addresses this node names for itself on a first
// start: the advertise flags, else the listeners' addresses.
func (s *Server) advertised(raftLn net.Listener) (httpAdv, raftAdv string) {
	httpAdv, raftAdv = s.cfg.HTTPAdvertise, s.cfg.RaftAdvertise
	if httpAdv == "" && s.httpLn != nil {
		httpAdv = s.httpLn.Addr().String()
	}
	if raftAdv == "" {
		raftAdv = "inmem:" + s.id
		if raftLn != nil {
			raftAdv = raftLn.Addr().String()
		}
	}
	return httpAdv, raftAdv
}

// loadNodeFile reads node.json, or on the first start (first true)
// computes the map from the initial cluster (or a single-node map of this
// node) and writes it. It sets the seed map.
func (s *Server) loadNodeFile(httpAdv, raftAdv string) (nf *nodeFile, first bool, err error) {
	cfg := s.cfg
	if nf, err = readNodeFile(cfg.DataDir); err != nil {
		return nil, false, err
	}
	first = nf == nil
	if first && len(cfg.Join) > 0 {
		if nf, err = s.join(httpAdv, raftAdv); err != nil {
			return nil, false, err
		}
	} else if first {
		ic := kvd.InitialCluster{Nodes: []kvd.Node{{ID: s.id, HTTP: httpAdv, Raft: raftAdv}}, Groups: 1, Replicas: 1}
		if cfg.InitialCluster != nil {
			ic = *cfg.InitialCluster
		}
		nf = &nodeFile{ID: s.id, Map: ic.Map()}
		nf.Cluster = kvd.ClusterID(nf.Map, ic.Token)
		if _, ok := nf.Map.Node(s.id); !ok {
			return nil, false, fmt.Errorf("node %q is not in the initial cluster", s.id)
		}
		if err := writeNodeFile(cfg.DataDir, nf); err != nil {
			return nil, false, err
		}
	} else if nf.ID != s.id {
		return nil, false, fmt.Errorf("data dir %s belongs to node %q, not %q", cfg.DataDir, nf.ID, s.id)
	}
	s.seed = nf.Map
	s.nodeFile, s.clusterID = nf, nf.Cluster
	if s.clusterID == "" {
		s.clusterID = kvd.ClusterID(nf.Map, "")
	}
	if nf.Latest != nil {
		s.learned.Store(nf.Latest)
	}
	if cfg.Embedded && (len(s.seed.Nodes) != 1 || len(s.seed.Groups) != 1) {
		return nil, false, fmt.Errorf("data dir %s holds a node of a cluster; an embedded store runs a single node", cfg.DataDir)
	}
	return nf, first, nil
}

// openMux starts the Raft listener's multiplexer and returns the Raft
// address this node advertises: peers dial what the map says, so that is
// what it advertises unless told otherwise.
func (s *Server) openMux(raftLn net.Listener) (string, error) {
	self, _ := s.Map().Node(s.id)
	raftAdv := firstNonEmpty(s.cfg.RaftAdvertise, self.Raft)
	var err error
	s.mux, err = replication.NewMux(raftLn, raftAdv, s.clusterID, s.keys.raft, s.log, s.raftTLS()...)
	return raftAdv, err
}

// registerMetrics builds the node's registry: the Go runtime's and the
// process's, Raft's, the node's own.
func (s *Server) registerMetrics() {
	s.registry = prometheus.NewRegistry()
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.registry.MustRegister(&raftCollector{s: s})
	s.metrics.register(s.registry)
	s.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kvd_watch_buffered_bytes",
		Help: "Keys and values that this node's watches have read and not yet sent."},
		func() float64 { return float64(s.watchMem.held()) }))
}

// startBackground starts the node's background loops; Close stops them
// first and waits for them.
func (s *Server) startBackground() {
	bgCtx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	background := func(run func(ctx context.Context)) {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			run(bgCtx)
		}()
	}
	background(func(ctx context.Context) { s.runJanitors(ctx, time.Second) })
	background(s.runMaintenance)
	if s.cfg.Auth {
		s.refreshTokens(bgCtx)
		background(func(ctx context.Context) { repeat(ctx, tokenRefresh, func() { s.refreshTokens(ctx) }) })
	}
	if s.cfg.BackupDir != "" {
		background(s.runScheduledBackups)
	}
	background(func(ctx context.Context) { repeat(ctx, 250*time.Millisecond, s.disk.check) })
	background(func(ctx context.Context) {
		handOffs := map[kvd.GroupID]time.Time{}
		repeat(ctx, time.Second, func() {
			s.probeNodes(ctx, s.Map())
			s.handOffWhileShort(ctx, handOffs)
		})
	})
	if s.memory.high > 0 {
		background(func(ctx context.Context) { repeat(ctx, 50*time.Millisecond, s.memory.sample) })
	}
	if s.cfg.Encryption.Path() != "" {
		background(func(ctx context.Context) { repeat(ctx, keyReloadEvery, func() { _ = s.ReloadKeys() }) })
	}
	background(s.runMembership)
	if every := s.cfg.LeaderBalanceInterval; every > 0 {
		background(func(ctx context.Context) { s.balanceLeaders(ctx, every) })
	}
}

// repeat calls fn every interval until ctx ends.
func repeat(ctx context.Context, every time.Duration, fn func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// HTTPAddr returns the address the HTTP API listens on, "" if none.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Config returns the node's configuration.
func (s *Server) Config() Config { return s.cfg }

// RaftTransportStats counts the node's Raft sessions and streams.
func (s *Server) RaftTransportStats() replication.MuxStats {
	if s.mux == nil {
		return replication.MuxStats{}
	}
	return s.mux.Stats()
}

// hosted returns the replicas this node hosts; do not modify the map.
func (s *Server) hosted() map[kvd.GroupID]*replication.Group { return *s.groups.Load() }

// Group returns this node's replica of group g, if it hosts one.
func (s *Server) Group(g kvd.GroupID) (*replication.Group, bool) {
	grp, ok := s.hosted()[g]
	return grp, ok
}

// Map returns the current cluster map: the newest stored through Raft in
// any hosted group, or the seed this node bootstrapped with.
func (s *Server) Map() *kvd.Map {
	m := s.seed
	if l := s.learned.Load(); l != nil && l.Epoch > m.Epoch {
		m = l
	}
	for _, g := range s.hosted() {
		if sm := g.Store().Map(); sm != nil && sm.Epoch > m.Epoch {
			m = sm
		}
	}
	return m
}

// Run serves until ctx ends, then shuts the node down (see Close).
func (s *Server) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
	case err := <-s.serveErr:
		if err != nil {
			s.Close()
			return fmt.Errorf("http server: %w", err)
		}
	}
	return s.Close()
}

// Close shuts the node down in order: stop accepting requests and drain
// those in flight (bounded by ShutdownTimeout), hand leadership of every
// group this node leads to another replica, close the groups, close the
// Raft listener. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.bgCancel != nil {
			s.bgCancel()
			s.bg.Wait()
		}
		if s.frontend != nil {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			if err := s.frontend.Shutdown(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		} else if s.httpLn != nil {
			s.httpLn.Close()
		}
		if s.coord != nil {
			s.coord.Close()
		}
		var wg sync.WaitGroup
		var errMu sync.Mutex // protects errs while groups close in parallel
		for _, g := range s.hosted() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.TransferLeadership(); err != nil {
					s.log.Warn("leadership hand-off failed", "group", g.ID(), "err", err)
				}
			}()
		}
		wg.Wait()
		for _, g := range s.hosted() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.Close(); err != nil {
					errMu.Lock()
					errs = append(errs, err)
					errMu.Unlock()
				}
			}()
		}
		wg.Wait()
		if s.mux != nil {
			if err := s.mux.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, fmt.Errorf("close raft listener: %w", err))
			}
		}
		if s.peerHTTP != nil {
			s.peerHTTP.CloseIdleConnections()
		}
		if s.dirLock != nil {
			s.dirLock.Close() // releases the lock: last, once every file is closed
		}
		s.closeErr = errors.Join(errs...)
		s.log.Info("node stopped")
	})
	return s.closeErr
}

// WaitReady waits until every group this node hosts has a leader that
// can serve reads, at most timeout.
func (s *Server) WaitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, g := range s.hosted() {
		for {
			err := g.ReadBarrier(ctx, kvd.Linearizable)
			if err == nil || !g.IsLeader() && g.LeaderID() != "" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("group %d not ready: %w", g.ID(), kvd.ErrUnavailable)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}
