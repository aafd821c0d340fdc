package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) {
	c, err := h.b.Cluster(r.Context())
	if err != nil {
		writeError(w, err, false)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	all, ok := allNodes(w, r)
	if !ok {
		return
	}
	if !all {
		writeJSON(w, http.StatusOK, h.ownStatus(r.Context()))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), peerWait)
	defer cancel()
	var out api.NodesStatus
	for _, a := range askNodes[api.Status](ctx, h, r, "/v1/status", h.ownStatus) {
		ns := api.NodeStatus{Node: a.node, Up: a.err == nil}
		if a.err != nil {
			ns.Error = clip(a.err.Error())
		} else {
			ns.Status = &a.v
		}
		out.Nodes = append(out.Nodes, ns)
	}
	writeJSON(w, http.StatusOK, out)
}

// allNodes reads the nodes parameter of GET /v1/status and /v1/events:
// "" (this node) or "all". Anything else is answered 400 (ok false).
func allNodes(w http.ResponseWriter, r *http.Request) (all, ok bool) {
	switch v := r.URL.Query()["nodes"]; {
	case len(v) == 0:
		return false, true
	case len(v) == 1 && v[0] == "all":
		return true, true
	}
	writeError(w, fmt.Errorf("%w: nodes takes only \"all\", once", kvd.ErrInvalid), false)
	return false, false
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": h.b.NodeID()})
}

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.b.Ready(); err != nil {
		writeError(w, err, false)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "node": h.b.NodeID()})
}

// ownStatus is this node's status, with its traffic.
func (h *Handler) ownStatus(ctx context.Context) api.Status {
	st := h.b.Status(ctx)
	if h.metrics != nil {
		st.Traffic = h.metrics.traffic.Snapshot()
	}
	return st
}

// peerWait bounds how long GET /v1/status?nodes=all and
// /v1/events?nodes=all wait for a node.
const peerWait = 2 * time.Second

// nodeAnswer is one node's answer to askNodes, or why there is none.
type nodeAnswer[T any] struct {
	node string
	v    T
	err  error
}

// askNodes asks every node of the map for path at once, with the
// caller's token, within ctx; this node answers with own. The answers
// are in the map's order. Nothing runs for it while nobody asks.
func askNodes[T any](ctx context.Context, h *Handler, r *http.Request, path string, own func(context.Context) T) []nodeAnswer[T] {
	c, err := h.b.Cluster(ctx)
	if err != nil {
		return []nodeAnswer[T]{{node: h.b.NodeID(), v: own(ctx)}}
	}
	out := make([]nodeAnswer[T], len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		out[i].node = n.ID
		if n.ID == h.b.NodeID() {
			out[i].v = own(ctx)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].err = h.peerGet(ctx, r, n.ID, path, &out[i].v)
		}()
	}
	wg.Wait()
	return out
}

// peerGet fetches path from node id with the caller's token, into out.
func (h *Handler) peerGet(ctx context.Context, r *http.Request, id, path string, out any) error {
	addr, ok := h.b.PeerHTTP(id)
	if !ok {
		return fmt.Errorf("no address for node %s", id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cmp.Or(h.o.ForwardScheme, "http")+"://"+addr+path, nil)
	if err != nil {
		return err
	}
	if v := r.Header.Get("Authorization"); v != "" {
		req.Header.Set("Authorization", v)
	}
	resp, err := h.fwd.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("node %s answered %s", id, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(out); err != nil {
		return fmt.Errorf("node %s: %w", id, err)
	}
	return nil
}

// eventsList answers GET /v1/events: this node's events, or with
// ?nodes=all every node's, merged, the newest first.
func (h *Handler) eventsList(w http.ResponseWriter, r *http.Request) {
	all, ok := allNodes(w, r)
	if !ok {
		return
	}
	if !all {
		writeJSON(w, http.StatusOK, api.Events{Events: h.b.Events()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), peerWait)
	defer cancel()
	var out api.Events
	own := func(context.Context) api.Events { return api.Events{Events: h.b.Events()} }
	for _, a := range askNodes[api.Events](ctx, h, r, "/v1/events", own) {
		if a.err != nil {
			out.Missing = append(out.Missing, a.node)
			continue
		}
		out.Events = append(out.Events, a.v.Events...)
	}
	slices.SortStableFunc(out.Events, func(a, b api.Event) int { return b.Time.Compare(a.Time) })
	slices.Sort(out.Missing)
	writeJSON(w, http.StatusOK, out)
}
