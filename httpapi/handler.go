package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
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
	// ForwardClient carries requests forwarded to other nodes.
	ForwardClient *http.Client
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

// watchWriteTimeout bounds each write to a watch stream: a client that
// stops reading for that long loses its stream (and resumes from its
// cursor when it comes back).
const watchWriteTimeout = 30 * time.Second

// Handler serves the API. Build it with New.
type Handler struct {
	b       Backend
	o       Options
	log     *slog.Logger
	router  *mux.Router
	handler http.Handler
	fwd     *http.Client
	limits  *inflight
	metrics *httpMetrics
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
	h := &Handler{b: b, o: o, log: o.Logger, fwd: o.ForwardClient, peerCred: sha256.Sum256([]byte(o.PeerCredential))}
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
	r.HandleFunc("/v1/txn", h.txn).Methods(http.MethodPost)
	r.HandleFunc("/v1/watch", h.watch).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/history", h.history).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/readindex", h.readIndex).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/propose", h.internal(func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
		return h.b.ProposeRaw(ctx, g, body)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/read", h.internal(func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
		return h.b.ReadRaw(ctx, g, body)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/log", h.logEntry).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/snapshot", h.snapshot).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/hash", h.hash).Methods(http.MethodGet)
	r.HandleFunc("/v1/internal/txns", h.groupTxns).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/txns", h.txns).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/txns/{id}/abort", h.abortTxn).Methods(http.MethodPost)
	if fp := failpoint.Handler(); fp != nil { // fault-injection builds only
		r.PathPrefix("/debug/failpoints/").Handler(fp)
	}
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
		writeError(w, fmt.Errorf("%w: %s is for the cluster's nodes only (no valid %s)", kvd.ErrForbidden, r.URL.Path, api.HeaderPeerAuth), false)
		return
	}
	// URL.Query drops what it cannot parse: a mistyped parameter would
	// silently mean its default (a watch from now, a scan of everything).
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		writeError(w, fmt.Errorf("%w: malformed query string: %v", kvd.ErrInvalid, err), false)
		return
	}
	if !internal && h.o.UnderPressure != nil && !operational(r.URL.Path) && h.o.UnderPressure() {
		h.limits.shed.WithLabelValues("memory").Inc()
		writeError(w, fmt.Errorf("the node is short of memory; retry shortly or through another node: %w", kvd.ErrOverloaded), false)
		return
	}
	// Long-lived requests (watches) would hold a slot for ever, and
	// node-to-node calls (authenticated above) finish what clients' admitted
	// requests started (resolutions, read indexes, repairs): neither is
	// counted.
	if r.URL.Path != "/v1/watch" && !internal {
		release, err := h.limits.admit(r)
		if err != nil {
			writeError(w, err, false)
			return
		}
		defer release()
	}
	h.handler.ServeHTTP(w, r)
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
	if h.o.PeerCredential == "" {
		return true
	}
	got := sha256.Sum256([]byte(r.Header.Get(api.HeaderPeerAuth)))
	return subtle.ConstantTimeCompare(got[:], h.peerCred[:]) == 1
}

// Close releases the connections kept for forwarding.
func (h *Handler) Close() { h.fwd.CloseIdleConnections() }

// keyOf returns the request's key, percent-decoded once and validated.
func (h *Handler) keyOf(r *http.Request) (string, error) {
	raw := mux.Vars(r)["key"]
	key, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("%w: bad percent-encoding in key: %v", kvd.ErrInvalid, err)
	}
	if err := h.o.Limits.ValidateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// routeOf parses the routing headers a smart client sends.
func routeOf(r *http.Request) (kvd.Route, error) {
	gs, es := r.Header.Get(api.HeaderGroup), r.Header.Get(api.HeaderEpoch)
	if gs == "" && es == "" {
		return kvd.Route{}, nil
	}
	g, err1 := strconv.ParseUint(gs, 10, 64)
	e, err2 := strconv.ParseUint(es, 10, 64)
	if err1 != nil || err2 != nil || g == 0 {
		return kvd.Route{}, fmt.Errorf("%w: %s and %s must both be positive integers", kvd.ErrInvalid, api.HeaderGroup, api.HeaderEpoch)
	}
	return kvd.Route{Direct: true, Group: kvd.GroupID(g), Epoch: e}, nil
}

func consistencyOf(r *http.Request) (kvd.Consistency, error) {
	return kvd.ParseConsistency(r.URL.Query().Get("consistency"))
}

// parseETag parses one entity tag: "5" (or 5, or W/"5").
func parseETag(s string) (uint64, error) {
	s = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "W/"))
	s = strings.TrimSuffix(strings.TrimPrefix(s, `"`), `"`)
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: entity tag %q is not a version", kvd.ErrInvalid, s)
	}
	return v, nil
}

func etag(v kvd.Version) string { return `"` + strconv.FormatUint(v, 10) + `"` }

// condOf turns If-Match / If-None-Match into a precondition.
func condOf(r *http.Request) (kvd.Cond, error) {
	im, inm := r.Header.Get("If-Match"), r.Header.Get("If-None-Match")
	switch {
	case im != "" && inm != "":
		return kvd.Cond{}, fmt.Errorf("%w: use If-Match or If-None-Match, not both", kvd.ErrInvalid)
	case strings.TrimSpace(im) == "*":
		return kvd.Cond{Kind: kvd.CondExists}, nil
	case im != "":
		v, err := parseETag(im)
		return kvd.Cond{Kind: kvd.CondVersionEq, Version: v}, err
	case strings.TrimSpace(inm) == "*":
		return kvd.Cond{Kind: kvd.CondVersionEq, Version: 0}, nil
	case inm != "":
		v, err := parseETag(inm)
		return kvd.Cond{Kind: kvd.CondVersionNe, Version: v}, err
	}
	return kvd.Cond{}, nil
}

// responder writes a successful response.
type responder func(w http.ResponseWriter)

// serve runs op, and if this node does not lead the key's group, forwards
// the request to the leader: following leader hints, and waiting a little
// during an election, within the request's deadline. body is the request
// body already read (nil if none).
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rt kvd.Route, body []byte, write bool, op func(ctx context.Context) (responder, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	// Looking for a leader stops after ForwardBudget: a node cut off
	// from the leader answers 503 soon, so the client can try elsewhere.
	findBy := time.Now().Add(h.o.ForwardBudget)
	forwarded := r.Header.Get(api.HeaderForwarded) != ""
	backoff := 25 * time.Millisecond
	tried := map[string]bool{}
	hint := "" // the leader named by the last node forwarded to
	for {
		respond, err := op(ctx)
		if err == nil {
			respond(w)
			return
		}
		if !errors.Is(err, kvd.ErrNotLeader) || rt.Direct || forwarded {
			writeError(w, err, write)
			return
		}
		leader := kvd.LeaderHint(err)
		if hint != "" && !tried[hint] {
			leader = hint // fresher than this node's own view
		}
		hint = ""
		if leader != "" && leader != h.b.NodeID() && !tried[leader] {
			done, next := h.forward(ctx, w, r, body, leader, write)
			if done {
				return
			}
			tried[leader] = true
			hint = next
		} else {
			// No leader known, or the known one failed: wait for the
			// group to settle, then look again.
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				writeError(w, err, write)
				return
			}
			backoff = min(backoff*2, 500*time.Millisecond)
			clear(tried)
		}
		if ctx.Err() != nil || time.Now().After(findBy) {
			writeError(w, err, write)
			return
		}
	}
}

// forward sends the request to node id and relays its answer. It returns
// done = false, having written nothing, when the request certainly had no
// effect there and may be tried again (the node was unreachable, or it
// answered 503, naming the leader it knows of in hint); it returns done =
// true once it has written a response.
func (h *Handler) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, id string, write bool) (done bool, hint string) {
	addr, ok := h.b.PeerHTTP(id)
	if !ok {
		return false, ""
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr+r.URL.RequestURI(), rd)
	if err != nil {
		writeError(w, fmt.Errorf("forward to %s: %w", id, err), write)
		return true, ""
	}
	for k, vs := range r.Header {
		switch k {
		case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection":
			continue
		}
		req.Header[k] = vs
	}
	req.Header.Set(api.HeaderForwarded, h.b.NodeID())
	resp, err := h.fwd.Do(req)
	if err != nil {
		if !write || wire.NeverSent(err) {
			return false, ""
		}
		writeError(w, fmt.Errorf("forwarded to leader %s, no answer: %v: %w", id, err, kvd.ErrUnknownOutcome), write)
		return true, ""
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable && ctx.Err() == nil {
		// 503 promises nothing was done; the leader may have moved.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return false, resp.Header.Get(api.HeaderLeader)
	}
	for _, k := range []string{"Content-Type", "Etag", "Retry-After", api.HeaderLeader, api.HeaderNode, "Content-Length"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true, ""
}

func (h *Handler) getKey(w http.ResponseWriter, r *http.Request) {
	key, err := h.keyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	c, err := consistencyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	rt, err := routeOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var notModified uint64
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.TrimSpace(inm) != "*" {
		if notModified, err = parseETag(inm); err != nil {
			writeError(w, err, false)
			return
		}
	}
	h.serve(w, r, rt, nil, false, func(ctx context.Context) (responder, error) {
		it, err := h.b.Get(ctx, key, c, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			w.Header().Set("ETag", etag(it.Version))
			if notModified != 0 && notModified == it.Version {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(it.Value)))
			w.WriteHeader(http.StatusOK)
			w.Write(it.Value)
		}, nil
	})
}

// readBody reads a request body within the limits.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: body is %d bytes, the limit is %d", kvd.ErrTooLarge, r.ContentLength, limit)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	var body []byte
	var err error
	if n := r.ContentLength; n >= 0 {
		// The size is announced: one allocation of it (and one byte to
		// see a body longer than announced), not a growing buffer.
		body = make([]byte, n+1)
		var got int
		got, err = io.ReadFull(rd, body)
		switch {
		case int64(got) == n && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)):
			body, err = body[:got], nil
		case err == nil:
			err = fmt.Errorf("body longer than its Content-Length %d", n)
		case int64(got) < n && err != nil:
			err = fmt.Errorf("body shorter (%d bytes) than its Content-Length %d: %w", got, n, err)
		}
	} else {
		body, err = io.ReadAll(rd)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fmt.Errorf("%w: body exceeds %d bytes", kvd.ErrTooLarge, limit)
		}
		if errors.Is(err, kvd.ErrOverloaded) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: read body: %v", kvd.ErrInvalid, err)
	}
	return body, nil
}

func (h *Handler) putKey(w http.ResponseWriter, r *http.Request) {
	key, err := h.keyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	rt, err := routeOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	cond, err := condOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	wr := kvd.WriteOptions{Cond: cond, IdempotencyKey: r.Header.Get("Idempotency-Key")}
	if s := r.URL.Query().Get("ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || kvd.ValidateTTL(d) != nil {
			writeError(w, fmt.Errorf("%w: ttl must be a positive Go duration such as 30s, at most %v, not %q", kvd.ErrInvalid, kvd.MaxTTL, s), false)
			return
		}
		wr.TTL = d
	}
	// One byte past the value limit tells a value that is too large from
	// one that fits; the error names the value limit itself.
	body, err := h.readBody(w, r, min(h.o.Limits.MaxBodyBytes, int64(h.o.Limits.MaxValueBytes)+1))
	if errors.Is(err, kvd.ErrTooLarge) && int64(h.o.Limits.MaxValueBytes) < h.o.Limits.MaxBodyBytes {
		err = fmt.Errorf("%w: the value exceeds %d bytes", kvd.ErrTooLarge, h.o.Limits.MaxValueBytes)
	}
	if err != nil {
		writeError(w, err, false)
		return
	}
	if err := h.o.Limits.ValidateValue(len(body)); err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, body, true, func(ctx context.Context) (responder, error) {
		ver, err := h.b.Put(ctx, key, body, wr, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			w.Header().Set("ETag", etag(ver))
			writeVersion(w, ver)
		}, nil
	})
}

func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request) {
	key, err := h.keyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	rt, err := routeOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	cond, err := condOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	wr := kvd.WriteOptions{Cond: cond, IdempotencyKey: r.Header.Get("Idempotency-Key")}
	h.serve(w, r, rt, nil, true, func(ctx context.Context) (responder, error) {
		deleted, ver, err := h.b.Delete(ctx, key, wr, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, api.DeleteResponse{Deleted: deleted, Version: ver})
		}, nil
	})
}

func (h *Handler) scan(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := kvd.ScanOptions{Prefix: q.Get("prefix"), Start: q.Get("start"), End: q.Get("end"), Limit: h.o.Limits.DefaultScanLimit}
	for name, v := range map[string]string{"prefix": o.Prefix, "start": o.Start, "end": o.End} {
		if !utf8.ValidString(v) {
			writeError(w, fmt.Errorf("%w: %s is not valid UTF-8", kvd.ErrInvalid, name), false)
			return
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		switch {
		case err != nil || n < 1:
			writeError(w, fmt.Errorf("%w: limit must be a positive integer, not %q", kvd.ErrInvalid, s), false)
			return
		case n > h.o.Limits.MaxScanLimit:
			writeError(w, fmt.Errorf("%w: limit %d is over the maximum page of %d", kvd.ErrInvalid, n, h.o.Limits.MaxScanLimit), false)
			return
		}
		o.Limit = n
	}
	if s := q.Get("bytes"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, fmt.Errorf("%w: bytes must be a positive integer, not %q", kvd.ErrInvalid, s), false)
			return
		}
		o.MaxBytes = n // lowers the node's cap, never raises it
	}
	c, err := consistencyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	rt, err := routeOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, nil, false, func(ctx context.Context) (responder, error) {
		items, next, err := h.b.Scan(ctx, o, c, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			resp := api.ScanResponse{Items: make([]api.Item, len(items)), More: next != "", Next: next}
			for i, it := range items {
				resp.Items[i] = api.Item{Key: it.Key, Value: it.Value, Version: it.Version}
			}
			writeJSON(w, http.StatusOK, resp)
		}, nil
	})
}

func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) {
	c, err := h.b.Cluster(r.Context())
	if err != nil {
		writeError(w, err, false)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.b.Status(r.Context()))
}

func (h *Handler) readIndex(w http.ResponseWriter, r *http.Request) {
	g, err := groupParam(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.answer(w, r, false, func(ctx context.Context) (any, error) {
		idx, err := h.b.ReadIndex(ctx, g)
		return api.ReadIndexResponse{Index: idx}, err
	})
}

func (h *Handler) txn(w http.ResponseWriter, r *http.Request) {
	body, err := h.readBody(w, r, h.o.Limits.MaxBodyBytes)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var req api.TxnRequest
	if err := checkJSON(body); err != nil {
		writeError(w, fmt.Errorf("%w: transaction body: %v", kvd.ErrInvalid, err), false)
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: transaction body: %v", kvd.ErrInvalid, err), false)
		return
	}
	if dec.More() {
		writeError(w, fmt.Errorf("%w: transaction body: trailing data", kvd.ErrInvalid), false)
		return
	}
	t, err := wire.Txn(req)
	if err != nil {
		writeError(w, err, false)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	kresp, err := h.b.Txn(ctx, t, kvd.WriteOptions{IdempotencyKey: r.Header.Get("Idempotency-Key")})
	resp := wire.FromTxnResponse(kresp)
	if err != nil {
		status, code := statusOf(err, true)
		if status == http.StatusConflict {
			resp.Committed = false
			resp.Results = nil
			resp.Error = &api.ErrorDetail{Code: code, Message: err.Error()}
			writeJSON(w, status, resp)
			return
		}
		writeError(w, err, true)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// internal serves a node-to-node call on a group: the body in, an
// encoded answer out.
func (h *Handler) internal(fn func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g, err := groupParam(r)
		if err != nil {
			writeError(w, err, false)
			return
		}
		body, err := h.readBody(w, r, h.o.Limits.MaxBodyBytes+1<<20)
		if err != nil {
			writeError(w, err, false)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
		defer cancel()
		out, err := fn(ctx, g, body)
		if err != nil {
			writeError(w, err, true)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(out)
	}
}

// watch serves GET /v1/watch as Server-Sent Events: an id-only message
// with the starting cursor, then one message per change, each with an id
// that resumes right after it. A comment every 15 s keeps idle
// connections open. A watch that cannot resume is refused with 410.
func (h *Handler) watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix := q.Get("prefix")
	if !utf8.ValidString(prefix) {
		writeError(w, fmt.Errorf("%w: prefix is not valid UTF-8", kvd.ErrInvalid), false)
		return
	}
	since := q.Get("since")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		since = id
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's write timeout
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if h.o.Shutdown != nil {
		go func() {
			select {
			case <-h.o.Shutdown:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	// The watch writes each event itself, so that an event leaves the
	// node's watch buffer only once it is on the wire, and a client that
	// stops reading holds up only its own watch. The handler writes the
	// keep-alives; mu keeps the two apart. Every write has a deadline:
	// a client that stops reading does not hold the stream forever.
	var mu sync.Mutex
	streaming := false
	// Pieces are written as they are, not formatted into one buffer: an
	// event's JSON is held once while the client is slow to take it.
	write := func(pieces ...[]byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		for _, p := range pieces {
			if _, err := w.Write(p); err != nil {
				return err
			}
		}
		return rc.Flush()
	}
	done := make(chan error, 1)
	go func() {
		done <- h.b.Watch(ctx, prefix, since, func(cursor string) error {
			mu.Lock()
			defer mu.Unlock()
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			streaming = true
			return write(fmt.Appendf(nil, ": watching %q\nid: %s\n\n", prefix, cursor))
		}, func(ev kvd.Event) error {
			if ev.Type == "" { // a progress mark: an id alone
				mu.Lock()
				defer mu.Unlock()
				return write(fmt.Appendf(nil, "id: %s\n\n", ev.Cursor))
			}
			b, err := json.Marshal(api.WatchEvent{Type: ev.Type, Key: ev.Key, Value: ev.Value, Version: ev.Version})
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			return write(fmt.Appendf(nil, "id: %s\ndata: ", ev.Cursor), b, []byte("\n\n"))
		})
	}()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-keepalive.C:
			mu.Lock()
			var err error
			if streaming {
				err = write([]byte(": keep-alive\n\n"))
			}
			mu.Unlock()
			if err != nil {
				cancel()
				<-done
				return
			}
		case err := <-done:
			mu.Lock()
			defer mu.Unlock()
			if !streaming {
				if err != nil {
					writeError(w, err, false)
				}
				return
			}
			if err != nil && ctx.Err() == nil {
				_, code := statusOf(err, false)
				b, _ := json.Marshal(api.Error{Error: api.ErrorDetail{Code: code, Message: err.Error()}})
				_ = write([]byte("event: error\ndata: "), b, []byte("\n\n"))
			}
			return
		}
	}
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	g, err := groupParam(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	q := r.URL.Query()
	limit, maxBytes := 256, 0
	if q.Has("limit") {
		limit, _ = strconv.Atoi(q.Get("limit"))
	}
	if q.Has("bytes") {
		maxBytes, _ = strconv.Atoi(q.Get("bytes"))
	}
	waitMS, _ := strconv.Atoi(q.Get("wait"))
	h.answer(w, r, false, func(ctx context.Context) (any, error) {
		return h.b.History(ctx, g, q.Get("after"), q.Get("prefix"), max(limit, 0), maxBytes, time.Duration(waitMS)*time.Millisecond)
	})
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": h.b.NodeID()})
}

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.b.Ready(); err != nil {
		writeError(w, err, false)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "node": h.b.NodeID()})
}
