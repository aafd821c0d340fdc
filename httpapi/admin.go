package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
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

// The operations API (/v1/admin/): membership changes. Each is served by
// the node that must make it (the system group's leader, or for a
// leadership transfer the group's leader): another node forwards it
// there, as it forwards a write.

// defaultWait is how long a membership change is waited for before it is
// answered 202 (in progress) when the request names no ?wait.
const defaultWait = 8 * time.Second

// adminArgs are what an admin request's path, query and body say. Each is
// read only where the route has it: the group and node ids in the path,
// ?wait and ?force in the query, a {"node":..} or node body.
type adminArgs struct {
	group kvd.GroupID
	node  string // from the path, or the body's "node"
	wait  time.Duration
	force bool
	// add is the body of a node to add.
	add  api.NodeRequest
	body []byte
}

// decodeBody decodes an admin body strictly into v (an empty body, where
// allowed, leaves v zero).
func decodeBody(a adminArgs, v any, emptyOK bool) error {
	if emptyOK && len(bytes.TrimSpace(a.body)) == 0 {
		return nil
	}
	return decodeStrict(a.body, v, "request body")
}

// adminBody is the kind of body an admin request carries.
type adminBody int

const (
	noBody     adminBody = iota
	nodeBody             // api.NodeRequest
	memberBody           // api.MemberRequest, which must name its node
	rawBody              // decoded by the operation (decodeBody)
)

// readAdmin parses an admin request whose body is of kind.
func (h *Handler) readAdmin(w http.ResponseWriter, r *http.Request, kind adminBody) (a adminArgs, err error) {
	vars := mux.Vars(r)
	if v, ok := vars["group"]; ok {
		g, err := strconv.ParseUint(v, 10, 64)
		if err != nil || g == 0 {
			return a, fmt.Errorf("%w: a group id is a positive integer, not %q", kvd.ErrInvalid, v)
		}
		a.group = kvd.GroupID(g)
	}
	for _, name := range []string{"id", "node"} {
		if v, ok := vars[name]; ok {
			id, err := url.PathUnescape(v)
			if err != nil || id == "" || len(id) > 63 || !utf8.ValidString(id) {
				return a, fmt.Errorf("%w: a node id is 1 to 63 characters", kvd.ErrInvalid)
			}
			a.node = id
		}
	}
	q := r.URL.Query()
	a.wait = defaultWait
	if v := q.Get("wait"); v != "" {
		if a.wait, err = time.ParseDuration(v); err != nil || a.wait < 0 || a.wait > time.Minute {
			return a, fmt.Errorf("%w: wait must be a duration between 0s and 1m, not %q", kvd.ErrInvalid, v)
		}
	}
	if v := q.Get("force"); v != "" {
		if a.force, err = strconv.ParseBool(v); err != nil {
			return a, fmt.Errorf("%w: force must be true or false, not %q", kvd.ErrInvalid, v)
		}
	}
	if kind == noBody {
		return a, nil
	}
	if a.body, err = h.readBody(w, r, 64<<10); err != nil {
		return a, err
	}
	switch kind {
	case nodeBody:
		return a, decodeStrict(a.body, &a.add, "request body")
	case rawBody:
		return a, nil
	}
	var m api.MemberRequest
	if err := decodeStrict(a.body, &m, "request body"); err != nil {
		return a, err
	}
	if m.Node == "" {
		return a, fmt.Errorf("%w: the body names no node: {\"node\":\"n4\"}", kvd.ErrInvalid)
	}
	a.node = m.Node
	return a, nil
}

// checkSlotPairs checks that every slot range of a move's body is a pair
// of integers: decoding into [2]int would drop a third number silently.
func checkSlotPairs(body []byte) error {
	var raw struct {
		Slots []json.RawMessage `json:"slots"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return fmt.Errorf("%w: request body: %v", kvd.ErrInvalid, err)
	}
	for _, r := range raw.Slots {
		var pair []int
		if err := json.Unmarshal(r, &pair); err != nil || len(pair) != 2 {
			return fmt.Errorf("%w: slot range %s: a range is a pair [first, last] of slots 0 to %d", kvd.ErrInvalid, r, kvd.SlotCount-1)
		}
	}
	return nil
}

// decodeStrict decodes the JSON object body (what names it in errors)
// into v: no unknown members, no member named twice, nothing after it.
func decodeStrict(body []byte, v any, what string) error {
	if err := checkJSON(body); err != nil {
		return fmt.Errorf("%w: %s: %v", kvd.ErrInvalid, what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s: %v", kvd.ErrInvalid, what, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: %s: trailing data", kvd.ErrInvalid, what)
	}
	return nil
}

// admin serves an admin request: it parses it (with a body of kind) and
// runs op, which answers a value and its status
// (200, or 202 for a change in progress), forwarding it to the node that
// must make it.
func (h *Handler) admin(kind adminBody, op func(ctx context.Context, a adminArgs) (any, int, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.allowAdmin(w, r) {
			return
		}
		a, err := h.readAdmin(w, r, kind)
		if err != nil {
			writeError(w, err, false)
			return
		}
		h.serve(w, r, kvd.Route{}, a.body, repeatable, func(ctx context.Context) (responder, error) {
			out, status, err := op(ctx, a)
			if err != nil {
				return nil, err
			}
			return func(w http.ResponseWriter) { writeJSON(w, status, out) }, nil
		})
	}
}

// bare refuses a request with a query or a body (400): next takes
// neither, and a mistyped parameter must not pass for its default.
func bare(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" {
			writeError(w, fmt.Errorf("%w: %s %s takes no parameter", kvd.ErrInvalid, r.Method, r.URL.Path), false)
			return
		}
		var one [1]byte
		if n, _ := io.ReadFull(r.Body, one[:]); n > 0 {
			writeError(w, fmt.Errorf("%w: %s %s takes no body", kvd.ErrInvalid, r.Method, r.URL.Path), false)
			return
		}
		next(w, r)
	}
}

// adminRoutes registers the operations API.
func (h *Handler) adminRoutes(r *mux.Router) {
	r.HandleFunc("/v1/admin/nodes", h.admin(nodeBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		out, err := h.b.AddNode(ctx, a.add)
		return out, http.StatusOK, err
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/nodes/{id}", h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		return h.b.RemoveNode(ctx, a.node, a.force, a.wait)
	})).Methods(http.MethodDelete)
	r.HandleFunc("/v1/admin/groups/{group}/members", h.admin(memberBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		return h.b.AddMember(ctx, a.group, a.node, a.wait)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/groups/{group}/members/{node}", h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		return h.b.RemoveMember(ctx, a.group, a.node, a.wait)
	})).Methods(http.MethodDelete)
	r.HandleFunc("/v1/admin/groups/{group}/leader", h.admin(memberBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		return h.b.TransferLeader(ctx, a.group, a.node)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/groups", h.admin(rawBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		var req api.GroupRequest
		if err := decodeBody(a, &req, true); err != nil {
			return nil, 0, err
		}
		return h.b.CreateGroup(ctx, req, a.wait)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/groups/{group}", h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		return h.b.DeleteGroup(ctx, a.group, a.wait)
	})).Methods(http.MethodDelete)
	r.HandleFunc("/v1/admin/moves", h.admin(rawBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		var req api.MoveRequest
		if err := decodeBody(a, &req, false); err != nil {
			return nil, 0, err
		}
		if err := checkSlotPairs(a.body); err != nil {
			return nil, 0, err
		}
		return h.b.StartMove(ctx, req)
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/moves", h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		out, err := h.b.Moves(ctx)
		return out, http.StatusOK, err
	})).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/rebalance", h.admin(rawBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		var req api.RebalanceRequest
		if err := decodeBody(a, &req, true); err != nil {
			return nil, 0, err
		}
		out, err := h.b.Rebalance(ctx, req.DryRun)
		return out, http.StatusOK, err
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/tokens", h.admin(rawBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		var req api.TokenRequest
		if err := decodeBody(a, &req, false); err != nil {
			return nil, 0, err
		}
		out, err := h.b.CreateToken(ctx, req)
		return out, http.StatusOK, err
	})).Methods(http.MethodPost)
	r.HandleFunc("/v1/admin/tokens", h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		out, err := h.b.Tokens(ctx)
		return out, http.StatusOK, err
	})).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/tokens/{name}", h.adminOnly(func(w http.ResponseWriter, r *http.Request) {
		name, err := url.PathUnescape(mux.Vars(r)["name"])
		if err != nil {
			writeError(w, fmt.Errorf("%w: token name: %v", kvd.ErrInvalid, err), false)
			return
		}
		h.answer(w, r, true, func(ctx context.Context) (any, error) {
			return map[string]string{"revoked": name}, h.b.RevokeToken(ctx, name)
		})
	})).Methods(http.MethodDelete)
	r.HandleFunc("/v1/admin/encryption", bare(h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		out, err := h.b.EncryptionStatus(ctx)
		return out, http.StatusOK, err
	}))).Methods(http.MethodGet)
	r.HandleFunc("/v1/admin/encryption/rotate", bare(h.admin(noBody, func(ctx context.Context, a adminArgs) (any, int, error) {
		out, err := h.b.RotateKey(ctx)
		return out, http.StatusOK, err
	}))).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/encryption", h.peerCall(h.b.InternalEncryption)).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/join", h.peerCall(h.b.Join)).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/mapedit", h.peerCall(h.b.EditMap)).Methods(http.MethodPost)
	r.HandleFunc("/v1/internal/map", h.internalMap).Methods(http.MethodGet)
}

func (h *Handler) internalMap(w http.ResponseWriter, r *http.Request) {
	h.answer(w, r, false, func(ctx context.Context) (any, error) { return h.b.InternalMap(ctx) })
}
