package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

func (h *Handler) txn(w http.ResponseWriter, r *http.Request) {
	body, err := h.readBody(w, r, h.o.Limits.MaxBodyBytes)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var req api.TxnRequest
	if err := decodeStrict(body, &req, "transaction body"); err != nil {
		writeError(w, err, false)
		return
	}
	t, err := wire.Txn(req)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if p := principalOf(r); p != nil {
		for _, c := range t.Compares {
			if !h.allow(w, r, p.CanRead(c.Key), "reading "+strconv.Quote(c.Key)) {
				return
			}
		}
		for _, op := range t.Ops {
			ok := p.CanWrite(op.Key)
			if op.Op == "get" {
				ok = p.CanRead(op.Key)
			}
			if !h.allow(w, r, ok, op.Op+" of "+strconv.Quote(op.Key)) {
				return
			}
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	kresp, err := h.b.Txn(ctx, t, kvd.WriteOptions{IdempotencyKey: r.Header.Get("Idempotency-Key"), IdempotencyScope: idemScope(r)})
	resp := wire.FromTxnResponse(kresp)
	if err != nil {
		status, code := statusOf(err, true)
		if status == http.StatusConflict {
			resp.Committed = false
			resp.Results = nil
			resp.Error = &api.ErrorDetail{Code: code, Message: err.Error()}
			writeJSON(w, status, resp)
			return
		}
		writeError(w, err, true)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}
