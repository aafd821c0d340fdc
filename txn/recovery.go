package txn

import (
	"context"
	"fmt"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/backoff"
	"github.com/kvd-project/kvd/store"
)

// settleExpired finishes the transactions behind locks in group g that
// are past their deadline (their coordinators are slow or gone), and
// those this coordinator decided and is still resolving. It reports
// whether it resolved any.
func (c *Coordinator) settleExpired(ctx context.Context, g kvd.GroupID, locks []store.Lock) bool {
	now := c.cfg.Now().UnixNano()
	done := map[string]bool{}
	resolved := false
	for _, l := range locks {
		if done[l.Txn] {
			continue
		}
		done[l.Txn] = true
		if commit, ok := c.decided.Load(l.Txn); ok {
			// Decided here, its resolution on its way: help it along.
			if _, err := Resolve(ctx, c.g, l.Txn, g, commit.(bool)); err == nil {
				resolved = true
			}
			continue
		}
		if l.Deadline >= now {
			continue
		}
		state, err := Recover(ctx, c.g, l)
		if err != nil || (state != store.TxnCommitted && state != store.TxnAborted) {
			continue
		}
		if _, err := Resolve(ctx, c.g, l.Txn, g, state == store.TxnCommitted); err != nil {
			c.log.Debug("settle an expired lock", "txn", l.Txn, "group", g, "err", err)
			continue
		}
		resolved = true
	}
	return resolved
}

// Resolve resolves transaction id's locks in group g, retrying definite
// failures and unknown outcomes (resolution is idempotent) within ctx.
// The caller must know the decision from the record. The result's
// Version is the index of the resolving entry.
func Resolve(ctx context.Context, gs Groups, id string, g kvd.GroupID, commit bool) (store.Result, error) {
	cmd := encode(store.CmdTxnResolve, store.TxnResolve{ID: id, Commit: commit}, nil)
	var res store.Result
	err := retryBackoff.Retry(ctx, backoff.Always, func() error {
		var err error
		res, err = gs.Propose(ctx, g, cmd)
		return err
	})
	if err != nil {
		return store.Result{}, fmt.Errorf("resolve %s in group %d: %v: %w", id, g, err, kvd.ErrUnavailable)
	}
	return res, nil
}

// Recover returns the state of the transaction holding lock l, aborting
// it first if it is pending (or absent) past its deadline. Pending (or
// absent before the deadline) means it has not committed yet.
func Recover(ctx context.Context, gs Groups, l store.Lock) (store.TxnState, error) {
	res, err := gs.Propose(ctx, l.RecordGroup, encode(store.CmdTxnRecover, store.TxnRecover{ID: l.Txn, Deadline: l.Deadline}, nil))
	if err != nil {
		return "", fmt.Errorf("recover transaction %s: %w", l.Txn, err)
	}
	if res.Txn == nil {
		return "", fmt.Errorf("recover transaction %s: no outcome: %w", l.Txn, kvd.ErrUnavailable)
	}
	return res.Txn.State, nil
}

// ForceAbort aborts transaction id in its record group rg unless it has
// committed, whatever its deadline (an operator's abort), and returns its
// state: aborted, or committed if it committed first. The record's
// compare-and-set decides between this and the coordinator's commit.
// deadline is the transaction's, as its locks say (0 if unknown): the
// aborted record is kept at least until then.
func ForceAbort(ctx context.Context, gs Groups, id string, rg kvd.GroupID, deadline int64) (store.TxnState, error) {
	res, err := gs.Propose(ctx, rg, encode(store.CmdTxnRecover, store.TxnRecover{ID: id, Deadline: deadline, Force: true}, nil))
	if err != nil {
		return "", fmt.Errorf("abort transaction %s: %w", id, err)
	}
	if res.Txn == nil {
		return "", fmt.Errorf("abort transaction %s: no outcome: %w", id, kvd.ErrUnavailable)
	}
	if res.Err != nil {
		return "", fmt.Errorf("abort transaction %s: %w", id, res.Err)
	}
	return res.Txn.State, nil
}

// Forget deletes a decided record.
func Forget(ctx context.Context, gs Groups, id string, rg kvd.GroupID) error {
	_, err := gs.Propose(ctx, rg, encode(store.CmdTxnForget, store.TxnForget{ID: id}, nil))
	return err
}
