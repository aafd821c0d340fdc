package client

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
	"github.com/kvd-project/kvd/internal/wire"
)

// call is one logical request, routed to a group.
type call struct {
	method      string
	path        string // escaped path and query
	body        []byte
	header      http.Header
	key         string      // routes by key when group is 0
	group       kvd.GroupID // routes to this group when set
	write       bool
	consistency kvd.Consistency
	// noRoute sends the request without the routing headers (a
	// transaction may span groups; any node coordinates it).
	noRoute bool
	// first, if set, is the replica of the first attempt (the one the
	// op took a coalescing lane to).
	first *node
}

// result is a node's answer.
type result struct {
	status int
	header http.Header
	body   []byte
	node   *node
}

// maxAttempts is a safety net; calls are bounded by their deadline.
const maxAttempts = 1000

// retryPace paces the attempts of one call: 10 ms, doubling, up to 200
// ms (with jitter on an overloaded node's answer).
var retryPace = backoff.Policy{Base: 10 * time.Millisecond, Max: 200 * time.Millisecond}

// attempts is what one call has learned so far.
type attempts struct {
	// avoid holds the replicas not to try again for now.
	avoid   map[*node]bool
	lastErr error
}

// do sends cl to the right replica, following the rules in the package
// comment, until it gets an answer that settles it or ctx ends.
func (c *Client) do(ctx context.Context, cl *call) (*result, error) {
	if c.closed.Load() {
		return nil, kvd.ErrClosed
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	a := &attempts{avoid: map[*node]bool{}}
	for n := 0; n < maxAttempts; n++ {
		r := c.route.Load()
		g := r.groups[cl.group]
		if cl.group == 0 {
			g = r.groupOf(cl.key)
		}
		if g == nil {
			return nil, fmt.Errorf("%w: group %d is not in the cluster map", kvd.ErrWrongGroup, cl.group)
		}
		var target *node
		if n == 0 && cl.first != nil {
			target = cl.first
		} else if cl.write || cl.consistency == kvd.Linearizable {
			target = pickLeader(g, a.avoid)
		} else {
			target = c.pickReplica(g, a.avoid)
		}
		res, err := c.send(ctx, target, cl, g.id, r.epoch)
		if err != nil {
			if err := c.unanswered(cl, g, target, err, a); err != nil {
				return nil, err
			}
		} else if c.answered(ctx, cl, g, r.epoch, target, res, n, a) {
			return res, nil
		}
		if ctx.Err() != nil {
			break
		}
		if !anyLeft(g, a.avoid) {
			clear(a.avoid) // every healthy replica tried: start over after a pause
		}
		if n > 0 {
			_ = retryPace.Wait(ctx, n-1)
		}
		if ctx.Err() != nil {
			break
		}
	}
	lastErr := cmp.Or(a.lastErr, ctx.Err())
	if errors.Is(lastErr, kvd.ErrUnavailable) || errors.Is(lastErr, kvd.ErrWrongGroup) {
		return nil, lastErr
	}
	return nil, fmt.Errorf("%s %s: %v: %w", cl.method, cl.key, lastErr, kvd.ErrUnavailable)
}

// unanswered handles an attempt that got no answer: a write whose request
// left has an unknown outcome (returned); otherwise the node is ejected
// and the call goes on elsewhere.
func (c *Client) unanswered(cl *call, g *groupRoute, target *node, err error, a *attempts) error {
	if cl.write && !wire.NeverSent(err) {
		return fmt.Errorf("%s %s via %s: no answer: %v: %w", cl.method, cl.key, target.id, err, kvd.ErrUnknownOutcome)
	}
	target.failures.Add(1)
	target.eject(c.cfg.EjectBackoff, c.cfg.MaxEjectBackoff)
	if g.leader.Load() == target {
		g.leader.CompareAndSwap(target, nil)
	}
	a.avoid[target] = true
	a.lastErr = fmt.Errorf("node %s: %w", target.id, err)
	return nil
}

// answered handles a node's answer to attempt n and reports whether it
// settles the call; if not, the call goes on, having learned from it (a
// newer map, the leader, a replica to avoid).
func (c *Client) answered(ctx context.Context, cl *call, g *groupRoute, epoch uint64, target *node, res *result, n int, a *attempts) bool {
	if e := res.header.Get(api.HeaderEpoch); e != "" {
		if ep, perr := strconv.ParseUint(e, 10, 64); perr == nil && ep > epoch {
			c.refresh(ctx)
		}
	}
	switch {
	case res.status == http.StatusMisdirectedRequest:
		a.lastErr = errorFrom(res.status, res.header, res.body)
		if _, err := c.refresh(ctx); err != nil {
			a.lastErr = err
		}
	case res.status == http.StatusServiceUnavailable && cl.header.Get(api.HeaderSlots) != "" && strings.Contains(string(res.body), api.SlotsInTransit):
		// A scan's group serves other slots than the scan's map gives it:
		// the scan reads again with a fresh map (see Client.Scan).
		c.refresh(ctx)
		return true
	case res.status == http.StatusServiceUnavailable:
		e := errorFrom(res.status, res.header, res.body)
		a.lastErr = e
		if !cl.write && cl.consistency != kvd.Linearizable {
			a.avoid[target] = true // a lagging replica: read elsewhere
		}
		if l := c.knownNode(e.Leader); l != nil && l != target && l.healthy(time.Now()) {
			g.leader.Store(l)
			delete(a.avoid, l) // it may have refused before it won
		} else {
			if g.leader.Load() == target {
				g.leader.CompareAndSwap(target, nil)
			}
			a.avoid[target] = true
			c.refresh(ctx)
		}
	case res.status == http.StatusTooManyRequests:
		// The node shed the request before doing anything: wait, then
		// try again.
		a.lastErr = errorFrom(res.status, res.header, res.body)
		d := retryPace.Delay(max(n-1, 0))
		select {
		case <-time.After(d + time.Duration(rand.Int64N(int64(d)+1))):
		case <-ctx.Done():
		}
	case res.status >= 500 && !cl.write:
		a.lastErr = errorFrom(res.status, res.header, res.body)
		a.avoid[target] = true
	default:
		if (cl.write || cl.consistency == kvd.Linearizable) && !cl.noRoute && res.status < 500 {
			g.leader.Store(target) // it served as leader
		}
		return true
	}
	return false
}

// anyLeft reports whether g has a healthy member not yet avoided.
func anyLeft(g *groupRoute, avoid map[*node]bool) bool {
	now := time.Now()
	for _, m := range g.members {
		if !avoid[m] && m.healthy(now) {
			return true
		}
	}
	return false
}

// knownNode returns the node with id, if the client knows it.
func (c *Client) knownNode(id string) *node {
	if id == "" {
		return nil
	}
	c.nodesMu.Lock()
	defer c.nodesMu.Unlock()
	return c.nodes[id]
}

// send performs one attempt against one node. Reads are bounded by
// AttemptTimeout; writes by the call's deadline alone.
func (c *Client) send(ctx context.Context, n *node, cl *call, g kvd.GroupID, epoch uint64) (*result, error) {
	if !cl.write {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		defer cancel()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, n.url+cl.path, body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
	}
	for k, vs := range cl.header {
		req.Header[k] = vs
	}
	if !cl.noRoute {
		req.Header.Set(api.HeaderGroup, strconv.FormatUint(uint64(g), 10))
		req.Header.Set(api.HeaderEpoch, strconv.FormatUint(epoch, 10))
	}
	n.inflight.Add(1)
	n.requests.Add(1)
	start := time.Now()
	resp, err := c.hc.Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	n.inflight.Add(-1)
	if err != nil {
		n.observe(time.Since(start) * 4) // a failure weighs like a slow answer
		return nil, err
	}
	n.observe(time.Since(start))
	return &result{status: resp.StatusCode, header: resp.Header, body: b, node: n}, nil
}
