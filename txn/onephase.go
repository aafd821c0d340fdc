package txn

import (
	"context"
	"fmt"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// onePhase runs a transaction whose keys are all in one group as a single
// Raft entry. If another transaction holds one of its keys, it waits up
// to LockWait for that one to finish (settling it if it is past its
// deadline), since a refusal for a lock applied nothing.
func (c *Coordinator) onePhase(ctx context.Context, req Request, p *part, idem *kvd.Idem) (Response, error) {
	cmd := encode(store.CmdTxnOnePhase, store.TxnOnePhase{Compares: p.compares, Ops: p.ops, Idem: idem}, p.writes)
	until := time.Now().Add(c.cfg.LockWait) // a wait: the real clock
	var out *store.TxnOutcome
	for attempt := 0; ; attempt++ {
		res, err := c.g.Propose(ctx, p.group, cmd)
		if err != nil {
			return Response{}, fmt.Errorf("transaction in group %d: %w", p.group, err)
		}
		out = res.Txn
		if out == nil {
			return Response{}, fmt.Errorf("transaction in group %d: no outcome: %w", p.group, kvd.ErrUnknownOutcome)
		}
		if out.Vote || out.Code != store.CodeConflict || time.Now().After(until) {
			break
		}
		c.settleExpired(ctx, p.group, out.Conflicts)
		if lockWaitBackoff.Wait(ctx, attempt) != nil {
			return c.refused([]*store.TxnOutcome{out})
		}
	}
	if !out.Vote {
		return c.refused([]*store.TxnOutcome{out})
	}
	resp := Response{Committed: true}
	fill(&resp, req, []*store.TxnOutcome{out})
	return resp, nil
}
