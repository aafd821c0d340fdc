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
	switch r.URL.Query().Get("nodes") {
	case "":
		writeJSON(w, http.StatusOK, h.ownStatus(r.Context()))
	case "all":
		writeJSON(w, http.StatusOK, h.allStatus(r))
	default:
		writeError(w, fmt.Errorf("%w: nodes takes only \"all\"", kvd.ErrInvalid), false)
	}
}

// ownStatus is this node's status, with its traffic.
func (h *Handler) ownStatus(ctx context.Context) api.Status {
	st := h.b.Status(ctx)
	if h.metrics != nil {
		st.Traffic = h.metrics.traffic.Snapshot()
	}
	return st
}

// statusWait bounds how long GET /v1/status?nodes=all waits for a node.
const statusWait = 2 * time.Second

// allStatus asks every node of the map for its status at once, with the
// caller's token, and says which did not answer. The console polls it;
// nothing runs while nobody asks.
func (h *Handler) allStatus(r *http.Request) api.NodesStatus {
	ctx, cancel := context.WithTimeout(r.Context(), statusWait)
	defer cancel()
	var out api.NodesStatus
	c, err := h.b.Cluster(ctx)
	if err != nil {
		own := h.ownStatus(ctx)
		return api.NodesStatus{Nodes: []api.NodeStatus{{Node: h.b.NodeID(), Up: true, Status: &own}}}
	}
	out.Nodes = make([]api.NodeStatus, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		out.Nodes[i].Node = n.ID
		if n.ID == h.b.NodeID() {
			own := h.ownStatus(ctx)
			out.Nodes[i].Up, out.Nodes[i].Status = true, &own
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := h.peerStatus(ctx, r, n.ID)
			if err != nil {
				out.Nodes[i].Error = clip(err.Error())
				return
			}
			out.Nodes[i].Up, out.Nodes[i].Status = true, st
		}()
	}
	wg.Wait()
	return out
}

// peerStatus fetches node id's GET /v1/status.
func (h *Handler) peerStatus(ctx context.Context, r *http.Request, id string) (*api.Status, error) {
	var st api.Status
	if err := h.peerGet(ctx, r, id, "/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
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
	switch r.URL.Query().Get("nodes") {
	case "":
		writeJSON(w, http.StatusOK, api.Events{Events: h.b.Events()})
		return
	case "all":
	default:
		writeError(w, fmt.Errorf("%w: nodes takes only \"all\"", kvd.ErrInvalid), false)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusWait)
	defer cancel()
	out := api.Events{Events: h.b.Events()}
	c, err := h.b.Cluster(ctx)
	if err == nil {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, n := range c.Nodes {
			if n.ID == h.b.NodeID() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var theirs api.Events
				err := h.peerGet(ctx, r, n.ID, "/v1/events", &theirs)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					out.Missing = append(out.Missing, n.ID)
					return
				}
				out.Events = append(out.Events, theirs.Events...)
			}()
		}
		wg.Wait()
	}
	slices.SortStableFunc(out.Events, func(a, b api.Event) int { return b.Time.Compare(a.Time) })
	slices.Sort(out.Missing)
	writeJSON(w, http.StatusOK, out)
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
