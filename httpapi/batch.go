package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// batchParallel bounds the operations of one batch run at once: enough for
// a batch's writes to reach a group's proposer together (it puts what is
// queued into one entry), few enough not to flood the node.
const batchParallel = 64

// batchAnswerBytes bounds the values a batch's gets answer, together:
// past it a get answers 413 in its result rather than the node building
// an answer of a thousand large values.
const batchAnswerBytes = 16 << 20

// batchBodyBytes is the largest batch body: many values, each within the
// value limit, or the body limit if that is larger.
func (h *Handler) batchBodyBytes() int64 {
	return max(h.o.Limits.MaxBodyBytes, 8<<20)
}

// batch serves POST /v1/batch: independent operations, each answered as
// its own request would be. Operations this node cannot serve (another
// node leads their group) go to their leaders, one request per leader.
func (h *Handler) batch(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Idempotency-Key") != "" {
		// A batch's ops are requests of their own: one key cannot stand
		// for all of them, and ignoring it would let a client believe
		// its retries are safe.
		writeError(w, fmt.Errorf("%w: a batch takes no Idempotency-Key: send writes that must be retried safely as requests of their own", kvd.ErrInvalid), false)
		return
	}
	body, err := h.readBody(w, r, h.batchBodyBytes())
	if err != nil {
		writeError(w, err, false)
		return
	}
	var req api.BatchRequest
	if err := decodeStrict(body, &req, "batch body"); err != nil {
		writeError(w, err, false)
		return
	}
	switch n := len(req.Ops); {
	case n == 0:
		writeError(w, fmt.Errorf("%w: a batch holds at least one op", kvd.ErrInvalid), false)
		return
	case n > api.MaxBatchOps:
		writeError(w, fmt.Errorf("%w: a batch holds at most %d ops, not %d", kvd.ErrInvalid, api.MaxBatchOps, n), false)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	results := make([]api.BatchResult, len(req.Ops))
	ops := make([]batchOp, len(req.Ops))
	var todo []int
	p := principalOf(r)
	for i, o := range req.Ops {
		op, err := h.parseBatchOp(o)
		if err == nil && p != nil {
			ok := p.CanWrite(o.Key)
			if o.Op == "get" {
				ok = p.CanRead(o.Key)
			}
			if !ok {
				h.metrics.authFailures.WithLabelValues("forbidden").Inc()
				err = fmt.Errorf("%w: token %s has no grant for %s of %s", kvd.ErrForbidden, p.Name, o.Op, strconv.Quote(o.Key))
			}
		}
		if err != nil {
			results[i] = batchError(err, o.Op != "get")
			continue
		}
		ops[i] = op
		todo = append(todo, i)
	}
	forwarded := r.Header.Get(api.HeaderForwarded) != ""
	answer := &answerBudget{l: h.limits}
	defer answer.release()
	for attempt := 0; len(todo) > 0; attempt++ {
		elsewhere := h.runBatch(ctx, ops, todo, results, answer)
		todo = nil
		if forwarded || len(elsewhere) == 0 {
			break
		}
		// Each leader gets its ops in one request; those whose leader
		// is not known are tried here again once the group settles.
		for leader, idx := range elsewhere {
			if leader == "" || leader == h.b.NodeID() {
				todo = append(todo, idx...)
				continue
			}
			if !h.forwardBatch(ctx, r, leader, req.Ops, idx, results, answer) {
				todo = append(todo, idx...)
			}
		}
		if len(todo) == 0 || settlePace.Wait(ctx, attempt) != nil || attempt >= 4 {
			break
		}
	}
	writeJSON(w, http.StatusOK, api.BatchResponse{Results: results})
}

// batchOp is a parsed op of a batch.
type batchOp struct {
	kind  string
	key   string
	value []byte
	ttl   time.Duration
	c     kvd.Consistency
}

func (h *Handler) parseBatchOp(o api.BatchOp) (batchOp, error) {
	op := batchOp{kind: o.Op, key: o.Key, value: o.Value}
	if err := h.o.Limits.ValidateKey(o.Key); err != nil {
		return op, err
	}
	switch o.Op {
	case "put":
		if o.Consistency != "" {
			return op, fmt.Errorf("%w: a put takes no consistency", kvd.ErrInvalid)
		}
		if len(o.Value) > h.o.Limits.MaxValueBytes {
			return op, fmt.Errorf("%w: value is %d bytes, the limit is %d", kvd.ErrTooLarge, len(o.Value), h.o.Limits.MaxValueBytes)
		}
		if o.TTL != "" {
			d, err := time.ParseDuration(o.TTL)
			if err != nil || d <= 0 || kvd.ValidateTTL(d) != nil {
				return op, fmt.Errorf("%w: ttl must be a positive Go duration such as 30s, at most %v, not %q", kvd.ErrInvalid, kvd.MaxTTL, o.TTL)
			}
			op.ttl = d
		}
	case "delete", "get":
		if o.Value != nil || o.TTL != "" {
			return op, fmt.Errorf("%w: a %s takes no value and no ttl", kvd.ErrInvalid, o.Op)
		}
		if o.Op == "delete" && o.Consistency != "" {
			return op, fmt.Errorf("%w: a delete takes no consistency", kvd.ErrInvalid)
		}
		if o.Op == "get" {
			c, err := kvd.ParseConsistency(o.Consistency)
			if err != nil {
				return op, err
			}
			op.c = c
		}
	default:
		return op, fmt.Errorf("%w: op must be put, delete or get, not %q", kvd.ErrInvalid, o.Op)
	}
	return op, nil
}

// runBatch runs the ops at idx, batchParallel at a time, into results,
// and returns those another node must serve, by the leader named (""
// when none is known).
func (h *Handler) runBatch(ctx context.Context, ops []batchOp, idx []int, results []api.BatchResult, answer *answerBudget) map[string][]int {
	var mu sync.Mutex // protects elsewhere
	elsewhere := map[string][]int{}
	sem := make(chan struct{}, batchParallel)
	var wg sync.WaitGroup
	for _, i := range idx {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			res, err := h.runBatchOp(ctx, ops[i])
			if errors.Is(err, kvd.ErrNotLeader) {
				mu.Lock()
				leader := kvd.LeaderHint(err)
				elsewhere[leader] = append(elsewhere[leader], i)
				mu.Unlock()
			}
			if err != nil {
				res = batchError(err, ops[i].kind != "get")
			}
			results[i] = answer.take(res)
		}()
	}
	wg.Wait()
	return elsewhere
}

func (h *Handler) runBatchOp(ctx context.Context, op batchOp) (api.BatchResult, error) {
	switch op.kind {
	case "put":
		v, err := h.b.Put(ctx, op.key, op.value, kvd.WriteOptions{TTL: op.ttl}, kvd.Route{})
		return api.BatchResult{Status: http.StatusOK, Version: v}, err
	case "delete":
		deleted, v, err := h.b.Delete(ctx, op.key, kvd.WriteOptions{}, kvd.Route{})
		return api.BatchResult{Status: http.StatusOK, Version: v, Deleted: &deleted}, err
	default:
		it, err := h.b.Get(ctx, op.key, op.c, kvd.Route{})
		return api.BatchResult{Status: http.StatusOK, Version: it.Version, Value: it.Value}, err
	}
}

// answerBudget bounds the values a batch's gets answer: at most
// batchAnswerBytes for the batch, and every byte counted against the
// node's cap on the bytes requests hold (MaxInflightBytes) until the
// answer is sent, so that batches of large gets cannot together hold
// more than the node allows.
type answerBudget struct {
	l     *inflight
	bytes atomic.Int64 // values taken into the answer
	held  atomic.Int64 // of which counted against the node's cap
}

// take counts a result's value, or answers 413 (past the batch's bound)
// or 429 (past the node's cap) in its place.
func (a *answerBudget) take(res api.BatchResult) api.BatchResult {
	n := int64(len(res.Value))
	if n == 0 {
		return res
	}
	if a.bytes.Add(n) > batchAnswerBytes {
		return batchError(fmt.Errorf("%w: the batch's gets answer more than %d bytes of values: get this key in another request", kvd.ErrTooLarge, batchAnswerBytes), false)
	}
	if a.l != nil {
		if err := a.l.hold(n); err != nil {
			return batchError(err, false)
		}
		a.held.Add(n)
	}
	return res
}

// release gives back what the answer held against the node's cap.
func (a *answerBudget) release() {
	if a.l != nil {
		a.l.free(a.held.Load())
	}
}

// batchError is the result of an op that failed with err.
func batchError(err error, write bool) api.BatchResult {
	status, code := statusOf(err, write)
	d := &api.ErrorDetail{Code: code, Message: clip(err.Error())}
	var nl *kvd.NotLeaderError
	if errors.As(err, &nl) {
		d.Leader, d.Group = nl.Leader, uint64(nl.Group)
	}
	return api.BatchResult{Status: status, Error: d}
}

// forwardBatch sends the ops at idx to leader as one batch, and fills
// their results from its answer. It reports false when the leader could
// not be asked and nothing was sent (the ops may be tried again); an
// answer lost once sent leaves the writes' outcome unknown.
func (h *Handler) forwardBatch(ctx context.Context, r *http.Request, leader string, all []api.BatchOp, idx []int, results []api.BatchResult, answer *answerBudget) bool {
	addr, ok := h.b.PeerHTTP(leader)
	if !ok {
		return false
	}
	sub := api.BatchRequest{Ops: make([]api.BatchOp, len(idx))}
	for j, i := range idx {
		sub.Ops[j] = all[i]
	}
	body, _ := json.Marshal(sub)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.o.ForwardScheme+"://"+addr+"/v1/batch", bytes.NewReader(body))
	if err != nil {
		return false
	}
	for _, k := range []string{"Authorization", "Content-Type"} {
		if v := r.Header.Get(k); v != "" {
			req.Header.Set(k, v)
		}
	}
	req.Header.Set(api.HeaderForwarded, h.b.NodeID())
	fail := func(err error) {
		for _, i := range idx {
			if all[i].Op == "get" {
				results[i] = batchError(fmt.Errorf("forwarded to leader %s: %v: %w", leader, err, kvd.ErrUnavailable), false)
			} else {
				results[i] = batchError(fmt.Errorf("forwarded to leader %s, no whole answer: %v: %w", leader, err, kvd.ErrUnknownOutcome), true)
			}
		}
	}
	resp, err := h.fwd.Do(req)
	if err != nil {
		if wire.NeverSent(err) {
			return false
		}
		fail(err)
		return true
	}
	defer resp.Body.Close()
	// The leader's answer holds at most batchAnswerBytes of values (in
	// base64), and a version or an error per op.
	raw, err := io.ReadAll(io.LimitReader(resp.Body, batchAnswerBytes/3*4+int64(len(idx))*(maxMessage+256)+1<<20))
	if err == nil && resp.StatusCode != http.StatusOK && (resp.StatusCode < 500 || resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusInsufficientStorage) {
		// Refused whole before any op ran (shed, no room, a bad token):
		// each op gets that refusal, which says nothing was applied, so
		// the client can send it again.
		var e api.Error
		if json.Unmarshal(raw, &e) != nil || e.Error.Code == "" {
			e.Error = api.ErrorDetail{Code: api.CodeOfStatus(resp.StatusCode), Message: http.StatusText(resp.StatusCode)}
		}
		e.Error.Message = clip(fmt.Sprintf("forwarded to leader %s: %s", leader, e.Error.Message))
		for _, i := range idx {
			d := e.Error
			results[i] = api.BatchResult{Status: resp.StatusCode, Error: &d}
		}
		return true
	}
	var out api.BatchResponse
	if err == nil && resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(raw, &out)
	}
	if err == nil && (resp.StatusCode != http.StatusOK || len(out.Results) != len(idx)) {
		err = fmt.Errorf("answered %s with %d results for %d ops", resp.Status, len(out.Results), len(idx))
	}
	if err != nil {
		fail(err)
		return true
	}
	for j, i := range idx {
		results[i] = answer.take(out.Results[j])
	}
	return true
}
