// Package wire holds what the client, the node and the shell share of
// the HTTP wire: the module's types to and from their wire shapes
// (package api), the HTTP client nodes call each other with, and whether
// a failed call can have reached the other side.
package wire

import (
	"fmt"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// FromTxn renders a transaction for the wire.
func FromTxn(t kvd.Txn) api.TxnRequest {
	var req api.TxnRequest
	for _, c := range t.Compares {
		req.Compare = append(req.Compare, api.TxnCompare{Key: c.Key, Version: c.Version, Value: c.Value, Exists: c.Exists})
	}
	for _, op := range t.Ops {
		o := api.TxnOp{Op: op.Op, Key: op.Key, Value: op.Value, Delta: op.Delta}
		if op.TTL > 0 {
			o.TTL = op.TTL.String()
		}
		req.Ops = append(req.Ops, o)
	}
	return req
}

// Txn reads a transaction from the wire. An op's ttl must be a positive
// Go duration (kvd.ErrInvalid otherwise).
func Txn(r api.TxnRequest) (kvd.Txn, error) {
	var t kvd.Txn
	for _, c := range r.Compare {
		t.Compares = append(t.Compares, kvd.Compare{Key: c.Key, Version: c.Version, Value: c.Value, Exists: c.Exists})
	}
	for i, op := range r.Ops {
		o := kvd.Op{Op: op.Op, Key: op.Key, Value: op.Value, Delta: op.Delta}
		if op.TTL != "" {
			d, err := time.ParseDuration(op.TTL)
			if err != nil || d <= 0 {
				return kvd.Txn{}, fmt.Errorf("%w: op %d: ttl must be a positive Go duration such as 30s, not %q", kvd.ErrInvalid, i, op.TTL)
			}
			o.TTL = d
		}
		t.Ops = append(t.Ops, o)
	}
	return t, nil
}

// FromTxnResponse renders a transaction's answer for the wire: each
// result carries what its op returns (a get: found, value, version; a put:
// version; an add: value, version; a delete: deleted).
func FromTxnResponse(resp kvd.TxnResponse) api.TxnResponse {
	out := api.TxnResponse{Committed: resp.Committed, Failed: resp.Failed}
	for _, res := range resp.Results {
		ar := api.TxnResult{Op: res.Op, Key: res.Key}
		switch res.Op {
		case "get":
			found := res.Found
			ar.Found, ar.Value, ar.Version = &found, res.Value, res.Version
		case "put":
			ar.Version = res.Version
		case "add":
			ar.Value, ar.Version = res.Value, res.Version
		case "delete":
			deleted := res.Deleted
			ar.Deleted = &deleted
		}
		out.Results = append(out.Results, ar)
	}
	return out
}

// TxnResponse reads a transaction's answer from the wire. An add's
// result is always found (it returns the new value).
func TxnResponse(r api.TxnResponse) kvd.TxnResponse {
	out := kvd.TxnResponse{Committed: r.Committed, Failed: r.Failed}
	for _, res := range r.Results {
		o := kvd.OpResult{Op: res.Op, Key: res.Key, Value: res.Value, Version: res.Version}
		if res.Found != nil {
			o.Found = *res.Found
		}
		if res.Op == "add" {
			o.Found = true
		}
		if res.Deleted != nil {
			o.Deleted = *res.Deleted
		}
		out.Results = append(out.Results, o)
	}
	return out
}
