package txn

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// errSlotMoving means a group refused a transaction for now, applying
// nothing: a key's slot is moving between groups (or has moved since the
// transaction was planned), or the group is paused (a backup taking its
// cut, a restore loading). Do tries again with the current map.
var errSlotMoving = fmt.Errorf("transaction not committed: a group refused it for now (a key's slot moving between groups, or a backup or restore pausing the group): %w", kvd.ErrUnavailable)

// refused turns no votes into the error the client sees.
func (c *Coordinator) refused(outs []*store.TxnOutcome) (Response, error) {
	var failed []int
	conflict := ""
	for _, o := range outs {
		if o == nil || o.Vote {
			continue
		}
		switch o.Code {
		case store.CodeCompareFailed:
			failed = append(failed, o.Failed...)
		case store.CodeNotANumber:
			return Response{}, fmt.Errorf("transaction not committed: an add met a value that is not a 64-bit integer, or overflowed: %w", kvd.ErrNotANumber)
		case store.CodeIdempotencyMismatch:
			return Response{}, fmt.Errorf("transaction not run: %w", kvd.ErrIdempotencyMismatch)
		case store.CodeInvalid:
			return Response{}, fmt.Errorf("transaction not run: the store refused it as invalid: %w", kvd.ErrInvalid)
		case store.CodeMoving:
			return Response{}, errSlotMoving

		case store.CodeConflict:
			if len(o.Conflicts) > 0 {
				conflict = o.Conflicts[0].Txn
			}
		}
	}
	if len(failed) > 0 {
		sort.Ints(failed)
		return compareFailed(failed)
	}
	if conflict != "" {
		return Response{}, fmt.Errorf("transaction not committed: a key is locked by transaction %s: %w", conflict, kvd.ErrConflict)
	}
	return Response{}, fmt.Errorf("transaction not committed: aborted: %w", kvd.ErrConflict)
}

// compareFailed is the answer to a transaction that did not commit
// because the compares at indexes failed did not hold.
func compareFailed(failed []int) (Response, error) {
	return Response{Failed: failed}, fmt.Errorf("transaction not committed: compares %v failed: %w", failed, kvd.ErrCompareFailed)
}

// fill builds the results of a committed transaction from the groups'
// outcomes: reads from the prepares, write versions from the
// resolutions.
func fill(resp *Response, req Request, outs []*store.TxnOutcome) {
	resp.Results = make([]OpResult, len(req.Ops))
	for i, op := range req.Ops {
		resp.Results[i] = OpResult{Op: op.Op, Key: op.Key}
	}
	versions := map[string]uint64{}
	for _, o := range outs {
		if o == nil {
			continue
		}
		for _, r := range o.Reads {
			res := &resp.Results[r.Index]
			res.Found, res.Value, res.Version = r.Found, r.Value, r.Version
		}
		for _, w := range o.Writes {
			if w.Version != 0 {
				versions[w.Key] = w.Version
			}
			if w.Index < len(req.Ops) && req.Ops[w.Index].Key == w.Key {
				switch req.Ops[w.Index].Op {
				case "delete":
					resp.Results[w.Index].Deleted = w.Deleted
				case "add":
					if w.Value != nil {
						resp.Results[w.Index].Value, resp.Results[w.Index].Found = w.Value, true
					}
				}
			}
		}
	}
	for i, op := range req.Ops {
		if op.Op == "put" || op.Op == "add" {
			resp.Results[i].Version = versions[op.Key]
		}
	}
}

// errLocksResolved marks a conflict whose locks were resolved on the way
// out: the transaction may run again at once.
var errLocksResolved = errors.New("the locks in the way were resolved")

// refusedOrUnavailable explains an aborted transaction: a no vote wins
// over a group that could not be reached.
func (c *Coordinator) refusedOrUnavailable(ctx context.Context, votes map[kvd.GroupID]*vote, outs []*store.TxnOutcome) (Response, error) {
	// Locks past their deadline belong to transactions whose coordinator
	// is slow or gone, and locks of transactions decided here are being
	// resolved: settle them now, so a retry does not meet them.
	resolved := false
	for g, v := range votes {
		if v.out != nil && v.out.Code == store.CodeConflict && c.settleExpired(ctx, g, v.out.Conflicts) {
			resolved = true
		}
	}
	for _, o := range outs {
		if o != nil && !o.Vote {
			resp, err := c.refused(outs)
			if resolved && errors.Is(err, kvd.ErrConflict) {
				err = fmt.Errorf("%w: %w", errLocksResolved, err)
			}
			return resp, err
		}
	}
	for g, v := range votes {
		if v.err != nil && (errors.Is(v.err, kvd.ErrInsufficientStorage) || errors.Is(v.err, kvd.ErrOverloaded)) {
			return Response{}, fmt.Errorf("transaction not committed: group %d: %w", g, v.err)
		}
	}
	for g, v := range votes {
		if v.err != nil {
			return Response{}, fmt.Errorf("transaction not committed: group %d: %v: %w", g, v.err, kvd.ErrUnavailable)
		}
	}
	return Response{}, fmt.Errorf("transaction not committed: %w", kvd.ErrConflict)
}
