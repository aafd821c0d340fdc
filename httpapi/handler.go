package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/console"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/internal/wire"
)

// Backend is what the handlers need from a node. Every method that can
// block takes a context that ends with the request. Errors are the kvd
// sentinel errors (wrapped); a *kvd.NotLeaderError makes the handler
// forward the request to the leader it names.
type Backend interface {
	// NodeID returns this node's id.
	NodeID() string
	// PeerHTTP returns the address to dial for node id's HTTP API.
	PeerHTTP(id string) (string, bool)
	// Get reads a key at consistency c.
	Get(ctx context.Context, key string, c kvd.Consistency, rt kvd.Route) (kvd.Item, error)
	// Put writes a key if o.Cond holds and returns its new version; o's
	// idempotency key, if any, makes it idempotent.
	Put(ctx context.Context, key string, value []byte, o kvd.WriteOptions, rt kvd.Route) (kvd.Version, error)
	// Delete removes a key if o.Cond holds; deleted is false if it was
	// absent.
	Delete(ctx context.Context, key string, o kvd.WriteOptions, rt kvd.Route) (deleted bool, ver kvd.Version, err error)
	// Scan returns a page of keys in order and, when more follow, the
	// first key of the next page ("" when none follow). A routed scan
	// reads the routed group alone.
	Scan(ctx context.Context, o kvd.ScanOptions, c kvd.Consistency, rt kvd.Route) ([]kvd.Item, string, error)
	// Epoch returns the epoch of this node's cluster map.
	Epoch() uint64
	// Cluster returns the cluster map with each group's leader.
	Cluster(ctx context.Context) (api.Cluster, error)
	// Status describes this node.
	Status(ctx context.Context) api.Status
	// Events returns the events this node recorded, the newest first.
	Events() []api.Event
	// GetExpiring is Get with when the item's TTL ends (zero: none),
	// read with it, for the X-Kvd-Expires header.
	GetExpiring(ctx context.Context, key string, c kvd.Consistency, rt kvd.Route) (kvd.Item, time.Time, error)
	// Ready returns nil when every hosted group has a leader.
	Ready() error
	// ReadIndex returns a read index of group g, which this node must lead.
	ReadIndex(ctx context.Context, g kvd.GroupID) (uint64, error)
	// Txn runs a transaction; o's idempotency key, if any, makes it
	// idempotent. A kvd.ErrCompareFailed error comes with the failed
	// compares in the response.
	Txn(ctx context.Context, t kvd.Txn, o kvd.WriteOptions) (kvd.TxnResponse, error)
	// ProposeRaw replicates an encoded command through group g's log, on
	// this node, which must lead g, and returns the encoded result.
	ProposeRaw(ctx context.Context, g kvd.GroupID, cmd []byte) ([]byte, error)
	// ReadRaw reads a JSON list of keys of group g linearizably, on this
	// node, which must lead g, and returns their encoded states.
	ReadRaw(ctx context.Context, g kvd.GroupID, keys []byte) ([]byte, error)
	// Watch streams changes to keys with prefix from cursor since ("":
	// now): start gets the starting cursor, send each event.
	Watch(ctx context.Context, prefix, since string, start func(cursor string) error, send func(kvd.Event) error) error
	// History reads group g's history on this node's replica (node to
	// node), waiting up to wait for something new.
	History(ctx context.Context, g kvd.GroupID, after, prefix string, limit, maxBytes int, wait time.Duration) (api.HistoryPage, error)
	// LogEntry returns entry index of this node's log of group g, which
	// it must have applied (node to node: a peer's repair).
	LogEntry(ctx context.Context, g kvd.GroupID, index uint64) (api.LogEntry, error)
	// WriteSnapshot streams a snapshot of this node's replica of group g,
	// taken once it has applied minIndex (node to node: a peer's
	// repair). It calls start once, just before the first byte, for the
	// writer; an error before that is answered as usual.
	WriteSnapshot(ctx context.Context, g kvd.GroupID, minIndex uint64, start func() io.Writer) error
	// HashAt returns the state hash this node's replica of group g
	// recorded at index (node to node: the leader's integrity check).
	HashAt(ctx context.Context, g kvd.GroupID, index uint64) (uint64, error)
	// GroupTxns returns the transaction records and locks of this node's
	// replica of group g (node to node).
	GroupTxns(ctx context.Context, g kvd.GroupID) (api.GroupTxns, error)
	// Txns lists the transactions that hold locks or records (admin).
	Txns(ctx context.Context) (api.TxnList, error)
	// AddNode adds a node to the cluster map (admin).
	AddNode(ctx context.Context, r api.NodeRequest) (api.NodeChange, error)
	// RemoveNode decommissions a node: its replicas move to other nodes,
	// then it leaves the map; force is for a dead node (admin). The
	// status is 200 when done, 202 while in progress.
	RemoveNode(ctx context.Context, id string, force bool, wait time.Duration) (api.NodeChange, int, error)
	// AddMember adds a replica of group g on node: a learner, then a
	// voter (admin).
	AddMember(ctx context.Context, g kvd.GroupID, node string, wait time.Duration) (api.MembershipChange, int, error)
	// RemoveMember removes node's replica of group g (admin).
	RemoveMember(ctx context.Context, g kvd.GroupID, node string, wait time.Duration) (api.MembershipChange, int, error)
	// TransferLeader hands group g's leadership to node (admin).
	TransferLeader(ctx context.Context, g kvd.GroupID, node string) (api.MembershipChange, int, error)
	// CreateGroup adds a group owning no slot (admin).
	CreateGroup(ctx context.Context, r api.GroupRequest, wait time.Duration) (api.GroupChange, int, error)
	// DeleteGroup removes a group owning no slot (admin).
	DeleteGroup(ctx context.Context, g kvd.GroupID, wait time.Duration) (api.GroupChange, int, error)
	// StartMove starts moving slots to a group (admin); 202.
	StartMove(ctx context.Context, r api.MoveRequest) (api.MoveStarted, int, error)
	// Moves lists the slot moves (admin).
	Moves(ctx context.Context) (api.MoveList, error)
	// Rebalance plans, and unless dryRun starts, the moves that even out
	// the groups (admin).
	Rebalance(ctx context.Context, dryRun bool) (api.RebalancePlan, error)
	// AuthOn tells whether requests need a token; Authenticate returns who
	// token names (kvd.ErrUnauthenticated if no one).
	AuthOn() bool
	Authenticate(token string) (*api.Principal, error)
	// CreateToken, Tokens and RevokeToken manage the tokens (admin).
	CreateToken(ctx context.Context, r api.TokenRequest) (api.TokenCreated, error)
	Tokens(ctx context.Context) (api.TokenList, error)
	RevokeToken(ctx context.Context, name string) error
	// EncryptionStatus tells where encryption at rest stands on every
	// node; RotateKey makes a new key active on every node (admin).
	EncryptionStatus(ctx context.Context) (api.EncryptionStatus, error)
	RotateKey(ctx context.Context) (api.KeyRotation, error)
	// InternalEncryption serves a node-to-node request about keys.
	InternalEncryption(ctx context.Context, body []byte) ([]byte, error)
	// InternalTokens serves the encoded token table (node to node).
	InternalTokens(ctx context.Context) ([]byte, error)
	// Backup writes a backup of every group at one consistent cut (admin);
	// start gives the writer just before the first byte.
	Backup(ctx context.Context, start func() io.Writer) (backup.Summary, error)
	// Restore loads a backup into the cluster, all or nothing (admin).
	Restore(ctx context.Context, r io.Reader, force bool) (api.RestoreResult, error)
	// WriteBackupPart streams this node's replica of group g for a
	// backup's cut (node to node); flush pushes out the part's header.
	WriteBackupPart(ctx context.Context, g kvd.GroupID, id string, minIndex uint64, start func() io.Writer, flush func()) error
	// MoveRead reads a piece of group g's state for a slot move (node to
	// node).
	MoveRead(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error)
	// Join registers a node joining the cluster and answers the cluster's
	// id and map (node to node).
	Join(ctx context.Context, body []byte) ([]byte, error)
	// EditMap makes an encoded edit of the cluster map, on the system
	// group's leader (node to node).
	EditMap(ctx context.Context, body []byte) ([]byte, error)
	// InternalMap returns this node's cluster map (node to node).
	InternalMap(ctx context.Context) (*kvd.Map, error)
	// AbortTxn aborts transaction id unless it has committed, and then
	// finishes it: its locks are released (or applied, if committed) in
	// every group (admin). kvd.ErrNotFound if nothing holds it.
	AbortTxn(ctx context.Context, id string) (api.TxnInfo, error)
}

// Options configure a Handler.
type Options struct {
	// Limits are enforced on every request.
	Limits kvd.Limits
	// RequestTimeout bounds each request, forwarding included.
	RequestTimeout time.Duration
	// ForwardBudget bounds how long a request keeps looking for a leader
	// to forward to (following hints, waiting out an election) before it
	// is answered 503.
	ForwardBudget time.Duration
	// Registry receives the HTTP metrics and serves /metrics.
	Registry *prometheus.Registry
	// Logger receives request errors.
	Logger *slog.Logger
	// TLS, if set, makes the server serve TLS with it.
	TLS *tls.Config
	// ForwardClient carries requests forwarded to other nodes, over
	// ForwardScheme ("http" if empty, or "https").
	ForwardClient *http.Client
	ForwardScheme string
	// PeerCA, if set (peer TLS), tells whether a request's verified
	// certificate chains are a peer node's: node-to-node endpoints then
	// require one, besides the peer credential.
	PeerCA func(chains [][]*x509.Certificate) bool
	// Shutdown is closed when the server shuts down; it ends watches.
	Shutdown <-chan struct{}
	// PeerCredential, if set, is what node-to-node calls carry in
	// api.HeaderPeerAuth; calls to /v1/internal/ without it get 403.
	PeerCredential string
	// MaxInflightRequests and MaxInflightBytes (0: no cap) bound the
	// requests served at once and the bytes of their bodies; past them a
	// request is answered 429 overloaded at once. Watches and
	// node-to-node long polls are not counted.
	MaxInflightRequests int
	MaxInflightBytes    int64
	// MaxConnections caps the connections a Server keeps open at once
	// (0: no cap); past it a new connection is answered 503 and closed.
	MaxConnections int
	// ReadHeaderTimeout bounds how long a Server waits for a request's
	// headers (0: 10 s).
	ReadHeaderTimeout time.Duration
	// Profiling makes a Server serve net/http/pprof under /debug/pprof/.
	Profiling bool
	// UnderPressure, if set, tells whether the node is short of memory:
	// then new client requests are answered 429 overloaded at once
	// (node-to-node calls and the health, metrics and status endpoints go
	// on).
	UnderPressure func() bool
}

// Handler serves the API. Build it with New.
type Handler struct {
	b       Backend
	o       Options
	log     *slog.Logger
	router  *mux.Router
	handler http.Handler
	fwd     *http.Client
	// authFailures limits failed authentications per client address.
	authFailures failureLimiter
	limits       *inflight
	metrics      *httpMetrics
	// peerCred is the SHA-256 of Options.PeerCredential.
	peerCred [32]byte
}

// New returns the API handler over b.
func New(b Backend, o Options) (*Handler, error) {
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.ForwardBudget <= 0 {
		o.ForwardBudget = 3 * time.Second
	}
	if o.ForwardClient == nil {
		o.ForwardClient = wire.NewPeerClient()
	}
	if o.ForwardScheme == "" {
		o.ForwardScheme = "http"
	}
	h := &Handler{b: b, o: o, log: o.Logger, fwd: o.ForwardClient, peerCred: sha256.Sum256([]byte(o.PeerCredential)),
		authFailures: failureLimiter{rate: 2, burst: 20}}
	r := mux.NewRouter()
	// Keys are kept exactly: no path cleaning, no redirects, and the key
	// is taken from the escaped path and percent-decoded once.
	r.SkipClean(true)
	r.UseEncodedPath()
	r.HandleFunc("/v1/kv/{key:.*}", h.getKey).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/v1/kv/{key:.*}", h.putKey).Methods(http.MethodPut)
	r.HandleFunc("/v1/kv/{key:.*}", h.deleteKey).Methods(http.MethodDelete)
	r.HandleFunc("/v1/kv", h.scan).Methods(http.MethodGet)
	r.HandleFunc("/v1/cluster", h.cluster).Methods(http.MethodGet)
	r.HandleFunc("/v1/status", h.status).Methods(http.MethodGet)
	r.HandleFunc("/v1/events", h.eventsList).Methods(http.MethodGet)
	r.HandleFunc("/v1/txn", h.txn).Methods(http.MethodPost)
	r.HandleFunc("/v1/batch", h.batch).Methods(http.MethodPost)
	r.HandleFunc("/v1/watch", h.watch).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/history", h.history).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/readindex", h.readIndex).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/propose", h.internal(func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
		return h.b.ProposeRaw(ctx, g, body)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/read", h.internal(func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
		return h.b.ReadRaw(ctx, g, body)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/moveread", h.internal(func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
		return h.b.MoveRead(ctx, g, body)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/log", h.logEntry).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/snapshot", h.snapshot).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/tokens", func(w http.ResponseWriter, r *http.Request) {
		h.peerCall(func(ctx context.Context, _ []byte) ([]byte, error) { return h.b.InternalTokens(ctx) })(w, r)
	}).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/backuppart", h.backupPart).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/backup", h.adminOnly(h.backup)).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/restore", h.adminOnly(h.restore)).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/hash", h.hash).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/txns", h.groupTxns).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/txns", h.adminOnly(h.txns)).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/txns/{id}/abort", h.adminOnly(h.abortTxn)).Methods(http.MethodPost)
	h.adminRoutes(r)
	if fp := failpoint.Handler(); fp != nil { // fault-injection builds only
		r.PathPrefix("/debug/failpoints/").Handler(h.adminOnly(fp.ServeHTTP))
	}
	r.PathPrefix(console.Prefix).Handler(console.Handler())
	r.Handle("/ui", http.RedirectHandler(console.Prefix, http.StatusMovedPermanently))
	r.HandleFunc("/healthz", h.healthz).Methods(http.MethodGet)
	r.HandleFunc("/readyz", h.readyz).Methods(http.MethodGet)
	r.Handle("/metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, api.Error{Error: api.ErrorDetail{Code: api.CodeNotFound, Message: "no such endpoint: " + r.URL.Path}})
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, api.Error{Error: api.ErrorDetail{Code: api.CodeMethodNotAllowed, Message: r.Method + " is not allowed on " + r.URL.Path}})
	})
	m, err := newHTTPMetrics(o.Registry)
	if err != nil {
		return nil, fmt.Errorf("http metrics: %w", err)
	}
	h.metrics = m
	h.limits = &inflight{maxRequests: int64(o.MaxInflightRequests), maxBytes: o.MaxInflightBytes, bodyLimit: o.Limits.MaxBodyBytes + 1<<20}
	if err := h.limits.register(o.Registry); err != nil {
		return nil, fmt.Errorf("http metrics: %w", err)
	}
	r.Use(m.middleware)
	h.router = r
	h.handler = r
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer markAnswering(r)()
	w.Header().Set(api.HeaderNode, h.b.NodeID())
	w.Header().Set(api.HeaderEpoch, strconv.FormatUint(h.b.Epoch(), 10))
	internal := strings.HasPrefix(r.URL.Path, api.InternalPrefix)
	if internal && !h.isPeer(r) {
		h.metrics.peerRefused.Inc()
		h.refuse(w, r, fmt.Errorf("%w: %s is for the cluster's nodes only (no valid %s)", kvd.ErrForbidden, r.URL.Path, api.HeaderPeerAuth))
		return
	}
	// URL.Query drops what it cannot parse: a mistyped parameter would
	// silently mean its default (a watch from now, a scan of everything).
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		h.refuse(w, r, fmt.Errorf("%w: malformed query string: %v", kvd.ErrInvalid, err))
		return
	}
	// A node's own calls (a scan's page, a forwarded request, which the
	// forwarding node authorized) carry the cluster's credential instead
	// of a client's token.
	peer := r.Header.Get(api.HeaderPeerAuth) != "" && h.isPeer(r)
	if !internal && !openPath(r.URL.Path) && !peer && h.b.AuthOn() {
		var ok bool
		if r, ok = h.authenticate(w, r); !ok {
			return
		}
	}
	if !internal && h.o.UnderPressure != nil && !operational(r.URL.Path) && h.o.UnderPressure() {
		h.limits.shed.WithLabelValues("memory").Inc()
		h.refuse(w, r, fmt.Errorf("the node is short of memory; retry shortly or through another node: %w", kvd.ErrOverloaded))
		return
	}
	// Long-lived requests (watches) would hold a slot for ever, and
	// node-to-node calls (authenticated above) finish what clients' admitted
	// requests started (resolutions, read indexes, repairs): neither is
	// counted.
	if r.URL.Path != "/v1/watch" && !internal {
		release, err := h.limits.admit(r)
		if err != nil {
			h.refuse(w, r, err)
			return
		}
		defer release()
	}
	h.handler.ServeHTTP(w, r)
}

// refuse answers err to a request refused before its body was read. The
// body is read and dropped first (up to the body limit, for a second at
// most): a client still sending it would otherwise see its connection
// reset instead of the answer, as the server closes a connection whose
// body is left unread.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, err error) {
	if r.Body != nil && r.Body != http.NoBody {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, h.o.Limits.MaxBodyBytes+1<<20))
	}
	writeError(w, err, false)
}

// operational reports whether path serves operators and routers (health,
// readiness, metrics, status, the map, profiles): small answers that must
// go on while the node sheds client load.
func operational(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/metrics", "/v1/status", "/v1/cluster":
		return true
	}
	return strings.HasPrefix(path, "/debug/pprof/")
}

// isPeer reports whether r carries the cluster's node credential.
func (h *Handler) isPeer(r *http.Request) bool {
	if h.o.PeerCA != nil && (r.TLS == nil || !h.o.PeerCA(r.TLS.VerifiedChains)) {
		return false
	}
	if h.o.PeerCredential == "" {
		return true
	}
	got := sha256.Sum256([]byte(r.Header.Get(api.HeaderPeerAuth)))
	return subtle.ConstantTimeCompare(got[:], h.peerCred[:]) == 1
}

// Close releases the connections kept for forwarding.
func (h *Handler) Close() { h.fwd.CloseIdleConnections() }
