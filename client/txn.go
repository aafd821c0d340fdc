package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// The transaction builders are the kvd package's.
var (
	VersionIs = kvd.VersionIs
	ValueIs   = kvd.ValueIs
	Exists    = kvd.Exists
	OpGet     = kvd.OpGet
	OpPut     = kvd.OpPut
	OpPutTTL  = kvd.OpPutTTL
	OpDelete  = kvd.OpDelete
	OpAdd     = kvd.OpAdd
)

// TxnError is the error of a transaction that did not commit. It matches
// kvd.ErrCompareFailed, kvd.ErrConflict or kvd.ErrNotANumber under
// errors.Is.
type TxnError struct {
	// Err is the node's answer.
	Err *Error
	// Failed lists the compares that did not hold.
	Failed []int
}

// Error implements error.
func (e *TxnError) Error() string {
	if len(e.Failed) > 0 {
		return fmt.Sprintf("%s (failed compares %v)", e.Err.Error(), e.Failed)
	}
	return e.Err.Error()
}

// Unwrap returns the node's answer, which matches the contract error.
func (e *TxnError) Unwrap() error { return e.Err }

// Txn runs a transaction: if every compare holds, all ops apply,
// atomically, across any groups. It is sent to the leader of the first
// key's group (a transaction within one group then commits without a
// hop). A transaction that did not commit returns a *TxnError; one whose
// outcome is unknown returns kvd.ErrUnknownOutcome and is never resent,
// unless it carries an idempotency key.
func (c *Client) Txn(ctx context.Context, t kvd.Txn, opts ...kvd.WriteOption) (kvd.TxnResponse, error) {
	o, err := kvd.TxnOptions(opts)
	if err != nil {
		return kvd.TxnResponse{}, err
	}
	body, err := json.Marshal(wire.FromTxn(t))
	if err != nil {
		return kvd.TxnResponse{}, fmt.Errorf("txn: %w", err)
	}
	first := ""
	switch {
	case len(t.Ops) > 0:
		first = t.Ops[0].Key
	case len(t.Compares) > 0:
		first = t.Compares[0].Key
	default:
		return kvd.TxnResponse{}, fmt.Errorf("txn: %w: nothing to do", kvd.ErrInvalid)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	if o.IdempotencyKey != "" {
		h.Set("Idempotency-Key", o.IdempotencyKey)
	}
	res, err := c.doWrite(ctx, o, &call{method: http.MethodPost, path: "/v1/txn", body: body, header: h, key: first, write: true, noRoute: true})
	if err != nil {
		return kvd.TxnResponse{}, fmt.Errorf("txn: %w", err)
	}
	var resp api.TxnResponse
	switch {
	case res.status == http.StatusOK:
		if err := json.Unmarshal(res.body, &resp); err != nil {
			return kvd.TxnResponse{}, fmt.Errorf("txn: decode answer: %v: %w", err, kvd.ErrUnknownOutcome)
		}
		return wire.TxnResponse(resp), nil
	case res.status == http.StatusConflict:
		_ = json.Unmarshal(res.body, &resp)
		e := &Error{Status: res.status, Node: res.header.Get(api.HeaderNode)}
		if resp.Error != nil {
			e.Code, e.Message = resp.Error.Code, resp.Error.Message
		} else {
			e.Code = api.CodeConflict
		}
		return wire.TxnResponse(resp), fmt.Errorf("txn: %w", &TxnError{Err: e, Failed: resp.Failed})
	}
	return kvd.TxnResponse{}, fmt.Errorf("txn: %w", writeError(res))
}

// Add adds delta to the decimal integer at key (absent: 0) and returns
// the new value.
func (c *Client) Add(ctx context.Context, key string, delta int64, opts ...kvd.WriteOption) (int64, error) {
	return kvd.AddWith(ctx, c.Txn, key, delta, opts)
}

// Tx is an optimistic interactive transaction: reads go to the cluster
// and remember the versions they saw; writes are buffered; Commit sends
// everything as one transaction that compares every version read, so it
// commits only if nothing it read has changed since. A Tx is not safe
// for concurrent use.
type Tx struct {
	kv     kvd.KV
	reads  map[string]kvd.Version // key -> version seen (0: absent)
	order  []string               // keys read, in order
	writes map[string]*kvd.Op
	worder []string
}

// Begin starts an optimistic transaction.
func (c *Client) Begin() *Tx { return Begin(c) }

// Begin starts an optimistic transaction on any kvd.KV.
func Begin(kv kvd.KV) *Tx {
	return &Tx{kv: kv, reads: map[string]kvd.Version{}, writes: map[string]*kvd.Op{}}
}

// Get reads key: this transaction's own buffered write if it made one,
// else the store's value (linearizable), remembering its version.
// A missing key returns an error matching ErrNotFound.
func (tx *Tx) Get(ctx context.Context, key string) (kvd.Item, error) {
	if w, ok := tx.writes[key]; ok {
		if w.Op == "delete" {
			return kvd.Item{}, fmt.Errorf("get %q: %w", key, kvd.ErrNotFound)
		}
		return kvd.Item{Key: key, Value: w.Value}, nil
	}
	it, err := tx.kv.Get(ctx, key, kvd.WithConsistency(kvd.Linearizable))
	switch {
	case err == nil:
		tx.see(key, it.Version)
	case errors.Is(err, kvd.ErrNotFound):
		tx.see(key, 0)
	}
	return it, err
}

func (tx *Tx) see(key string, v kvd.Version) {
	if _, ok := tx.reads[key]; !ok {
		tx.order = append(tx.order, key)
		tx.reads[key] = v
	}
}

// Pending returns how many keys the transaction has read and how many
// writes it has queued, none of which is committed yet.
func (tx *Tx) Pending() (reads, writes int) { return len(tx.reads), len(tx.writes) }

// Put buffers a write of key.
func (tx *Tx) Put(key string, value []byte) { tx.write(kvd.OpPut(key, value)) }

// Delete buffers a delete of key.
func (tx *Tx) Delete(key string) { tx.write(kvd.OpDelete(key)) }

func (tx *Tx) write(op kvd.Op) {
	if _, ok := tx.writes[op.Key]; !ok {
		tx.worder = append(tx.worder, op.Key)
	}
	tx.writes[op.Key] = &op
}

// Commit sends the transaction. It fails with an error matching
// kvd.ErrCompareFailed if something it read changed meanwhile.
func (tx *Tx) Commit(ctx context.Context) (kvd.TxnResponse, error) {
	var t kvd.Txn
	for _, k := range tx.order {
		t.Compares = append(t.Compares, kvd.VersionIs(k, tx.reads[k]))
	}
	for _, k := range tx.worder {
		t.Ops = append(t.Ops, *tx.writes[k])
	}
	if len(t.Ops) == 0 && len(t.Compares) == 0 {
		return kvd.TxnResponse{Committed: true}, nil
	}
	return tx.kv.Txn(ctx, t)
}

// Update runs fn in a fresh transaction and commits it, again and again
// (with backoff) while the commit fails because of a conflict or because
// something fn read changed, until it commits or ctx ends. An error from
// fn stops it and is returned as is.
func (c *Client) Update(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	return Update(ctx, c, fn)
}

// Update is Client.Update for any kvd.KV (the embedded store too).
func Update(ctx context.Context, kv kvd.KV, fn func(ctx context.Context, tx *Tx) error) error {
	backoff := 5 * time.Millisecond
	for {
		tx := Begin(kv)
		if err := fn(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Commit(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, kvd.ErrConflict) && !errors.Is(err, kvd.ErrCompareFailed) {
			return err
		}
		jitter := time.Duration(rand.Int64N(int64(backoff)))
		select {
		case <-time.After(backoff + jitter):
		case <-ctx.Done():
			return fmt.Errorf("update: %v: %w", err, ctx.Err())
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

var _ kvd.KV = (*Client)(nil)
