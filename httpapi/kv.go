package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

func (h *Handler) getKey(w http.ResponseWriter, r *http.Request) {
	key, rt, err := h.keyRoute(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	c, err := consistencyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var notModified uint64
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.TrimSpace(inm) != "*" {
		if notModified, err = parseETag(inm); err != nil {
			writeError(w, err, false)
			return
		}
	}
	h.serve(w, r, rt, nil, false, func(ctx context.Context) (responder, error) {
		it, err := h.b.Get(ctx, key, c, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			w.Header().Set("ETag", etag(it.Version))
			if notModified != 0 && notModified == it.Version {
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
	key, rt, err := h.keyRoute(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	wr, err := writeOptionsOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	if s := r.URL.Query().Get("ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || kvd.ValidateTTL(d) != nil {
			writeError(w, fmt.Errorf("%w: ttl must be a positive Go duration such as 30s, at most %v, not %q", kvd.ErrInvalid, kvd.MaxTTL, s), false)
			return
		}
		wr.TTL = d
	}
	// One byte past the value limit tells a value that is too large from
	// one that fits; the error names the value limit itself.
	body, err := h.readBody(w, r, min(h.o.Limits.MaxBodyBytes, int64(h.o.Limits.MaxValueBytes)+1))
	if errors.Is(err, kvd.ErrTooLarge) && int64(h.o.Limits.MaxValueBytes) < h.o.Limits.MaxBodyBytes {
		err = fmt.Errorf("%w: the value exceeds %d bytes", kvd.ErrTooLarge, h.o.Limits.MaxValueBytes)
	}
	if err != nil {
		writeError(w, err, false)
		return
	}
	if err := h.o.Limits.ValidateValue(len(body)); err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, body, true, func(ctx context.Context) (responder, error) {
		ver, err := h.b.Put(ctx, key, body, wr, rt)
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
	key, rt, err := h.keyRoute(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	wr, err := writeOptionsOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, nil, true, func(ctx context.Context) (responder, error) {
		deleted, ver, err := h.b.Delete(ctx, key, wr, rt)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, api.DeleteResponse{Deleted: deleted, Version: ver})
		}, nil
	})
}

func (h *Handler) scan(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := kvd.ScanOptions{Prefix: q.Get("prefix"), Start: q.Get("start"), End: q.Get("end"), Limit: h.o.Limits.DefaultScanLimit}
	for name, v := range map[string]string{"prefix": o.Prefix, "start": o.Start, "end": o.End} {
		if !utf8.ValidString(v) {
			writeError(w, fmt.Errorf("%w: %s is not valid UTF-8", kvd.ErrInvalid, name), false)
			return
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		switch {
		case err != nil || n < 1:
			writeError(w, fmt.Errorf("%w: limit must be a positive integer, not %q", kvd.ErrInvalid, s), false)
			return
		case n > h.o.Limits.MaxScanLimit:
			writeError(w, fmt.Errorf("%w: limit %d is over the maximum page of %d", kvd.ErrInvalid, n, h.o.Limits.MaxScanLimit), false)
			return
		}
		o.Limit = n
	}
	if s := q.Get("bytes"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, fmt.Errorf("%w: bytes must be a positive integer, not %q", kvd.ErrInvalid, s), false)
			return
		}
		o.MaxBytes = n // lowers the node's cap, never raises it
	}
	c, err := consistencyOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	rt, err := routeOf(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.serve(w, r, rt, nil, false, func(ctx context.Context) (responder, error) {
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
