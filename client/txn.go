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
)

// VersionIs compares key's version (0: absent).
func VersionIs(key string, v kvd.Version) api.TxnCompare {
	return api.TxnCompare{Key: key, Version: &v}
}

// ValueIs compares key's value (an absent key fails it).
func ValueIs(key string, value []byte) api.TxnCompare {
	if value == nil {
		value = []byte{}
	}
	return api.TxnCompare{Key: key, Value: value}
}

// Exists compares whether key exists.
func Exists(key string, exists bool) api.TxnCompare {
	return api.TxnCompare{Key: key, Exists: &exists}
}

// OpGet reads key in a transaction.
func OpGet(key string) api.TxnOp { return api.TxnOp{Op: "get", Key: key} }

// OpPut writes key in a transaction.
func OpPut(key string, value []byte) api.TxnOp {
	if value == nil {
		value = []byte{}
	}
	return api.TxnOp{Op: "put", Key: key, Value: value}
}

// OpDelete deletes key in a transaction.
func OpDelete(key string) api.TxnOp { return api.TxnOp{Op: "delete", Key: key} }

// TxnError is the error of a transaction that did not commit. It matches
// kvd.ErrCompareFailed or kvd.ErrConflict under errors.Is.
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
// outcome is unknown returns kvd.ErrUnknownOutcome and is never resent.
func (c *Client) Txn(ctx context.Context, compares []api.TxnCompare, ops []api.TxnOp) (api.TxnResponse, error) {
	body, err := json.Marshal(api.TxnRequest{Compare: compares, Ops: ops})
	if err != nil {
		return api.TxnResponse{}, fmt.Errorf("txn: %w", err)
	}
	first := ""
	switch {
	case len(ops) > 0:
		first = ops[0].Key
	case len(compares) > 0:
		first = compares[0].Key
	default:
		return api.TxnResponse{}, fmt.Errorf("txn: %w: nothing to do", kvd.ErrInvalid)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	res, err := c.do(ctx, &call{method: http.MethodPost, path: "/v1/txn", body: body, header: h, key: first, write: true, noRoute: true})
	if err != nil {
		return api.TxnResponse{}, fmt.Errorf("txn: %w", err)
	}
	var resp api.TxnResponse
	switch {
	case res.status == http.StatusOK:
		if err := json.Unmarshal(res.body, &resp); err != nil {
			return resp, fmt.Errorf("txn: decode answer: %v: %w", err, kvd.ErrUnknownOutcome)
		}
		return resp, nil
	case res.status == http.StatusConflict:
		_ = json.Unmarshal(res.body, &resp)
		e := &Error{Status: res.status, Node: res.header.Get(api.HeaderNode)}
		if resp.Error != nil {
			e.Code, e.Message = resp.Error.Code, resp.Error.Message
		} else {
			e.Code = api.CodeConflict
		}
		return resp, fmt.Errorf("txn: %w", &TxnError{Err: e, Failed: resp.Failed})
	}
	return resp, fmt.Errorf("txn: %w", writeError(res))
}

// Tx is an optimistic interactive transaction: reads go to the cluster
// and remember the versions they saw; writes are buffered; Commit sends
// everything as one transaction that compares every version read, so it
// commits only if nothing it read has changed since. A Tx is not safe
// for concurrent use.
type Tx struct {
	c      *Client
	reads  map[string]kvd.Version // key -> version seen (0: absent)
	order  []string               // keys read, in order
	writes map[string]*api.TxnOp
	worder []string
}

// Begin starts an optimistic transaction.
func (c *Client) Begin() *Tx {
	return &Tx{c: c, reads: map[string]kvd.Version{}, writes: map[string]*api.TxnOp{}}
}

// Get reads key: this transaction's own buffered write if it made one,
// else the cluster's value (linearizable), remembering its version.
// A missing key returns an error matching ErrNotFound.
func (tx *Tx) Get(ctx context.Context, key string) (kvd.Item, error) {
	if w, ok := tx.writes[key]; ok {
		if w.Op == "delete" {
			return kvd.Item{}, fmt.Errorf("get %q: %w", key, kvd.ErrNotFound)
		}
		return kvd.Item{Key: key, Value: w.Value}, nil
	}
	it, err := tx.c.Get(ctx, key, WithConsistency(kvd.Linearizable))
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

// Put buffers a write of key.
func (tx *Tx) Put(key string, value []byte) { tx.write(OpPut(key, value)) }

// Delete buffers a delete of key.
func (tx *Tx) Delete(key string) { tx.write(OpDelete(key)) }

func (tx *Tx) write(op api.TxnOp) {
	if _, ok := tx.writes[op.Key]; !ok {
		tx.worder = append(tx.worder, op.Key)
	}
	tx.writes[op.Key] = &op
}

// Commit sends the transaction. It fails with a *TxnError matching
// kvd.ErrCompareFailed if something it read changed meanwhile.
func (tx *Tx) Commit(ctx context.Context) (api.TxnResponse, error) {
	var cmps []api.TxnCompare
	for _, k := range tx.order {
		cmps = append(cmps, VersionIs(k, tx.reads[k]))
	}
	var ops []api.TxnOp
	for _, k := range tx.worder {
		ops = append(ops, *tx.writes[k])
	}
	if len(ops) == 0 && len(cmps) == 0 {
		return api.TxnResponse{Committed: true}, nil
	}
	return tx.c.Txn(ctx, cmps, ops)
}

// Update runs fn in a fresh transaction and commits it, again and again
// (with backoff) while the commit fails because of a conflict or because
// something fn read changed, until it commits or ctx ends. An error from
// fn stops it and is returned as is.
func (c *Client) Update(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	backoff := 5 * time.Millisecond
	for {
		tx := c.Begin()
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
