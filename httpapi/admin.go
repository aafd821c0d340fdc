package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// The operations API (/v1/admin/): membership changes. Each is served by
// the node that must make it (the system group's leader, or for a
// leadership transfer the group's leader): another node forwards it
// there, as it forwards a write.

// defaultWait is how long a membership change is waited for before it is
// answered 202 (in progress) when the request names no ?wait.
const defaultWait = 8 * time.Second

// adminWait parses ?wait (a Go duration, at most a minute).
func adminWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return defaultWait, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > time.Minute {
		return 0, fmt.Errorf("%w: wait must be a duration between 0s and 1m, not %q", kvd.ErrInvalid, v)
	}
	return d, nil
}

// adminBool parses a boolean query parameter (absent: false).
func adminBool(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: %s must be true or false, not %q", kvd.ErrInvalid, name, v)
	}
	return b, nil
}

// pathNode returns the node id in the path (decoded once, as keys are).
func pathNode(r *http.Request, name string) (string, error) {
	id, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil || id == "" || len(id) > 63 || !utf8.ValidString(id) {
		return "", fmt.Errorf("%w: a node id is 1 to 63 characters", kvd.ErrInvalid)
	}
	return id, nil
}

// pathGroup returns the group id in the path.
func pathGroup(r *http.Request) (kvd.GroupID, error) {
	g, err := strconv.ParseUint(mux.Vars(r)["group"], 10, 64)
	if err != nil || g == 0 {
		return 0, fmt.Errorf("%w: a group id is a positive integer, not %q", kvd.ErrInvalid, mux.Vars(r)["group"])
	}
	return kvd.GroupID(g), nil
}

// adminBody reads a small JSON body into v, refusing unknown members and
// members named twice.
func (h *Handler) adminBody(w http.ResponseWriter, r *http.Request, v any) ([]byte, error) {
	body, err := h.readBody(w, r, 64<<10)
	if err != nil {
		return nil, err
	}
	if err := decodeStrict(body, v); err != nil {
		return nil, err
	}
	return body, nil
}

// decodeStrict decodes a JSON object into v: no unknown members, no
// member named twice, nothing after it.
func decodeStrict(body []byte, v any) error {
	if err := checkJSON(body); err != nil {
		return fmt.Errorf("%w: request body: %v", kvd.ErrInvalid, err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", kvd.ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: request body: more than one JSON value", kvd.ErrInvalid)
	}
	return nil
}

// adminAnswer is a membership change's answer and its status (200 or 202).
type adminAnswer struct {
	status int
	body   any
}

// admin serves an admin request with op, forwarding it to the node that
// must make it.
func (h *Handler) admin(w http.ResponseWriter, r *http.Request, body []byte, op func(ctx context.Context) (adminAnswer, error)) {
	h.serve(w, r, kvd.Route{}, body, true, func(ctx context.Context) (responder, error) {
		a, err := op(ctx)
		if err != nil {
			return nil, err
		}
		return func(w http.ResponseWriter) { writeJSON(w, a.status, a.body) }, nil
	})
}

func (h *Handler) addNode(w http.ResponseWriter, r *http.Request) {
	var req api.NodeRequest
	body, err := h.adminBody(w, r, &req)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.admin(w, r, body, func(ctx context.Context) (adminAnswer, error) {
		out, err := h.b.AddNode(ctx, req)
		return adminAnswer{http.StatusOK, out}, err
	})
}

func (h *Handler) removeNode(w http.ResponseWriter, r *http.Request) {
	id, err := pathNode(r, "id")
	if err != nil {
		writeError(w, err, false)
		return
	}
	force, err := adminBool(r, "force")
	if err != nil {
		writeError(w, err, false)
		return
	}
	wait, err := adminWait(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.admin(w, r, nil, func(ctx context.Context) (adminAnswer, error) {
		out, status, err := h.b.RemoveNode(ctx, id, force, wait)
		return adminAnswer{status, out}, err
	})
}

func (h *Handler) addMember(w http.ResponseWriter, r *http.Request) {
	g, err := pathGroup(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	wait, err := adminWait(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var req api.MemberRequest
	body, err := h.adminBody(w, r, &req)
	if err == nil && req.Node == "" {
		err = fmt.Errorf("%w: the body names no node: {\"node\":\"n4\"}", kvd.ErrInvalid)
	}
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.admin(w, r, body, func(ctx context.Context) (adminAnswer, error) {
		out, status, err := h.b.AddMember(ctx, g, req.Node, wait)
		return adminAnswer{status, out}, err
	})
}

func (h *Handler) removeMember(w http.ResponseWriter, r *http.Request) {
	g, err := pathGroup(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	id, err := pathNode(r, "node")
	if err != nil {
		writeError(w, err, false)
		return
	}
	wait, err := adminWait(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.admin(w, r, nil, func(ctx context.Context) (adminAnswer, error) {
		out, status, err := h.b.RemoveMember(ctx, g, id, wait)
		return adminAnswer{status, out}, err
	})
}

func (h *Handler) transferLeader(w http.ResponseWriter, r *http.Request) {
	g, err := pathGroup(r)
	if err != nil {
		writeError(w, err, false)
		return
	}
	var req api.MemberRequest
	body, err := h.adminBody(w, r, &req)
	if err == nil && req.Node == "" {
		err = fmt.Errorf("%w: the body names no node: {\"node\":\"n2\"}", kvd.ErrInvalid)
	}
	if err != nil {
		writeError(w, err, false)
		return
	}
	h.admin(w, r, body, func(ctx context.Context) (adminAnswer, error) {
		out, status, err := h.b.TransferLeader(ctx, g, req.Node)
		return adminAnswer{status, out}, err
	})
}

// peerCall serves a node-to-node call without a group: the body in, an
// encoded answer out.
func (h *Handler) peerCall(fn func(ctx context.Context, body []byte) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := h.readBody(w, r, 1<<20)
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

func (h *Handler) internalMap(w http.ResponseWriter, r *http.Request) {
	h.answer(w, r, false, func(ctx context.Context) (any, error) { return h.b.InternalMap(ctx) })
}
