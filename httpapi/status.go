package httpapi

import "net/http"

func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) {
	c, err := h.b.Cluster(r.Context())
	if err != nil {
		writeError(w, err, false)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.b.Status(r.Context()))
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
