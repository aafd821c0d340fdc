package txn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
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

// refusals are the definite refusals an outcome remembers, by their
// codes of api.Codes.
var refusals = []error{kvd.ErrCompareFailed, kvd.ErrNotANumber, kvd.ErrConflict}

func codeOf(err error) string {
	for _, r := range refusals {
		if errors.Is(err, r) {
			return api.CodeOf(r, true).Code
		}
	}
	return ""
}

func (o storedOutcome) answer() (Response, error) {
	resp := Response{Committed: o.Committed, Results: o.Results, Failed: o.Failed}
	switch o.Code {
	case "":
		return resp, nil
	case api.CodeCompareFailed:
		return resp, fmt.Errorf("transaction not committed (first attempt): compares %v failed: %w", o.Failed, kvd.ErrCompareFailed)
	}
	refusal := api.ErrOfCode(o.Code)
	if refusal == nil {
		refusal = kvd.ErrConflict
	}
	return resp, fmt.Errorf("transaction not committed (first attempt): %w", refusal)
}

// Register makes sure no other request uses idem's key: when the request
// writes in group g and the key's home group (the group its slot maps
// to) is another, it registers the request's fingerprint there first.
// Errors: kvd.ErrIdempotencyMismatch (another request holds the key), or
// kvd.ErrUnavailable if ctx ended (nothing was written).
func Register(ctx context.Context, gs Groups, idem *kvd.Idem, g kvd.GroupID) error {
	if idem == nil {
		return nil
	}
	home, err := gs.GroupOf(idem.Key)
	if err != nil || home == g {
		return nil // the write's own record is the registration
	}
	rctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	res, err := gs.Propose(rctx, home, encode(store.CmdDedupRegister, store.DedupRegister{Idem: *idem}, nil))
	switch {
	case err == nil && res.Dedup != nil && res.Dedup.Status == store.DedupMismatch:
		return fmt.Errorf("idempotency key %q: %w", idem.Key, kvd.ErrIdempotencyMismatch)
	case ctx.Err() != nil:
		return fmt.Errorf("register idempotency key %q in group %d (nothing written): %v: %w", idem.Key, home, ctx.Err(), kvd.ErrUnavailable)
	}
	// Registered, or the home group cannot be reached now: the write goes
	// ahead (its own group still answers retries of it); only a reuse of
	// the key for another request in another group would go unnoticed.
	return nil
}

// registerTimeout bounds how long a write waits for its idempotency key's
// home group before going ahead without the registration.
const registerTimeout = 2 * time.Second

// idempotent runs a cross-group transaction under an idempotency key.
// The key is claimed in the record group first, naming the transaction;
// a repeat finds the claim and waits for the first attempt's outcome
// instead of running again. The outcome is stored under the key when it
// is known. A conflict is not an outcome: nothing applied, so the claim is
// released and a retry runs the transaction afresh.
func (c *Coordinator) idempotent(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, idem *kvd.Idem) (Response, error) {
	id := newID()
	res, err := c.g.Propose(ctx, rg, encode(store.CmdDedupClaim, store.DedupClaim{Idem: *idem, Txn: id}, nil))
	if err != nil {
		return Response{}, fmt.Errorf("claim idempotency key: %w", err)
	}
	if res.Err != nil {
		return Response{}, fmt.Errorf("claim idempotency key (nothing applied): %w", res.Err)
	}
	st := res.Dedup
	for {
		if st == nil {
			return Response{}, fmt.Errorf("claim idempotency key: no answer: %w", kvd.ErrUnknownOutcome)
		}
		switch st.Status {
		case store.DedupMismatch:
			return Response{}, fmt.Errorf("idempotency key %q: %w", idem.Key, kvd.ErrIdempotencyMismatch)
		case store.DedupExisting:
			var resp Response
			resp, id, st, err = c.await(ctx, rg, idem, st)
			if id == "" {
				return resp, err
			}
			continue // the first attempt did not run, and the claim is ours now
		}
		break
	}
	// The outcome is recorded when the transaction finishes, even if the
	// caller has gone by then (a repeat then finds it at once).
	return c.twoPhase(ctx, req, parts, rg, id, func(resp Response, err error) {
		bctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer cancel()
		switch code := codeOf(err); {
		case code == "conflict":
			c.release(bctx, rg, idem, id)
		case err == nil || code != "":
			c.storeOutcome(bctx, idem, rg, storedOutcome{Committed: resp.Committed, Results: resp.Results, Failed: resp.Failed, Code: code})
		}
	})
}

// release frees idem's claim held by transaction id, which was aborted
// without applying anything. If this fails, the claim stays until a
// repeat finds the transaction aborted and releases it then.
func (c *Coordinator) release(ctx context.Context, rg kvd.GroupID, idem *kvd.Idem, id string) {
	if _, err := c.g.Propose(ctx, rg, encode(store.CmdDedupDone, store.DedupDone{Idem: *idem, Release: true, Txn: id}, nil)); err != nil {
		c.log.Debug("release idempotency key", "key", idem.Key, "err", err)
	}
}

// storeOutcome records a transaction's outcome under its key, retrying
// within ctx; a repeat that finds none waits for the record instead.
func (c *Coordinator) storeOutcome(ctx context.Context, idem *kvd.Idem, rg kvd.GroupID, out storedOutcome) {
	b, _ := json.Marshal(out)
	cmd := encode(store.CmdDedupDone, store.DedupDone{Idem: *idem, Response: b}, nil)
	if err := retryBackoff.Retry(ctx, backoff.Always, func() error { _, err := c.g.Propose(ctx, rg, cmd); return err }); err != nil {
		c.log.Debug("store an idempotent outcome", "key", idem.Key, "err", err)
	}
}

// await waits for the outcome of the first attempt holding idem's claim.
// If that attempt turns out not to have run (aborted), await releases its
// claim, claims the key for a new attempt and returns the new attempt's
// id (and claim state) for the caller to run; otherwise id is "".
func (c *Coordinator) await(ctx context.Context, rg kvd.GroupID, idem *kvd.Idem, st *store.DedupState) (Response, string, *store.DedupState, error) {
	deadline := st.At + c.cfg.Timeout.Nanoseconds()
	fresh := newID()
	for attempt := 0; ; attempt++ {
		switch {
		case st.Status == store.DedupNew:
			return Response{}, fresh, st, nil // the claim was free: ours now
		case st.Done:
			var out storedOutcome
			if err := json.Unmarshal(st.Response, &out); err != nil {
				return Response{}, "", nil, fmt.Errorf("stored outcome: %v: %w", err, kvd.ErrUnknownOutcome)
			}
			resp, err := out.answer()
			return resp, "", nil, err
		case c.cfg.Now().UnixNano() > deadline:
			// The first attempt's coordinator is gone or slow past its
			// deadline: its record decides, aborting it if still pending.
			state, err := Recover(ctx, c.g, store.Lock{Txn: st.Txn, RecordGroup: rg, Deadline: deadline})
			if err != nil {
				return Response{}, "", nil, err
			}
			switch state {
			case store.TxnAborted:
				c.release(ctx, rg, idem, st.Txn)
			case store.TxnCommitted:
				// Committed, but its answer was lost with its
				// coordinator: the results' values are not known.
				out := storedOutcome{Committed: true}
				c.spawn(func() {
					bctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
					defer cancel()
					c.storeOutcome(bctx, idem, rg, out)
				})
				resp, err := out.answer()
				return resp, "", nil, err
			}
		}
		if attempt > 0 {
			if awaitBackoff.Wait(ctx, attempt) != nil {
				return Response{}, "", nil, fmt.Errorf("waiting for the first attempt of %q: %w", idem.Key, kvd.ErrUnknownOutcome)
			}
		}
		// Look again; if the claim was released meanwhile this takes it.
		res, err := c.g.Propose(ctx, rg, encode(store.CmdDedupClaim, store.DedupClaim{Idem: *idem, Txn: fresh}, nil))
		if err != nil {
			if errors.Is(err, kvd.ErrUnavailable) {
				continue
			}
			return Response{}, "", nil, err
		}
		if res.Dedup != nil {
			st = res.Dedup
			if st.Status == store.DedupMismatch {
				return Response{}, "", nil, fmt.Errorf("idempotency key %q: %w", idem.Key, kvd.ErrIdempotencyMismatch)
			}
		}
	}
}
