package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Node-to-node endpoints that serve a peer's repair and integrity check,
// and the transaction admin endpoints.

// groupParam parses the group query parameter.
func groupParam(r *http.Request) (kvd.GroupID, error) {
	g, err := strconv.ParseUint(r.URL.Query().Get("group"), 10, 64)
	if err != nil || g == 0 {
		return 0, fmt.Errorf("%w: group must be a positive integer", kvd.ErrInvalid)
	}
	return kvd.GroupID(g), nil
}

// indexParam parses a non-negative integer query parameter.
func indexParam(r *http.Request, name string) (uint64, error) {
	v, err := strconv.ParseUint(r.URL.Query().Get(name), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s must be a non-negative integer", kvd.ErrInvalid, name)
	}
	return v, nil
}

// answer runs fn within the request timeout and writes what it returns
// as JSON, or its error (write: as the error of a write).
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, write bool, fn func(ctx context.Context) (any, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	out, err := fn(ctx)
	if err != nil {
		writeError(w, err, write)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// groupAndIndex parses the group and an index query parameter.
func groupAndIndex(r *http.Request, index string) (kvd.GroupID, uint64, error) {
	g, err := groupParam(r)
	if err != nil {
		return 0, 0, err
	}
	idx, err := indexParam(r, index)
	return g, idx, err
}

func (h *Handler) logEntry(w http.ResponseWriter, r *http.Request) {
	g, idx, err := groupAndIndex(r, "index")
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.answer(w, r, false, func(ctx context.Context) (any, error) { return h.b.LogEntry(ctx, g, idx) })
}

func (h *Handler) snapshot(w http.ResponseWriter, r *http.Request) {
	g, minIndex, err := groupAndIndex(r, "min_index")
	if err != nil {
		writeError(w, err, false)
		return
	}
	// A snapshot outlives the server's write timeout.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	started := false
	err = h.b.WriteSnapshot(r.Context(), g, minIndex, func() io.Writer {
		started = true
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		return w
	})
	switch {
	case err == nil:
	case !started:
		writeError(w, err, false)
	default:
		// Cut the connection: a clean end would pass a truncated
		// snapshot off as whole.
		h.log.Warn("snapshot stream to a peer failed", "group", g, "err", err)
		panic(http.ErrAbortHandler)
	}
}

func (h *Handler) hash(w http.ResponseWriter, r *http.Request) {
	g, idx, err := groupAndIndex(r, "index")
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.answer(w, r, false, func(ctx context.Context) (any, error) {
		v, err := h.b.HashAt(ctx, g, idx)
		return api.HashResponse{Hash: strconv.FormatUint(v, 16)}, err
	})
}

func (h *Handler) groupTxns(w http.ResponseWriter, r *http.Request) {
	g, err := groupParam(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.answer(w, r, false, func(ctx context.Context) (any, error) { return h.b.GroupTxns(ctx, g) })
}

func (h *Handler) txns(w http.ResponseWriter, r *http.Request) {
	h.answer(w, r, false, func(ctx context.Context) (any, error) { return h.b.Txns(ctx) })
}

func (h *Handler) abortTxn(w http.ResponseWriter, r *http.Request) {
	// The path is kept escaped (keys are taken exactly): decode the id
	// once, as a key is.
	id, err := url.PathUnescape(mux.Vars(r)["id"])
	if err != nil || id == "" || len(id) > 64 || !utf8.ValidString(id) {
		writeError(w, fmt.Errorf("%w: a transaction id is 1 to 64 characters", kvd.ErrInvalid), false)
		return
	}
	h.answer(w, r, true, func(ctx context.Context) (any, error) { return h.b.AbortTxn(ctx, id) })
}

func (h *Handler) readIndex(w http.ResponseWriter, r *http.Request) {
	g, err := groupParam(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.answer(w, r, false, func(ctx context.Context) (any, error) {
		idx, err := h.b.ReadIndex(ctx, g)
		return api.ReadIndexResponse{Index: idx}, err
	})
}

// internal serves a node-to-node call on a group: the body in, an
// encoded answer out.
func (h *Handler) internal(fn func(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g, err := groupParam(r)
		if err != nil {
			writeError(w, err, false)
			return
		}
		h.peerCall(func(ctx context.Context, body []byte) ([]byte, error) { return fn(ctx, g, body) })(w, r)
	}
}

// peerCall serves a node-to-node call: the body in (up to a request body
// and a margin for the command's framing), an encoded answer out.
func (h *Handler) peerCall(fn func(ctx context.Context, body []byte) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := h.readBody(w, r, h.o.Limits.MaxBodyBytes+1<<20)
		if err != nil {
			writeError(w, err, false)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
		defer cancel()
		out, err := fn(ctx, body)
		if err != nil {
			writeError(w, err, true)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(out)
	}
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	g, err := groupParam(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	q := r.URL.Query()
	limit, maxBytes := 256, 0
	if q.Has("limit") {
		limit, _ = strconv.Atoi(q.Get("limit"))
	}
	if q.Has("bytes") {
		maxBytes, _ = strconv.Atoi(q.Get("bytes"))
	}
	waitMS, _ := strconv.Atoi(q.Get("wait"))
	h.answer(w, r, false, func(ctx context.Context) (any, error) {
		return h.b.History(ctx, g, q.Get("after"), q.Get("prefix"), max(limit, 0), maxBytes, time.Duration(waitMS)*time.Millisecond)
	})
}
