package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
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
	// named marks a repeatable change: one that carries an id, so that
	// a repeat changes nothing more. It is sent on to the next node as a
	// repeatable request is, but its outcome is unknown after a failure
	// as a change's is.
	named bool
}

// changes reports whether the call may change the cluster, so that its
// outcome is unknown once it may have reached a node.
func (ac *adminCall) changes() bool {
	return ac.method != http.MethodGet && (!ac.repeatable || ac.named)
}

// admin sends an operator's request to the first node that answers (any
// node serves the admin API, forwarding where needed) and decodes a 200
// or 202 answer into out. It returns the answer's status. Nodes go in
// this order: the leader of the lowest group (which holds the map, so
// the request needs no forwarding) when known, then the members of every
// group, then the other nodes of the map; nodes out of rotation go last.
func (c *Client) admin(ctx context.Context, ac adminCall, out any) (int, error) {
	return c.askNodes(ctx, c.adminNodes(), ac, out)
}

// adminNodes lists the nodes to send an admin request to, in the order
// admin tries them.
func (c *Client) adminNodes() []*node {
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
	return append(targets, later...)
}

// askNodes sends a request to targets in turn until one answers, and
// decodes a 200 or 202 answer into out; it returns the answer's status.
// It moves on to the next node only when the request is sure not to have
// been acted on (it was never sent, or the node answered 503, which
// promises that), or when it is repeatable. A change that may have
// reached a node without an answer is kvd.ErrUnknownOutcome; so is a
// named change that every node failed to answer once one may have
// acted on it.
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
	// acted: a named change may have reached a node that did not answer.
	acted := false
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
				if !ac.repeatable {
					return 0, fmt.Errorf("%s %s via %s: no answer: %v: %w", ac.method, ac.path, n.id, err, kvd.ErrUnknownOutcome)
				}
				acted = true
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
				if !ac.repeatable {
					return 0, fmt.Errorf("%s %s via %s: answer cut short: %v: %w", ac.method, ac.path, n.id, err, kvd.ErrUnknownOutcome)
				}
				acted = true
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
	if acted {
		return 0, fmt.Errorf("%s %s: a node may have acted on it without answering; then %v: %w", ac.method, ac.path, lastErr, kvd.ErrUnknownOutcome)
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

// CreateGroup creates a replica group on req.Members (the first is its
// preferred leader), or, when it names none, on the least loaded nodes
// the cluster chooses. It owns no slot until a move gives it some
// (StartMove, Rebalance). The answer's State is api.ChangeDone once the
// group has a leader, or api.ChangeInProgress if it is still being
// started when the node answers (asked to answer well before ctx's
// deadline); it then finishes on its own. With req.ID set, a repeat of a
// create that was made changes nothing, so the request is sent on to the
// next node when one fails to answer. Errors: kvd.ErrConflict when the
// id is taken by another group or the members cannot take it,
// kvd.ErrNotFound for an unknown node, kvd.ErrInvalid for a bad request,
// kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) CreateGroup(ctx context.Context, req api.GroupRequest) (api.GroupChange, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var out api.GroupChange
	path := withQuery("/v1/admin/groups", waitQuery(ctx))
	status, err := c.admin(ctx, adminCall{method: http.MethodPost, path: path, body: req, repeatable: req.ID != 0, named: req.ID != 0}, &out)
	if err != nil {
		if req.ID != 0 {
			return out, fmt.Errorf("create group %d: %w", req.ID, err)
		}
		return out, fmt.Errorf("create group: %w", err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// DeleteGroup removes group, which must own no slot and take part in no
// move: move its slots away first (StartMove). Its replicas are removed
// from their nodes. The answer's State is api.ChangeDone, or
// api.ChangeInProgress if the removal is still going on when the node
// answers; it then finishes on its own. Errors: kvd.ErrConflict when the
// group owns slots or takes part in a move, kvd.ErrNotFound for an
// unknown group, kvd.ErrUnknownOutcome as for AddNode.
func (c *Client) DeleteGroup(ctx context.Context, group uint64) (api.GroupChange, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var out api.GroupChange
	path := withQuery(groupPath(group), waitQuery(ctx))
	status, err := c.admin(ctx, adminCall{method: http.MethodDelete, path: path}, &out)
	if err != nil {
		return out, fmt.Errorf("delete group %d: %w", group, err)
	}
	c.settled(ctx, status, &out.State, out.Epoch)
	return out, nil
}

// StartMove starts moving the slots of req.Slots (inclusive ranges of
// 0..kvd.SlotCount-1) to group req.To; the slots keep being served while
// they move. It answers once the move is recorded, not once it is done:
// follow it with Moves or WaitMove. Slots owned by several groups make
// one move per group: the answer's IDs lists them all.
//
// A request without an ID is given a random one, so that a repeat starts
// nothing twice: the request is sent on to the next node when one fails
// to answer. On an error the answer's ID is still the move's id, to look
// it up with Moves or to repeat the request with. Errors: kvd.ErrInvalid
// for an empty or out-of-range slot range, kvd.ErrNotFound for an
// unknown group, kvd.ErrConflict when a slot is already moving or
// already belongs to req.To, kvd.ErrUnknownOutcome if the request may
// have reached a node that did not answer (look at Moves before
// repeating it with the same ID).
func (c *Client) StartMove(ctx context.Context, req api.MoveRequest) (api.MoveStarted, error) {
	if req.ID == "" {
		req.ID = newMoveID()
	}
	var out api.MoveStarted
	_, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/moves", body: req, repeatable: true, named: true}, &out)
	if err != nil {
		return api.MoveStarted{ID: req.ID}, fmt.Errorf("move %s of slots %s to group %d: %w", req.ID, slotRanges(req.Slots), req.To, err)
	}
	if out.ID == "" {
		out.ID = req.ID
	}
	if len(out.IDs) == 0 {
		out.IDs = []string{out.ID}
	}
	c.newerMap(ctx, out.Epoch)
	return out, nil
}

// newMoveID returns a fresh random move id.
func newMoveID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}

// slotRanges writes inclusive slot ranges: "0-99,200,300-310".
func slotRanges(rs [][2]int) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(r[0]))
		if r[1] != r[0] {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(r[1]))
		}
	}
	return b.String()
}

// Moves lists the slot moves the cluster map holds: those under way or
// waiting (pending), and the last ones that finished (done or failed).
// The progress of a move under way is its driver's, when it answers.
func (c *Client) Moves(ctx context.Context) (api.MoveList, error) {
	var out api.MoveList
	if _, err := c.admin(ctx, adminCall{method: http.MethodGet, path: "/v1/admin/moves"}, &out); err != nil {
		return out, fmt.Errorf("list moves: %w", err)
	}
	return out, nil
}

// The states in which a move has ended (api.MoveInfo.State).
const (
	moveDone   = "done"
	moveFailed = "failed"
)

// movePoll is how often WaitMove looks at the moves.
const movePoll = 200 * time.Millisecond

// moveForgotten is how long WaitMove waits for a move missing from the
// list to appear (a node's map may lag behind the one that recorded it)
// before it reports the move unknown.
const moveForgotten = 2 * time.Second

// WaitMove polls Moves every 200 ms until move id is done or failed, and
// answers it as last listed. A failed move (its slots stay where they
// were) is an error matching kvd.ErrConflict that carries the move's
// error. When ctx ends first, the error wraps ctx's, and the answer is
// the move as last seen: the move goes on. kvd.ErrNotFound if the move
// stays unlisted for 2 s (an unknown id, or one that finished long ago:
// the map remembers the last few finished moves). Failures to list the moves
// that promise nothing (kvd.ErrUnavailable) are retried until ctx ends.
func (c *Client) WaitMove(ctx context.Context, id string) (api.MoveInfo, error) {
	var last api.MoveInfo
	var lastErr error
	var missing time.Time // since when the move is not listed
	t := time.NewTicker(movePoll)
	defer t.Stop()
	for {
		list, err := c.Moves(ctx)
		switch {
		case err == nil:
			lastErr = nil
			i := slices.IndexFunc(list.Moves, func(mv api.MoveInfo) bool { return mv.ID == id })
			if i < 0 {
				if missing.IsZero() {
					missing = time.Now()
				}
				if time.Since(missing) >= moveForgotten {
					return last, fmt.Errorf("move %s: not listed (map epoch %d): %w", id, list.Epoch, kvd.ErrNotFound)
				}
				break
			}
			missing = time.Time{}
			last = list.Moves[i]
			switch last.State {
			case moveDone:
				return last, nil
			case moveFailed:
				return last, fmt.Errorf("move %s of slots %s from group %d to group %d failed: %s: %w",
					id, slotRanges(last.Slots), last.From, last.To, orUnknown(last.Error), kvd.ErrConflict)
			}
		case errors.Is(err, kvd.ErrUnavailable) && ctx.Err() == nil:
			lastErr = err
		default:
			if ctx.Err() != nil {
				break
			}
			return last, fmt.Errorf("wait for move %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			state := last.State
			if state == "" {
				state = "not listed yet"
			}
			if lastErr != nil {
				return last, fmt.Errorf("wait for move %s: still %s (%v): %w", id, state, lastErr, ctx.Err())
			}
			return last, fmt.Errorf("wait for move %s: still %s: %w", id, state, ctx.Err())
		case <-t.C:
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// Rebalance plans moves of slots that even out the groups' data, and
// unless dryRun starts them (each group takes part in one move at a
// time: the others wait as pending; follow them with Moves). The answer
// is the load before and after the plan, and its moves. A dry run
// changes nothing, so it is sent on to the next node when one fails to
// answer. Errors: kvd.ErrUnknownOutcome as for AddNode (look at Moves
// before repeating a rebalance).
func (c *Client) Rebalance(ctx context.Context, dryRun bool) (api.RebalancePlan, error) {
	var out api.RebalancePlan
	_, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/rebalance", body: api.RebalanceRequest{DryRun: dryRun}, repeatable: dryRun}, &out)
	if err != nil {
		return out, fmt.Errorf("rebalance: %w", err)
	}
	c.newerMap(ctx, out.Epoch)
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
	c.newerMap(ctx, epoch)
}

// newerMap refreshes the cached map when a change moved the map past it,
// so the client routes by the new one at once.
func (c *Client) newerMap(ctx context.Context, epoch uint64) {
	if epoch > c.route.Load().epoch {
		c.refreshNow(ctx) // a failure keeps the old map, refreshed on the next 421
	}
}
