package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
)

// Config configures a Client.
type Config struct {
	// Endpoints are seed base URLs (e.g. "http://127.0.0.1:7070"); any one
	// that answers is enough. "host:port" is taken as http://host:port.
	Endpoints []string
	// Consistency is the default read consistency (linearizable).
	Consistency kvd.Consistency
	// ReadPolicy spreads follower and stale reads (default p2c).
	ReadPolicy Policy
	// Timeout bounds a call whose context has no deadline.
	Timeout time.Duration
	// AttemptTimeout bounds one read attempt against one replica, so a
	// hung replica costs at most this much before the read moves on.
	// Writes are bounded by the call's deadline only.
	AttemptTimeout time.Duration
	// EjectBackoff and MaxEjectBackoff bound how long a failing replica
	// stays out of rotation (doubling per consecutive failure).
	EjectBackoff    time.Duration
	MaxEjectBackoff time.Duration
	// ProbeInterval is how often ejected replicas are probed.
	ProbeInterval time.Duration
	// MinRefreshInterval rate-limits cluster map refreshes.
	MinRefreshInterval time.Duration
	// NodeURLs overrides the base URL dialed for a node id.
	NodeURLs map[string]string
	// HTTPClient, if set, carries every request.
	HTTPClient *http.Client
	// Token, if set, is sent with every request (Authorization: Bearer),
	// for a cluster that requires one.
	Token string
	// TLS, if set, makes the client speak HTTPS with these settings (the
	// CA it trusts, its certificate): to endpoints given without a scheme
	// and to every node it learns from the map. An https:// endpoint
	// also makes it speak HTTPS, with the system's roots unless TLS is
	// set. It is ignored when HTTPClient is set.
	TLS *tls.Config
	// BatchLanes is how many requests of plain puts, deletes and gets
	// the client has in flight to one node before further ones wait and
	// go together in one batch (see batch.go): 0 means 2, negative turns
	// coalescing off.
	BatchLanes int
	// Logger receives the client's debug logs.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults, for the given seed endpoints.
func DefaultConfig(endpoints ...string) Config {
	return Config{
		Endpoints:          endpoints,
		Consistency:        kvd.Linearizable,
		ReadPolicy:         PowerOfTwo,
		Timeout:            10 * time.Second,
		AttemptTimeout:     2 * time.Second,
		EjectBackoff:       200 * time.Millisecond,
		MaxEjectBackoff:    10 * time.Second,
		ProbeInterval:      100 * time.Millisecond,
		MinRefreshInterval: 20 * time.Millisecond,
		BatchLanes:         2,
	}
}

// Client is a kvd client. It is safe for concurrent use; Close it when
// done.
type Client struct {
	cfg Config
	hc  *http.Client
	log *slog.Logger

	route atomic.Pointer[routing]
	// refreshMu serializes map refreshes and protects refreshedAt.
	refreshMu   sync.Mutex
	refreshedAt time.Time

	// nodesMu protects nodes.
	nodesMu sync.Mutex
	nodes   map[string]*node

	// bg ends when the client closes; cancel ends it.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
	// lanesMu protects lanesClosed, set by Close, after which no
	// coalescing goroutine starts.
	lanesMu     sync.Mutex
	lanesClosed bool
	// scheme is how the nodes learned from the map are dialed.
	scheme string
}

// New returns a client that has fetched the cluster map from one of the
// endpoints.
func New(ctx context.Context, cfg Config) (*Client, error) {
	def := DefaultConfig()
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("client: %w: no endpoints", kvd.ErrInvalid)
	}
	scheme := "http"
	if cfg.TLS != nil || strings.HasPrefix(cfg.Endpoints[0], "https://") {
		scheme = "https"
	}
	for i, e := range cfg.Endpoints {
		if !strings.Contains(e, "://") {
			e = scheme + "://" + e
		}
		if _, err := url.Parse(e); err != nil {
			return nil, fmt.Errorf("client: %w: endpoint %q: %v", kvd.ErrInvalid, e, err)
		}
		cfg.Endpoints[i] = strings.TrimRight(e, "/")
	}
	if cfg.Consistency == "" {
		cfg.Consistency = def.Consistency
	}
	if _, err := kvd.ParseConsistency(string(cfg.Consistency)); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if cfg.ReadPolicy == "" {
		cfg.ReadPolicy = def.ReadPolicy
	}
	if _, err := ParsePolicy(string(cfg.ReadPolicy)); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	durs := []*time.Duration{&cfg.Timeout, &cfg.AttemptTimeout, &cfg.EjectBackoff, &cfg.MaxEjectBackoff, &cfg.ProbeInterval, &cfg.MinRefreshInterval}
	defs := []time.Duration{def.Timeout, def.AttemptTimeout, def.EjectBackoff, def.MaxEjectBackoff, def.ProbeInterval, def.MinRefreshInterval}
	for i, d := range durs {
		if *d <= 0 {
			*d = defs[i]
		}
	}
	if cfg.BatchLanes == 0 {
		cfg.BatchLanes = def.BatchLanes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: cfg.Logger, nodes: map[string]*node{}, scheme: scheme}
	c.hc = cfg.HTTPClient
	if c.hc == nil {
		c.hc = &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 512,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			DialContext:         (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     cfg.TLS,
		}}
	}
	if cfg.Token != "" {
		hc := *c.hc
		hc.Transport = tokenTransport{base: hc.Transport, header: "Bearer " + cfg.Token}
		c.hc = &hc
	}
	ictx, cancel := c.withTimeout(ctx)
	_, err := c.refresh(ictx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	bg, stop := context.WithCancel(context.Background())
	c.bg, c.cancel = bg, stop
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.runProber(bg)
	}()
	return c, nil
}

// Close stops the client's background probing and releases connections.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.lanesMu.Lock()
	c.lanesClosed = true
	c.lanesMu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

// The options of reads and writes are the kvd package's, so code written
// against kvd.KV and against the client read the same.
var (
	WithConsistency    = kvd.WithConsistency
	IfVersion          = kvd.IfVersion
	CreateOnly         = kvd.CreateOnly
	IfExists           = kvd.IfExists
	WithTTL            = kvd.WithTTL
	WithIdempotencyKey = kvd.WithIdempotencyKey
)

func (c *Client) readOpts(opts []kvd.ReadOption) kvd.ReadOptions {
	return kvd.ApplyReadOptions(c.cfg.Consistency, opts)
}

// writeHeaders renders a write's options as request headers and query.
func writeHeaders(o kvd.WriteOptions) (http.Header, string) {
	h := http.Header{}
	condHeader(h, o.Cond)
	if o.IdempotencyKey != "" {
		h.Set("Idempotency-Key", o.IdempotencyKey)
	}
	q := ""
	if o.TTL > 0 {
		q = "?ttl=" + url.QueryEscape(o.TTL.String())
	}
	return h, q
}

func condHeader(h http.Header, c kvd.Cond) {
	switch c.Kind {
	case kvd.CondVersionEq:
		if c.Version == 0 {
			h.Set("If-None-Match", "*")
		} else {
			h.Set("If-Match", `"`+strconv.FormatUint(c.Version, 10)+`"`)
		}
	case kvd.CondVersionNe:
		h.Set("If-None-Match", `"`+strconv.FormatUint(c.Version, 10)+`"`)
	case kvd.CondExists:
		h.Set("If-Match", "*")
	}
}

func keyPath(key string) string { return "/v1/kv/" + url.PathEscape(key) }

// Get reads key. A missing key is an error matching ErrNotFound.
func (c *Client) Get(ctx context.Context, key string, opts ...kvd.ReadOption) (kvd.Item, error) {
	o := c.readOpts(opts)
	var first *node
	if n := c.batchTarget(key, false, o.Consistency); n != nil {
		r, lane, err := c.coalesce(ctx, n, &pendingOp{op: api.BatchOp{Op: "get", Key: key, Consistency: string(o.Consistency)}, size: len(key)})
		switch {
		case err != nil:
			return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
		case r != nil:
			if r.Value == nil {
				r.Value = []byte{} // as a request alone answers
			}
			return kvd.Item{Key: key, Value: r.Value, Version: r.Version}, nil
		case lane != nil:
			defer c.leave(lane)
			first = lane
		}
	}
	res, err := c.do(ctx, &call{method: http.MethodGet, path: keyPath(key) + "?consistency=" + string(o.Consistency), key: key, consistency: o.Consistency, first: first})
	if err != nil {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
	}
	if res.status != http.StatusOK {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, errorFrom(res.status, res.header, res.body))
	}
	v, err := parseETag(res.header.Get("ETag"))
	if err != nil {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
	}
	return kvd.Item{Key: key, Value: res.body, Version: v}, nil
}

func parseETag(s string) (uint64, error) {
	v, err := strconv.ParseUint(strings.Trim(s, `"`), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad ETag %q: %w", s, kvd.ErrUnavailable)
	}
	return v, nil
}

// Put stores value under key and returns its new version. With an
// idempotency key, a write whose outcome is unknown is retried (the
// cluster applies it at most once) instead of reported unknown.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...kvd.WriteOption) (kvd.Version, error) {
	o := kvd.ApplyWriteOptions(opts)
	h, q := writeHeaders(o)
	h.Set("Content-Type", "application/octet-stream")
	if value == nil {
		value = []byte{}
	}
	if n := c.batchTarget(key, true, ""); n != nil && coalescible(o) {
		p := &pendingOp{op: api.BatchOp{Op: "put", Key: key, Value: value}, write: true, size: len(key) + len(value)}
		if o.TTL > 0 {
			p.op.TTL = o.TTL.String()
		}
		r, lane, err := c.coalesce(ctx, n, p)
		switch {
		case err != nil:
			return 0, fmt.Errorf("put %q: %w", key, err)
		case r != nil:
			return r.Version, nil
		case lane != nil:
			defer c.leave(lane)
		}
	}
	res, err := c.doWrite(ctx, o, &call{method: http.MethodPut, path: keyPath(key) + q, body: value, header: h, key: key, write: true})
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	if res.status != http.StatusOK {
		return 0, fmt.Errorf("put %q: %w", key, writeError(res))
	}
	var pr api.PutResponse
	if err := json.Unmarshal(res.body, &pr); err != nil {
		return 0, fmt.Errorf("put %q: decode answer: %v: %w", key, err, kvd.ErrUnknownOutcome)
	}
	return pr.Version, nil
}

// repeatPace paces the repeats of an idempotent write whose outcome is
// unknown: 20 ms, doubling, up to 320 ms.
var repeatPace = backoff.Policy{Base: 20 * time.Millisecond, Max: 320 * time.Millisecond}

// doWrite sends a write; with an idempotency key, unknown outcomes are
// retried within ctx, since a repeat cannot apply twice.
func (c *Client) doWrite(ctx context.Context, o kvd.WriteOptions, cl *call) (*result, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		res, err := c.do(ctx, cl)
		unknown := errors.Is(err, kvd.ErrUnknownOutcome) || (err == nil && outcomeUnknown(res.status))
		if o.IdempotencyKey == "" || !unknown || ctx.Err() != nil {
			return res, err
		}
		if repeatPace.Wait(ctx, attempt) != nil {
			return res, err
		}
	}
}

// Delete removes key; deleted is false if it did not exist.
func (c *Client) Delete(ctx context.Context, key string, opts ...kvd.WriteOption) (bool, error) {
	o := kvd.ApplyWriteOptions(opts)
	if o.TTL != 0 {
		return false, fmt.Errorf("delete %q: %w: a ttl is for puts", key, kvd.ErrInvalid)
	}
	if n := c.batchTarget(key, true, ""); n != nil && coalescible(o) {
		r, lane, err := c.coalesce(ctx, n, &pendingOp{op: api.BatchOp{Op: "delete", Key: key}, write: true, size: len(key)})
		switch {
		case err != nil:
			return false, fmt.Errorf("delete %q: %w", key, err)
		case r != nil:
			return r.Deleted != nil && *r.Deleted, nil
		case lane != nil:
			defer c.leave(lane)
		}
	}
	h, _ := writeHeaders(o)
	res, err := c.doWrite(ctx, o, &call{method: http.MethodDelete, path: keyPath(key), header: h, key: key, write: true})
	if err != nil {
		return false, fmt.Errorf("delete %q: %w", key, err)
	}
	if res.status != http.StatusOK {
		return false, fmt.Errorf("delete %q: %w", key, writeError(res))
	}
	var dr api.DeleteResponse
	if err := json.Unmarshal(res.body, &dr); err != nil {
		return false, fmt.Errorf("delete %q: decode answer: %v: %w", key, err, kvd.ErrUnknownOutcome)
	}
	return dr.Deleted, nil
}

// writeError turns a write's error answer into an error. A 5xx that
// leaves the outcome unknown is kvd.ErrUnknownOutcome, whatever its code
// says.
func writeError(res *result) error {
	e := errorFrom(res.status, res.header, res.body)
	if outcomeUnknown(res.status) && !errors.Is(e, kvd.ErrUnknownOutcome) {
		return fmt.Errorf("%w: %w", kvd.ErrUnknownOutcome, e)
	}
	return e
}

// outcomeUnknown reports whether a write answered with status may have
// been applied: any 5xx but 503 unavailable and 507
// insufficient_storage, which promise nothing was.
func outcomeUnknown(status int) bool {
	return status >= 500 && status != http.StatusServiceUnavailable && status != http.StatusInsufficientStorage
}

// Page is one page of a scan.
type Page = kvd.Page

// Scan returns a page of the keys selected by o, in key order, across
// every group: each group is read at the read's consistency and the pages
// are merged. o.Limit 0 means the server's default page (1000).
func (c *Client) Scan(ctx context.Context, o kvd.ScanOptions, opts ...kvd.ReadOption) (Page, error) {
	ro := c.readOpts(opts)
	limit := o.Limit
	if limit <= 0 {
		limit = kvd.DefaultLimits().DefaultScanLimit
	}
	q := url.Values{}
	for k, v := range map[string]string{"prefix": o.Prefix, "start": o.Start, "end": o.End} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", strconv.Itoa(limit))
	q.Set("consistency", string(ro.Consistency))
	var items []kvd.Item
	var next string
	var err error
	for attempt := 0; ; attempt++ {
		r := c.route.Load()
		gq := q
		if o.MaxBytes > 0 {
			// Every group reads its share, so the pages together keep to
			// it; the merged page is then cut to the cap itself.
			gq = url.Values{}
			for k, v := range q {
				gq[k] = v
			}
			gq.Set("bytes", strconv.Itoa(max(o.MaxBytes/max(len(r.order), 1), 1)))
		}
		items, next, err = kvd.ScanGroups(len(r.order), limit, max(o.MaxBytes, 0), func(i int) ([]kvd.Item, string, error) {
			return c.scanGroup(ctx, r, r.order[i].id, gq, ro.Consistency)
		})
		// A group that does not serve exactly the slots this map gives it
		// (a move is handing slots over, or the map is old): read again
		// with a fresh map.
		if err == nil || attempt >= 8 || !(errors.Is(err, kvd.ErrWrongGroup) || errors.Is(err, kvd.ErrUnavailable) && strings.Contains(err.Error(), api.SlotsInTransit)) {
			break
		}
		if scanBackoff.Wait(ctx, attempt) != nil {
			break
		}
		if _, rerr := c.refreshNow(ctx); rerr != nil {
			break
		}
	}
	if err != nil {
		return Page{}, fmt.Errorf("scan: %w", err)
	}
	return Page{Items: items, More: next != "", Next: next}, nil
}

// scanBackoff paces a scan read again while slots change hands.
var scanBackoff = backoff.Policy{Base: 20 * time.Millisecond, Max: 320 * time.Millisecond}

// scanGroup reads one group's page of a scan, naming the slots r gives
// the group (api.HeaderSlots), so that the pages of all groups cover each
// slot once.
func (c *Client) scanGroup(ctx context.Context, r *routing, g kvd.GroupID, q url.Values, consistency kvd.Consistency) ([]kvd.Item, string, error) {
	var slots kvd.SlotSet
	for s, owner := range r.slots {
		if owner == g {
			slots.Add(s)
		}
	}
	hdr := http.Header{}
	hdr.Set(api.HeaderSlots, slots.String())
	res, err := c.do(ctx, &call{method: http.MethodGet, path: "/v1/kv?" + q.Encode(), group: g, consistency: consistency, header: hdr})
	if err != nil {
		return nil, "", err
	}
	if res.status != http.StatusOK {
		return nil, "", errorFrom(res.status, res.header, res.body)
	}
	var sr api.ScanResponse
	if err := json.Unmarshal(res.body, &sr); err != nil {
		return nil, "", fmt.Errorf("decode scan page: %v: %w", err, kvd.ErrUnavailable)
	}
	items := make([]kvd.Item, 0, len(sr.Items))
	for _, it := range sr.Items {
		items = append(items, kvd.Item{Key: it.Key, Value: it.Value, Version: it.Version})
	}
	return items, sr.Next, nil
}

// Cluster fetches the current cluster map, with each group's leader, and
// refreshes the client's cached copy.
func (c *Client) Cluster(ctx context.Context) (api.Cluster, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	r, err := c.refreshNow(ctx)
	if err != nil {
		return api.Cluster{}, err
	}
	return r.raw, nil
}

// refreshNow fetches the cluster map even if the cached one is recent.
func (c *Client) refreshNow(ctx context.Context) (*routing, error) {
	c.refreshMu.Lock()
	c.refreshedAt = time.Time{}
	c.refreshMu.Unlock()
	return c.refresh(ctx)
}

// CachedMap returns the cluster map as last fetched, with the leaders the
// client knows now.
func (c *Client) CachedMap() api.Cluster {
	r := c.route.Load()
	cl := r.raw
	cl.Groups = append([]api.Group(nil), r.raw.Groups...)
	for i := range cl.Groups {
		if l := r.groups[kvd.GroupID(cl.Groups[i].ID)].leader.Load(); l != nil {
			cl.Groups[i].Leader = l.id
		}
	}
	return cl
}

// NodeStats describes the client's view of one node.
type NodeStats struct {
	ID       string
	URL      string
	Requests int64
	Failures int64
	Inflight int64
	// Batches counts the requests that carried coalesced ops (of
	// Requests).
	Batches int64
	// Latency is the moving average of the node's answer time.
	Latency time.Duration
	// Ejected is set while the node is out of rotation.
	Ejected bool
}

// Stats returns per-node request counts and health, by node id.
func (c *Client) Stats() map[string]NodeStats {
	c.nodesMu.Lock()
	defer c.nodesMu.Unlock()
	out := map[string]NodeStats{}
	now := time.Now()
	for id, n := range c.nodes {
		out[id] = NodeStats{ID: id, URL: n.url, Requests: n.requests.Load(), Failures: n.failures.Load(), Inflight: n.inflight.Load(),
			Batches: n.batches.Load(), Latency: time.Duration(n.ewma() * float64(time.Second)), Ejected: !n.healthy(now)}
	}
	return out
}

// Status fetches GET /v1/status from node id (any node if id is "").
func (c *Client) Status(ctx context.Context, id string) (api.Status, error) {
	var st api.Status
	if id == "" {
		_, err := c.admin(ctx, adminCall{method: http.MethodGet, path: "/v1/status"}, &st)
		return st, err
	}
	n := c.knownNode(id)
	if n == nil {
		return st, fmt.Errorf("status: %w: no node %q in the cluster map", kvd.ErrInvalid, id)
	}
	_, err := c.askNodes(ctx, []*node{n}, adminCall{method: http.MethodGet, path: "/v1/status"}, &st)
	return st, err
}

// NodeHealth is one node's answer to /healthz and /readyz.
type NodeHealth struct {
	ID    string
	URL   string
	Live  bool
	Ready bool
	// Err says why a node is not live or not ready.
	Err string
}

// Health asks every node of the cluster map for its liveness and
// readiness.
func (c *Client) Health(ctx context.Context) []NodeHealth {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	r := c.route.Load()
	out := make([]NodeHealth, len(r.raw.Nodes))
	var wg sync.WaitGroup
	for i, n := range r.raw.Nodes {
		nd := c.nodeFor(n.ID, n.HTTP)
		out[i] = NodeHealth{ID: n.ID, URL: nd.url}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := &out[i]
			probe := func(path string) (bool, string) {
				actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
				defer cancel()
				req, err := http.NewRequestWithContext(actx, http.MethodGet, h.URL+path, nil)
				if err != nil {
					return false, err.Error()
				}
				resp, err := c.hc.Do(req)
				if err != nil {
					return false, err.Error()
				}
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return false, errorFrom(resp.StatusCode, resp.Header, b).Message
				}
				return true, ""
			}
			h.Live, h.Err = probe("/healthz")
			if h.Live {
				h.Ready, h.Err = probe("/readyz")
			}
		}()
	}
	wg.Wait()
	return out
}

// tokenTransport adds the client's token to every request.
type tokenTransport struct {
	base   http.RoundTripper
	header string
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", t.header)
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(r)
}

// CloseIdleConnections closes the base transport's idle connections.
func (t tokenTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
