package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
)

// Policy chooses which replica serves a follower or stale read.
type Policy string

// The read-balancing policies.
const (
	// PowerOfTwo picks two healthy replicas at random and sends the read
	// to the one with the lower load: in-flight requests times a moving
	// average of its latency. A slow or busy replica gets less traffic.
	PowerOfTwo Policy = "p2c"
	// Random picks uniformly among healthy replicas.
	Random Policy = "random"
	// RoundRobin cycles over healthy replicas.
	RoundRobin Policy = "round-robin"
)

// ParsePolicy parses a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case PowerOfTwo, Random, RoundRobin:
		return Policy(s), nil
	case "":
		return PowerOfTwo, nil
	}
	return "", fmt.Errorf("%w: read policy must be p2c, random or round-robin, not %q", kvd.ErrInvalid, s)
}

// node is what the client knows of one kvd node. It outlives map
// refreshes, so its health and load statistics do too.
type node struct {
	id  string
	url string

	inflight atomic.Int64
	ewmaBits atomic.Uint64 // latency moving average, seconds, as float64 bits
	lastObs  atomic.Int64  // when ewmaBits was last updated, Unix nanoseconds
	requests atomic.Int64
	failures atomic.Int64

	// mu protects the ejection state.
	mu           sync.Mutex
	ejectedUntil time.Time
	strikes      int

	// bmu protects the coalescing state (see batch.go): the lanes in
	// use and the ops waiting for one.
	bmu     sync.Mutex
	lanes   int
	queue   []*pendingOp
	batches atomic.Int64
	// noBatch is set once the node answered a batch with 404 or 405.
	noBatch atomic.Bool
}

const (
	ewmaAlpha = 0.3
	// ewmaDecay is how fast a replica's latency estimate fades while it
	// gets no traffic, so a replica that was slow once is tried again
	// rather than starved forever.
	ewmaDecay = 500 * time.Millisecond
)

// ewma returns the latency estimate, decayed by the time since the last
// observation.
func (n *node) ewma() float64 {
	v := math.Float64frombits(n.ewmaBits.Load())
	if v == 0 {
		return 0.001
	}
	if idle := time.Since(time.Unix(0, n.lastObs.Load())); idle > 0 {
		v *= math.Exp(-float64(idle) / float64(ewmaDecay))
	}
	return max(v, 1e-6)
}

func (n *node) observe(d time.Duration) {
	for {
		old := n.ewmaBits.Load()
		prev := math.Float64frombits(old)
		next := d.Seconds()
		if prev != 0 {
			next = ewmaAlpha*d.Seconds() + (1-ewmaAlpha)*prev
		}
		if n.ewmaBits.CompareAndSwap(old, math.Float64bits(next)) {
			n.lastObs.Store(time.Now().UnixNano())
			return
		}
	}
}

// load is the p2c score: expected wait if sent now.
func (n *node) load() float64 { return float64(n.inflight.Load()+1) * n.ewma() }

// healthy reports whether the node is not ejected.
func (n *node) healthy(now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !now.Before(n.ejectedUntil)
}

// eject takes the node out of rotation with exponential backoff.
func (n *node) eject(base, maxBackoff time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.strikes++
	d := backoff.Policy{Base: base, Max: maxBackoff}.Delay(n.strikes - 1)
	n.ejectedUntil = time.Now().Add(d)
}

// restore puts the node back in rotation.
func (n *node) restore() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.strikes = 0
	n.ejectedUntil = time.Time{}
}

func (n *node) ejected() (bool, time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.strikes > 0, n.ejectedUntil
}

// groupRoute is one group of the cached map.
type groupRoute struct {
	id      kvd.GroupID
	members []*node
	leader  atomic.Pointer[node] // nil while unknown
	rr      atomic.Uint64
}

// routing is an immutable snapshot of the cluster map.
type routing struct {
	epoch  uint64
	slots  [kvd.SlotCount]kvd.GroupID
	groups map[kvd.GroupID]*groupRoute
	order  []*groupRoute // by group id
	raw    api.Cluster
}

func (r *routing) groupOf(key string) *groupRoute {
	return r.groups[r.slots[kvd.Slot(key)]]
}

// nodeFor returns (creating it if new) the client's record of a node.
func (c *Client) nodeFor(id, addr string) *node {
	c.nodesMu.Lock()
	defer c.nodesMu.Unlock()
	url := cmp.Or(c.scheme, "http") + "://" + addr
	if o, ok := c.cfg.NodeURLs[id]; ok {
		url = strings.TrimRight(o, "/")
	}
	n := c.nodes[id]
	if n == nil || n.url != url {
		n = &node{id: id, url: url}
		c.nodes[id] = n
	}
	return n
}

// build turns a /v1/cluster answer into a routing snapshot.
func (c *Client) build(cl api.Cluster) (*routing, error) {
	r := &routing{epoch: cl.Epoch, groups: map[kvd.GroupID]*groupRoute{}, raw: cl}
	nodes := map[string]*node{}
	for _, n := range cl.Nodes {
		nodes[n.ID] = c.nodeFor(n.ID, n.HTTP)
	}
	for _, g := range cl.Groups {
		gr := &groupRoute{id: kvd.GroupID(g.ID)}
		for _, m := range g.Members {
			n, ok := nodes[m]
			if !ok {
				return nil, fmt.Errorf("cluster map: group %d member %q is not a node", g.ID, m)
			}
			gr.members = append(gr.members, n)
		}
		if len(gr.members) == 0 {
			return nil, fmt.Errorf("cluster map: group %d has no members", g.ID)
		}
		if l, ok := nodes[g.Leader]; ok {
			gr.leader.Store(l)
		}
		for _, s := range g.Slots {
			if s[0] < 0 || s[1] >= kvd.SlotCount || s[0] > s[1] {
				return nil, fmt.Errorf("cluster map: group %d has a bad slot range %v", g.ID, s)
			}
			for i := s[0]; i <= s[1]; i++ {
				r.slots[i] = gr.id
			}
		}
		r.groups[gr.id] = gr
		r.order = append(r.order, gr)
	}
	for s, g := range r.slots {
		if g == 0 {
			return nil, fmt.Errorf("cluster map: slot %d has no group", s)
		}
	}
	return r, nil
}

// refresh fetches the cluster map from the first node that answers,
// trying known healthy nodes first, then the seeds. Concurrent callers
// share one fetch, and a map fetched within minRefresh is reused.
func (c *Client) refresh(ctx context.Context) (*routing, error) {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	if r := c.route.Load(); r != nil && time.Since(c.refreshedAt) < c.cfg.MinRefreshInterval {
		return r, nil
	}
	var urls []string
	seen := map[string]bool{}
	add := func(u string) {
		if !seen[u] {
			seen[u] = true
			urls = append(urls, u)
		}
	}
	now := time.Now()
	if r := c.route.Load(); r != nil {
		for _, g := range r.order {
			if l := g.leader.Load(); l != nil && l.healthy(now) {
				add(l.url)
			}
		}
		for _, g := range r.order {
			for _, m := range g.members {
				if m.healthy(now) {
					add(m.url)
				}
			}
		}
	}
	for _, s := range c.cfg.Endpoints {
		add(s)
	}
	var lastErr error
	for _, u := range urls {
		cl, err := c.fetchCluster(ctx, u)
		if errors.Is(err, kvd.ErrUnauthenticated) || errors.Is(err, kvd.ErrForbidden) {
			// Every node would say the same of the token: asking them all
			// only spends the address's allowance of failed attempts.
			return nil, fmt.Errorf("fetch cluster map: %w", err)
		}
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		r, err := c.build(cl)
		if err != nil {
			lastErr = err
			continue
		}
		if old := c.route.Load(); old != nil && old.epoch > r.epoch {
			lastErr = fmt.Errorf("%s serves an older map (epoch %d < %d)", u, r.epoch, old.epoch)
			continue
		}
		c.route.Store(r)
		c.refreshedAt = time.Now()
		return r, nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no endpoints")
	}
	if errors.Is(lastErr, kvd.ErrUnauthenticated) || errors.Is(lastErr, kvd.ErrForbidden) {
		return nil, fmt.Errorf("fetch cluster map: %w", lastErr) // trying again will not help
	}
	return nil, fmt.Errorf("fetch cluster map: %w: %w", lastErr, kvd.ErrUnavailable)
}

func (c *Client) fetchCluster(ctx context.Context, base string) (api.Cluster, error) {
	var cl api.Cluster
	ctx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/cluster", nil)
	if err != nil {
		return cl, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return cl, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return cl, fmt.Errorf("%s/v1/cluster: %w", base, errorFrom(resp.StatusCode, resp.Header, body))
	}
	if err := json.NewDecoder(resp.Body).Decode(&cl); err != nil {
		return cl, fmt.Errorf("%s/v1/cluster: %w", base, err)
	}
	return cl, nil
}

// pickLeader returns the group's leader, or, while none is known, its
// first healthy member (which will name the leader if it is not).
func pickLeader(g *groupRoute, avoid map[*node]bool) *node {
	if l := g.leader.Load(); l != nil && !avoid[l] {
		return l
	}
	now := time.Now()
	for _, m := range g.members {
		if !avoid[m] && m.healthy(now) {
			return m
		}
	}
	for _, m := range g.members {
		if !avoid[m] {
			return m
		}
	}
	return g.members[0]
}

// pickReplica chooses a replica for a follower or stale read.
func (c *Client) pickReplica(g *groupRoute, avoid map[*node]bool) *node {
	now := time.Now()
	cands := make([]*node, 0, len(g.members))
	for _, m := range g.members {
		if !avoid[m] && m.healthy(now) {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		// Every replica is ejected or was tried: try the ones not tried,
		// then any.
		for _, m := range g.members {
			if !avoid[m] {
				cands = append(cands, m)
			}
		}
		if len(cands) == 0 {
			cands = g.members
		}
	}
	switch c.cfg.ReadPolicy {
	case Random:
		return cands[rand.IntN(len(cands))]
	case RoundRobin:
		return cands[int(g.rr.Add(1)%uint64(len(cands)))]
	}
	if len(cands) == 1 {
		return cands[0]
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	a, b := cands[i], cands[j]
	if b.load() < a.load() {
		return b
	}
	return a
}

// runProber probes ejected nodes once their backoff has passed and puts
// those that answer /healthz back in rotation. It runs until ctx ends.
func (c *Client) runProber(ctx context.Context) {
	t := time.NewTicker(c.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.nodesMu.Lock()
		var due []*node
		now := time.Now()
		for _, n := range c.nodes {
			if ej, until := n.ejected(); ej && !now.Before(until) {
				due = append(due, n)
			}
		}
		c.nodesMu.Unlock()
		for _, n := range due {
			pctx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			ok := c.probe(pctx, n)
			cancel()
			if ok {
				n.restore()
			} else {
				n.eject(c.cfg.EjectBackoff, c.cfg.MaxEjectBackoff)
			}
		}
	}
}

func (c *Client) probe(ctx context.Context, n *node) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
