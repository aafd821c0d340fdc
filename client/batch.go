package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// Coalescing. Plain puts, deletes and gets bound for the same node share
// requests when they are many at once: up to Config.BatchLanes requests
// to a node are in flight at a time, each of one op sent as it always
// is; an op that finds every lane busy waits in the node's queue, and the
// next lane to come free takes the whole queue to the node as one
// POST /v1/batch. One client at a time pays nothing (its op finds a lane
// free); many pay one round trip for many ops, and the node proposes the
// batch's writes together.
//
// A batch is only the first attempt. An op its result does not settle
// (the node is not the leader, the group moved, the node shed it) is sent
// again on its own, through the routing and retries of a single request;
// so is every op of a batch that got no answer before it left. A write
// whose batch left and got no answer has an unknown outcome, as a single
// write's would. Conditional writes and writes with an idempotency key
// are never coalesced: a batch takes neither.

// batchBytes bounds the values of one coalesced batch (the node takes
// bodies of up to 8 MiB, JSON carries values in base64).
const batchBytes = 4 << 20

// pendingOp is an op waiting in a node's queue.
type pendingOp struct {
	op    api.BatchOp
	write bool
	size  int
	done  chan struct{}
	// Set by the lane that takes the op, under the node's bmu: taken
	// once it is in a batch; abandoned if its caller gave up first.
	taken, abandoned bool
	// Set before done is closed: the op's result from the node, or retry
	// (send it alone), or err (a write whose outcome is unknown).
	res   api.BatchResult
	node  string
	retry bool
	err   error
}

// coalescible reports whether a write with o may share a batch.
func coalescible(o kvd.WriteOptions) bool {
	return o.Cond == (kvd.Cond{}) && o.IdempotencyKey == "" && o.IdempotencyScope == ""
}

// batchTarget returns the node an op on key would be sent to first, or
// nil when coalescing is off or the route is not known well enough (the
// op then goes alone, and its answer teaches the client the route).
func (c *Client) batchTarget(key string, write bool, cons kvd.Consistency) *node {
	if c.cfg.BatchLanes < 0 || c.closed.Load() || !utf8.ValidString(key) {
		// A batch carries keys in JSON, which would turn bytes that are
		// not UTF-8 into U+FFFD: another key. Alone, the key travels in
		// the path as it is, and the node refuses it.
		return nil
	}
	r := c.route.Load()
	g := r.groupOf(key)
	if g == nil {
		return nil
	}
	n := g.leader.Load()
	if write || cons == kvd.Linearizable {
		if n == nil || !n.healthy(time.Now()) {
			return nil
		}
	} else {
		n = c.pickReplica(g, nil)
	}
	if n.noBatch.Load() {
		return nil
	}
	return n
}

// enter takes a lane to n for an op sent alone (true), or queues p to go
// in the next batch (false). A caller given a lane must call leave.
func (c *Client) enter(n *node, p *pendingOp) bool {
	n.bmu.Lock()
	defer n.bmu.Unlock()
	if n.lanes < c.cfg.BatchLanes && len(n.queue) == 0 {
		n.lanes++
		return true
	}
	p.done = make(chan struct{})
	n.queue = append(n.queue, p)
	if n.lanes < c.cfg.BatchLanes {
		n.lanes++
		c.startLane(n)
	}
	return false
}

// leave gives back a lane taken by enter; the lane goes on with the
// queue if ops wait in it.
func (c *Client) leave(n *node) {
	n.bmu.Lock()
	defer n.bmu.Unlock()
	if len(n.queue) > 0 {
		c.startLane(n) // the lane passes to the goroutine
		return
	}
	n.lanes--
}

// startLane starts a goroutine that sends n's queue in batches until it
// is empty. The caller holds n.bmu and has counted the lane.
func (c *Client) startLane(n *node) {
	c.lanesMu.Lock()
	defer c.lanesMu.Unlock()
	if c.lanesClosed {
		for _, p := range n.queue {
			p.err = kvd.ErrClosed
			close(p.done)
		}
		n.queue = nil
		n.lanes--
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.runLane(n)
	}()
}

// runLane sends n's queued ops in batches until none wait.
func (c *Client) runLane(n *node) {
	for {
		n.bmu.Lock()
		var batch []*pendingOp
		size := 0
		for len(n.queue) > 0 && len(batch) < api.MaxBatchOps {
			p := n.queue[0]
			if !p.abandoned {
				if len(batch) > 0 && size+p.size > batchBytes {
					break
				}
				p.taken = true
				batch = append(batch, p)
				size += p.size
			}
			n.queue[0] = nil
			n.queue = n.queue[1:]
		}
		if len(batch) == 0 {
			n.queue = nil
			n.lanes--
			n.bmu.Unlock()
			return
		}
		n.bmu.Unlock()
		c.sendBatch(n, batch)
		for _, p := range batch {
			close(p.done)
		}
	}
}

// sendBatch sends batch to n and settles each op: with its result, as to
// be sent again alone, or as of unknown outcome.
func (c *Client) sendBatch(n *node, batch []*pendingOp) {
	retryAll := func() {
		for _, p := range batch {
			p.retry = true
		}
	}
	if len(batch) == 1 || c.closed.Load() {
		retryAll() // alone, it goes as it always does
		return
	}
	req := api.BatchRequest{Ops: make([]api.BatchOp, len(batch))}
	for i, p := range batch {
		req.Ops[i] = p.op
	}
	body, err := json.Marshal(req)
	if err != nil {
		retryAll()
		return
	}
	ctx, cancel := context.WithTimeout(c.bg, c.cfg.Timeout)
	defer cancel()
	n.batches.Add(1)
	res, err := c.send(ctx, n, &call{method: http.MethodPost, path: "/v1/batch", body: body,
		header: http.Header{"Content-Type": {"application/json"}}, write: true, noRoute: true}, 0, 0)
	var out api.BatchResponse
	switch {
	case err != nil && wire.NeverSent(err):
		retryAll()
		return
	case err == nil && res.status == http.StatusOK && json.Unmarshal(res.body, &out) == nil && len(out.Results) == len(batch):
	case err == nil && res.status != http.StatusOK && !outcomeUnknown(res.status):
		// Refused whole before any op ran (shed, a bad request, no
		// token): each op alone gets its own answer. A node that knows
		// no batches (an older kvd, during an upgrade) gets no more.
		if res.status == http.StatusNotFound || res.status == http.StatusMethodNotAllowed {
			n.noBatch.Store(true)
		}
		retryAll()
		return
	default:
		why := fmt.Sprintf("batch via %s: no answer", n.id)
		if err == nil {
			why = fmt.Sprintf("batch via %s: answered %d", n.id, res.status)
		} else {
			why += ": " + err.Error()
		}
		for _, p := range batch {
			if p.write {
				p.err = fmt.Errorf("%s: %w", why, kvd.ErrUnknownOutcome)
			} else {
				p.retry = true
			}
		}
		return
	}
	for i, p := range batch {
		r := out.Results[i]
		p.res, p.node = r, res.header.Get(api.HeaderNode)
		switch {
		case r.Status == http.StatusMisdirectedRequest || r.Status == http.StatusTooManyRequests || r.Status == http.StatusServiceUnavailable:
			p.retry = true // the single path learns the route and paces
		case r.Status >= 500 && !p.write:
			p.retry = true
		}
	}
}

// coalesce offers p, bound for n, to a batch. It returns the op's
// successful result from its batch (r), or its error (the batch's own
// error, or the op's error result as its request alone would have had
// it); or a lane to n on which the caller sends the op alone, and must
// then leave; or neither, when the op is to be sent alone anyway.
func (c *Client) coalesce(ctx context.Context, n *node, p *pendingOp) (r *api.BatchResult, lane *node, err error) {
	if c.enter(n, p) {
		return nil, n, nil
	}
	ok, err := c.await(ctx, n, p)
	switch {
	case err != nil:
		return nil, nil, err
	case !ok:
		return nil, nil, nil
	case p.res.Status != http.StatusOK:
		return nil, nil, p.resultError()
	}
	return &p.res, nil, nil
}

// await waits for p's batch. It reports false when p is to be sent alone
// (err nil), or when ctx ended first (err says so: for a write that may
// have left, its outcome is unknown).
func (c *Client) await(ctx context.Context, n *node, p *pendingOp) (bool, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	select {
	case <-p.done:
		if p.err != nil {
			return false, p.err
		}
		return !p.retry, nil
	case <-ctx.Done():
	}
	n.bmu.Lock()
	taken := p.taken
	p.abandoned = true
	n.bmu.Unlock()
	if taken && p.write {
		return false, fmt.Errorf("%v while its batch was sent: %w", ctx.Err(), kvd.ErrUnknownOutcome)
	}
	return false, ctx.Err()
}

// resultError turns a settled op's error result into the error its
// request alone would have returned.
func (p *pendingOp) resultError() error {
	e := &Error{Status: p.res.Status, Code: api.CodeOfStatus(p.res.Status), Message: http.StatusText(p.res.Status), Node: p.node}
	if d := p.res.Error; d != nil && d.Code != "" {
		e.Code, e.Message, e.Leader = d.Code, d.Message, d.Leader
	}
	if p.write && outcomeUnknown(p.res.Status) {
		return fmt.Errorf("%w: %w", kvd.ErrUnknownOutcome, e)
	}
	return e
}
