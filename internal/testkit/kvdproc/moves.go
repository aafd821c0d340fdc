package kvdproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Helpers for slot moves and failpoints: what tests of moves and the
// move nemesis share.

// SetFailpoint arms failpoint name on node i with action ("crash",
// "crash-once" or "pause=DURATION"), or disarms it when action is "".
// The node's binary must be built with the failpoints tag (see
// BuildWith); a node restarted since has none armed.
func (c *Cluster) SetFailpoint(ctx context.Context, i int, name, action string) error {
	method := http.MethodPut
	if action == "" {
		method = http.MethodDelete
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.Nodes[i].URL()+"/debug/failpoints/"+name, strings.NewReader(action))
	if err != nil {
		return err
	}
	resp, err := c.calls.Do(req)
	if err != nil {
		return fmt.Errorf("%s failpoint %s on %s: %w", method, name, c.Nodes[i].ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s failpoint %s on %s: %s %s", method, name, c.Nodes[i].ID, resp.Status, b)
	}
	return nil
}

// SetFailpointEverywhere is SetFailpoint on every running node; it
// returns the first error and goes on with the other nodes.
func (c *Cluster) SetFailpointEverywhere(ctx context.Context, name, action string) error {
	var first error
	for i, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if err := c.SetFailpoint(ctx, i, name, action); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Moves asks node i for the slot moves (GET /v1/admin/moves; the node
// forwards it to the system group's leader).
func (c *Cluster) Moves(ctx context.Context, i int) (api.MoveList, error) {
	var l api.MoveList
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	status, b, err := c.Call(ctx, i, http.MethodGet, "/v1/admin/moves", nil)
	if err != nil {
		return l, err
	}
	if status != http.StatusOK {
		return l, fmt.Errorf("GET /v1/admin/moves from %s: %d %s", c.Nodes[i].ID, status, b)
	}
	return l, json.Unmarshal(b, &l)
}

// WaitMoves polls the moves through every running node in turn until
// cond accepts the list (returns nil), and returns that list. When ctx
// ends first it returns the last list read and an error that says what
// cond last found wrong.
func (c *Cluster) WaitMoves(ctx context.Context, cond func(api.MoveList) error) (api.MoveList, error) {
	var last api.MoveList
	why := errors.New("no running node answered with the moves")
	for {
		for i, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			l, err := c.Moves(ctx, i)
			if err != nil {
				continue
			}
			last = l
			if why = cond(l); why == nil {
				return l, nil
			}
			break // one answer a round: the list is the system leader's
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("%w: %v", ctx.Err(), why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FindMove returns the move called id in l.
func FindMove(l api.MoveList, id string) (api.MoveInfo, bool) {
	for _, mv := range l.Moves {
		if mv.ID == id {
			return mv, true
		}
	}
	return api.MoveInfo{}, false
}

// MoveFinished says whether a move's state is final (done or failed).
func MoveFinished(state string) bool { return state == kvd.MoveDone || state == kvd.MoveFailed }

// MovesIdle says why l still has a move under way or waiting, or nil.
func MovesIdle(l api.MoveList) error {
	for _, mv := range l.Moves {
		if !MoveFinished(mv.State) {
			return fmt.Errorf("move %s (slots %v, group %d to %d) is %s, attempt %d", mv.ID, mv.Slots, mv.From, mv.To, mv.State, mv.Attempt)
		}
	}
	return nil
}

// SlotOwnership says why the map cl does not give every slot to exactly
// one group, or nil.
func SlotOwnership(cl api.Cluster) error {
	var owner [kvd.SlotCount]uint64
	for _, g := range cl.Groups {
		for _, r := range g.Slots {
			if r[0] < 0 || r[1] >= kvd.SlotCount || r[0] > r[1] {
				return fmt.Errorf("group %d owns the slot range %v", g.ID, r)
			}
			for sl := r[0]; sl <= r[1]; sl++ {
				if owner[sl] != 0 {
					return fmt.Errorf("slot %d is owned by groups %d and %d (epoch %d)", sl, owner[sl], g.ID, cl.Epoch)
				}
				owner[sl] = g.ID
			}
		}
	}
	for sl, g := range owner {
		if g == 0 {
			return fmt.Errorf("slot %d is owned by no group (epoch %d)", sl, cl.Epoch)
		}
	}
	return nil
}
