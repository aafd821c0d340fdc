package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/kvd-project/kvd/api"
)

func (h *Handler) getKey(w http.ResponseWriter, r *http.Request) {
	req, err := h.readGet(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if !h.allow(w, r, principalOf(r).CanRead(req.key), "reading "+strconv.Quote(req.key)) {
		return
	}
	h.serve(w, r, req.rt, nil, reads, func(ctx context.Context) (responder, error) {
		it, exp, err := h.b.GetExpiring(ctx, req.key, req.c, req.rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			w.Header().Set("ETag", etag(it.Version))
			if !exp.IsZero() {
				w.Header().Set(api.HeaderExpires, exp.Format(time.RFC3339Nano))
			}
			if req.notModified != 0 && req.notModified == it.Version {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(it.Value)))
			w.WriteHeader(http.StatusOK)
			w.Write(it.Value)
		}, nil
	})
}

func (h *Handler) putKey(w http.ResponseWriter, r *http.Request) {
	req, err := h.readPut(w, r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if !h.allow(w, r, principalOf(r).CanWrite(req.key), "writing "+strconv.Quote(req.key)) {
		return
	}
	h.serve(w, r, req.rt, req.value, writes, func(ctx context.Context) (responder, error) {
		ver, err := h.b.Put(ctx, req.key, req.value, req.wr, req.rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			w.Header().Set("ETag", etag(ver))
			writeVersion(w, ver)
		}, nil
	})
}

func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request) {
	req, err := h.readWrite(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if !h.allow(w, r, principalOf(r).CanWrite(req.key), "writing "+strconv.Quote(req.key)) {
		return
	}
	h.serve(w, r, req.rt, nil, writes, func(ctx context.Context) (responder, error) {
		deleted, ver, err := h.b.Delete(ctx, req.key, req.wr, req.rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, api.DeleteResponse{Deleted: deleted, Version: ver})
		}, nil
	})
}

func (h *Handler) scan(w http.ResponseWriter, r *http.Request) {
	o, err := h.scanOptionsOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if !h.allow(w, r, principalOf(r).CanReadRange(o.Prefix, o.Start, o.End), fmt.Sprintf("scanning prefix %q from %q to %q", o.Prefix, o.Start, o.End)) {
		return
	}
	c, rt, err := readRouting(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, nil, reads, func(ctx context.Context) (responder, error) {
		items, next, err := h.b.Scan(ctx, o, c, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			resp := api.ScanResponse{Items: make([]api.Item, len(items)), More: next != "", Next: next}
			for i, it := range items {
				resp.Items[i] = api.Item{Key: it.Key, Value: it.Value, Version: it.Version}
			}
			writeJSON(w, http.StatusOK, resp)
		}, nil
	})
}
