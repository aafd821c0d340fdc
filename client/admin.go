package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// adminCall is one request to a node-level endpoint: the admin API or a
// node's status.
type adminCall struct {
	method string
	path   string // escaped path and query
	// body, when not nil, is sent as JSON.
	body any
	// repeatable marks a request whose repeat is harmless, so it may be
	// sent to the next node after a failure that leaves unknown whether
	// the first one acted on it. Reads are always repeatable.
	repeatable bool
}

// changes reports whether the call may change the cluster, so that its
// outcome is unknown once it may have reached a node.
func (ac *adminCall) changes() bool {
	return ac.method != http.MethodGet && !ac.repeatable
}

// admin sends an operator's request to the first node that answers (any
// node serves the admin API, forwarding where needed) and decodes a 200
// or 202 answer into out. It returns the answer's status. Nodes go in
// this order: the leader of the lowest group (which holds the map, so
// the request needs no forwarding) when known, then the members of every
// group, then the other nodes of the map; nodes out of rotation go last.
func (c *Client) admin(ctx context.Context, ac adminCall, out any) (int, error) {
	r := c.route.Load()
	var targets, later []*node
	seen := map[*node]bool{}
	now := time.Now()
	add := func(n *node) {
		if n == nil || seen[n] {
			return
		}
		seen[n] = true
		if n.healthy(now) {
			targets = append(targets, n)
		} else {
			later = append(later, n)
		}
	}
	if len(r.order) > 0 {
		add(r.order[0].leader.Load())
	}
	for _, g := range r.order {
		for _, n := range g.members {
			add(n)
		}
	}
	for _, n := range r.raw.Nodes {
		add(c.knownNode(n.ID))
	}
	return c.askNodes(ctx, append(targets, later...), ac, out)
}

// askNodes sends a request to targets in turn until one answers, and
// decodes a 200 or 202 answer into out; it returns the answer's status.
// It moves on to the next node only when the request is sure not to have
// been acted on (it was never sent, or the node answered 503, which
// promises that), or when it is repeatable. A change that may have
// reached a node without an answer is kvd.ErrUnknownOutcome.
func (c *Client) askNodes(ctx context.Context, targets []*node, ac adminCall, out any) (int, error) {
	if c.closed.Load() {
		return 0, kvd.ErrClosed
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var body []byte
	if ac.body != nil {
		var err error
		if body, err = json.Marshal(ac.body); err != nil {
			return 0, fmt.Errorf("%s %s: %w: %v", ac.method, ac.path, kvd.ErrInvalid, err)
		}
	}
	var lastErr error
	for _, n := range targets {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, ac.method, n.url+ac.path, rd)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			if ac.changes() && !wire.NeverSent(err) {
				return 0, fmt.Errorf("%s %s via %s: no answer: %v: %w", ac.method, ac.path, n.id, err, kvd.ErrUnknownOutcome)
			}
			lastErr = fmt.Errorf("node %s: %v: %w", n.id, err, kvd.ErrUnavailable)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			if ac.changes() && resp.StatusCode != http.StatusServiceUnavailable {
				return 0, fmt.Errorf("%s %s via %s: answer cut short: %v: %w", ac.method, ac.path, n.id, err, kvd.ErrUnknownOutcome)
			}
			lastErr = fmt.Errorf("node %s: %v: %w", n.id, err, kvd.ErrUnavailable)
			continue
		}
		res := &result{status: resp.StatusCode, header: resp.Header, body: b, node: n}
		switch res.status {
		case http.StatusOK, http.StatusAccepted:
		case http.StatusServiceUnavailable:
			lastErr = errorFrom(res.status, res.header, res.body)
			continue
		default:
			if ac.changes() {
				return res.status, writeError(res)
			}
			return res.status, errorFrom(res.status, res.header, res.body)
		}
		if err := json.Unmarshal(b, out); err != nil {
			if ac.changes() {
				return res.status, fmt.Errorf("%s %s: decode answer: %v: %w", ac.method, ac.path, err, kvd.ErrUnknownOutcome)
			}
			return res.status, fmt.Errorf("%s %s: decode: %v: %w", ac.method, ac.path, err, kvd.ErrUnavailable)
		}
		return res.status, nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no node to ask: %w", kvd.ErrUnavailable)
	}
	return 0, fmt.Errorf("%s %s: %w", ac.method, ac.path, lastErr)
}

// Txns lists the transactions that hold locks or records anywhere in the
// cluster, with their state: what an operator looks at when keys stay
// locked.
func (c *Client) Txns(ctx context.Context) (api.TxnList, error) {
	var out api.TxnList
	_, err := c.admin(ctx, adminCall{method: http.MethodGet, path: "/v1/admin/txns"}, &out)
	return out, err
}

// AbortTxn aborts transaction id unless it has already committed, then
// finishes it in every group (a committed one is applied, an aborted one
// releases its locks). It answers the transaction's final state;
// kvd.ErrNotFound if no group holds anything of it.
func (c *Client) AbortTxn(ctx context.Context, id string) (api.TxnInfo, error) {
	var out api.TxnInfo
	_, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/txns/" + url.PathEscape(id) + "/abort", repeatable: true}, &out)
	return out, err
}

// AddNode adds a node to the cluster map, with the addresses it
// advertises; it holds no replica until one is added with AddMember. The
// answer's State is api.ChangeDone. Repeating an add that took effect
// answers the same. Errors: kvd.ErrConflict if the id or an address
// belongs to another node, kvd.ErrInvalid for a bad id or address,
// kvd.ErrUnknownOutcome if the request may have reached a node that did
// not answer (read the map before retrying).
func (c *Client) AddNode(ctx context.Context, n api.NodeRequest) (api.NodeChange, error) {
	var out api.NodeChange
	status, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/nodes", body: n}, &out)
	if err != nil {
		return out, fmt.Errorf("add node %q: %w", n.ID, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// RemoveNode decommissions node id: it is marked leaving, its replicas
// are moved to other nodes, and it is removed from the map once they are.
// The answer's State is api.ChangeDone once it is removed, or
// api.ChangeInProgress if it is still leaving when the node answers
// (asked to answer well before ctx's deadline); the removal then
// finishes on its own, also across crashes: follow it with Cluster.
// force is for a dead node: its replicas are rebuilt from the live ones
// instead of handed over by it. Errors:
// kvd.ErrNotFound for an unknown node, kvd.ErrConflict when the cluster
// refuses (a group would be left without a majority), and
// kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) RemoveNode(ctx context.Context, id string, force bool) (api.NodeChange, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	q := waitQuery(ctx)
	if force {
		q.Set("force", "true")
	}
	var out api.NodeChange
	status, err := c.admin(ctx, adminCall{method: http.MethodDelete, path: withQuery("/v1/admin/nodes/"+url.PathEscape(id), q)}, &out)
	if err != nil {
		return out, fmt.Errorf("remove node %q: %w", id, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// AddMember adds a replica of group on node: it joins as a learner,
// catches up (snapshot and log), then becomes a voter. The answer's State
// is api.ChangeDone once it votes, or api.ChangeInProgress if it is still
// catching up when the node answers (the node is asked to answer well
// before ctx's deadline); the change then finishes on its own. Errors:
// kvd.ErrConflict when another change to the group is in progress or
// node already hosts the group (a repeat of an add that was made
// included), kvd.ErrNotFound for an unknown group or node, and
// kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) AddMember(ctx context.Context, group uint64, node string) (api.MembershipChange, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var out api.MembershipChange
	path := withQuery(groupPath(group)+"/members", waitQuery(ctx))
	status, err := c.admin(ctx, adminCall{method: http.MethodPost, path: path, body: api.MemberRequest{Node: node}}, &out)
	if err != nil {
		return out, fmt.Errorf("add %q to group %d: %w", node, group, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// RemoveMember removes node's replica of group. The answer's State is
// api.ChangeDone, or api.ChangeInProgress if the cluster is still carrying
// it out when the node answers (asked to answer well before ctx's
// deadline); it then finishes on its own. Errors: kvd.ErrConflict when the
// removal would break the group's majority or remove its last voter, or
// another change to the group is in progress; kvd.ErrNotFound for an
// unknown group or node; kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) RemoveMember(ctx context.Context, group uint64, node string) (api.MembershipChange, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var out api.MembershipChange
	path := withQuery(groupPath(group)+"/members/"+url.PathEscape(node), waitQuery(ctx))
	status, err := c.admin(ctx, adminCall{method: http.MethodDelete, path: path}, &out)
	if err != nil {
		return out, fmt.Errorf("remove %q from group %d: %w", node, group, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// TransferLeader hands the leadership of group to its voter node; the
// answer's Leader is the group's leader after the transfer. Errors:
// kvd.ErrNotFound for an unknown group or node, kvd.ErrConflict when node
// is not a voter of the group, kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) TransferLeader(ctx context.Context, group uint64, node string) (api.MembershipChange, error) {
	var out api.MembershipChange
	status, err := c.admin(ctx, adminCall{method: http.MethodPost, path: groupPath(group) + "/leader", body: api.MemberRequest{Node: node}}, &out)
	if err != nil {
		return out, fmt.Errorf("transfer leadership of group %d to %q: %w", group, node, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

func groupPath(g uint64) string { return "/v1/admin/groups/" + strconv.FormatUint(g, 10) }

// maxWait is the longest wait a node takes.
const maxWait = time.Minute

// waitQuery bounds how long a node waits for a change to finish before
// it answers that it is in progress: three quarters of the time ctx has
// left, so the answer arrives before ctx ends (which would leave the
// outcome unknown), and at most maxWait.
func waitQuery(ctx context.Context) url.Values {
	q := url.Values{}
	if d, ok := ctx.Deadline(); ok {
		q.Set("wait", min(max(time.Until(d)*3/4, 0), maxWait).Truncate(time.Millisecond).String())
	}
	return q
}

func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// settled completes a change's answer: a 202 is in progress even if its
// body says nothing, a 200 done. A change that moved the map past the
// cached one refreshes it, so the client routes by the new one at once.
func (c *Client) settled(ctx context.Context, status int, state *string, epoch uint64) {
	if *state == "" {
		*state = api.ChangeDone
		if status == http.StatusAccepted {
			*state = api.ChangeInProgress
		}
	}
	if epoch > c.route.Load().epoch {
		c.refreshNow(ctx) // a failure keeps the old map, refreshed on the next 421
	}
}
