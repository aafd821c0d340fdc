package txn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// storedOutcome is a cross-group transaction's outcome as kept under its
// idempotency key, in its record group.
type storedOutcome struct {
	Committed bool       `json:"committed"`
	Results   []OpResult `json:"results,omitempty"`
	Failed    []int      `json:"failed,omitempty"`
	// Code names a definite refusal: compare_failed, conflict,
	// not_a_number.
	Code string `json:"code,omitempty"`
}

func codeOf(err error) string {
	switch {
	case errors.Is(err, kvd.ErrCompareFailed):
		return "compare_failed"
	case errors.Is(err, kvd.ErrNotANumber):
		return "not_a_number"
	case errors.Is(err, kvd.ErrConflict):
		return "conflict"
	}
	return ""
}

func (o storedOutcome) answer() (Response, error) {
	resp := Response{Committed: o.Committed, Results: o.Results, Failed: o.Failed}
	switch o.Code {
	case "":
		return resp, nil
	case "compare_failed":
		return resp, fmt.Errorf("transaction not committed (first attempt): compares %v failed: %w", o.Failed, kvd.ErrCompareFailed)
	case "not_a_number":
		return resp, fmt.Errorf("transaction not committed (first attempt): %w", kvd.ErrNotANumber)
	}
	return resp, fmt.Errorf("transaction not committed (first attempt): %w", kvd.ErrConflict)
}

// idempotent runs a cross-group transaction under an idempotency key.
// The key is claimed in the record group first, naming the transaction;
// a repeat finds the claim and waits for the first attempt's outcome
// instead of running again. The outcome is stored under the key when it
// is known.
func (c *Coordinator) idempotent(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, idem *kvd.Idem) (Response, error) {
	id := newID()
	res, err := c.g.Propose(ctx, rg, encode(store.CmdDedupClaim, store.DedupClaim{Idem: *idem, Txn: id}, nil))
	if err != nil {
		return Response{}, fmt.Errorf("claim idempotency key: %w", err)
	}
	st := res.Dedup
	if st == nil {
		return Response{}, fmt.Errorf("claim idempotency key: no answer: %w", kvd.ErrUnknownOutcome)
	}
	switch st.Status {
	case "mismatch":
		return Response{}, fmt.Errorf("idempotency key %q: %w", idem.Key, kvd.ErrIdempotencyMismatch)
	case "existing":
		return c.await(ctx, rg, idem, st)
	}
	resp, err := c.twoPhase(ctx, req, parts, rg, id)
	if err == nil || codeOf(err) != "" {
		out := storedOutcome{Committed: resp.Committed, Results: resp.Results, Failed: resp.Failed, Code: codeOf(err)}
		c.storeOutcome(idem, rg, out)
	}
	return resp, err
}

// storeOutcome records a transaction's outcome under its key, in the
// background; a repeat that finds none waits for the record instead.
func (c *Coordinator) storeOutcome(idem *kvd.Idem, rg kvd.GroupID, out storedOutcome) {
	b, _ := json.Marshal(out)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer cancel()
		for attempt := 0; ctx.Err() == nil; attempt++ {
			if _, err := c.g.Propose(ctx, rg, encode(store.CmdDedupDone, store.DedupDone{Idem: *idem, Response: b}, nil)); err == nil {
				return
			}
			select {
			case <-time.After(time.Duration(10<<min(attempt, 5)) * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}()
}

// await waits for the outcome of the first attempt holding idem's claim.
func (c *Coordinator) await(ctx context.Context, rg kvd.GroupID, idem *kvd.Idem, st *store.DedupState) (Response, error) {
	deadline := st.At + c.cfg.Timeout.Nanoseconds()
	for attempt := 0; ; attempt++ {
		if st.Done {
			var out storedOutcome
			if err := json.Unmarshal(st.Response, &out); err != nil {
				return Response{}, fmt.Errorf("stored outcome: %v: %w", err, kvd.ErrUnknownOutcome)
			}
			return out.answer()
		}
		if c.cfg.Now().UnixNano() > deadline+time.Second.Nanoseconds() {
			// The first attempt's coordinator is gone: its record
			// decides, aborting it if still pending.
			state, err := Recover(ctx, c.g, store.Lock{Txn: st.Txn, RecordGroup: rg, Deadline: deadline})
			if err != nil {
				return Response{}, err
			}
			switch state {
			case store.TxnAborted:
				out := storedOutcome{Code: "conflict"}
				c.storeOutcome(idem, rg, out)
				return out.answer()
			case store.TxnCommitted:
				// Committed, but its answer was lost with its
				// coordinator: the results' values are not known.
				out := storedOutcome{Committed: true}
				c.storeOutcome(idem, rg, out)
				return out.answer()
			}
		}
		select {
		case <-time.After(time.Duration(20<<min(attempt, 4)) * time.Millisecond):
		case <-ctx.Done():
			return Response{}, fmt.Errorf("waiting for the first attempt of %q: %w", idem.Key, kvd.ErrUnknownOutcome)
		}
		res, err := c.g.Propose(ctx, rg, encode(store.CmdDedupClaim, store.DedupClaim{Idem: *idem, Txn: st.Txn}, nil))
		if err != nil {
			if errors.Is(err, kvd.ErrUnavailable) {
				continue
			}
			return Response{}, err
		}
		if res.Dedup != nil {
			st = res.Dedup
		}
	}
}
