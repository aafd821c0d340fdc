package main

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
)

// Host serves three functions over plain net/http. It needs nothing but
// a kvd.KV, so the same code runs on an embedded store or a cluster.
type Host struct {
	KV kvd.KV
	// Limit requests per Window for the rate limiter.
	Limit  int64
	Window time.Duration
	// Now is the clock (tests move it).
	Now func() time.Time
}

// Handler routes the functions.
func (h *Host) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ratelimit/{client}", h.rateLimit)
	mux.HandleFunc("POST /shorten", h.shorten)
	mux.HandleFunc("GET /s/{code}", h.follow)
	mux.HandleFunc("POST /orders", h.order)
	mux.HandleFunc("POST /stock/{item}", h.restock)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, kvd.ErrInvalid), errors.Is(err, kvd.ErrTooLarge):
		status = http.StatusBadRequest
	case errors.Is(err, kvd.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, kvd.ErrUnavailable), errors.Is(err, kvd.ErrUnknownOutcome):
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// rateLimit is a fixed-window rate limiter: one counter per client and
// window, incremented atomically, vanishing (TTL) once the window is over.
// Concurrent requests on any number of function instances count exactly.
func (h *Host) rateLimit(w http.ResponseWriter, r *http.Request) {
	client := r.PathValue("client")
	now := h.Now()
	window := now.UnixNano() / int64(h.Window)
	key := fmt.Sprintf("ratelimit/%s/%d", client, window)
	resp, err := h.KV.Txn(r.Context(), kvd.Txn{Ops: []kvd.Op{kvd.OpAddTTL(key, 1, 2*h.Window)}})
	if err != nil {
		fail(w, err)
		return
	}
	n, _ := strconv.ParseInt(string(resp.Results[0].Value), 10, 64)
	w.Header().Set("X-RateLimit-Remaining", strconv.FormatInt(max(h.Limit-n, 0), 10))
	if n > h.Limit {
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"allowed": false, "count": n})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"allowed": true, "count": n})
}

// shorten stores a URL under a fresh random code with a create-only put:
// two instances can never hand out the same code for different URLs.
func (h *Host) shorten(w http.ResponseWriter, r *http.Request) {
	var req struct {
		URL string `json:"url"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !strings.HasPrefix(req.URL, "http") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "send {\"url\":\"https://...\"}"})
		return
	}
	for range 5 {
		var b [5]byte
		rand.Read(b[:])
		code := strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
		_, err := h.KV.Put(r.Context(), "short/"+code, []byte(req.URL), kvd.CreateOnly())
		if errors.Is(err, kvd.ErrPreconditionFailed) {
			continue // taken: draw another
		}
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"code": code, "short": "/s/" + code})
		return
	}
	fail(w, fmt.Errorf("no free code found: %w", kvd.ErrUnavailable))
}

func (h *Host) follow(w http.ResponseWriter, r *http.Request) {
	it, err := h.KV.Get(r.Context(), "short/"+r.PathValue("code"), kvd.WithConsistency(kvd.Follower))
	if err != nil {
		fail(w, err)
		return
	}
	http.Redirect(w, r, string(it.Value), http.StatusFound)
}

// Order is a purchase.
type Order struct {
	ID    string `json:"id"`
	User  string `json:"user"`
	Item  string `json:"item"`
	Qty   int64  `json:"qty"`
	Price int64  `json:"price"`
}

// order places an order atomically across groups: it takes the items
// from stock (refusing if there are not enough), records the order, and
// adds it to the user's spending; either all of it happens or none. The
// client's Idempotency-Key makes a retried order (after a timeout) place
// it at most once.
func (h *Host) order(w http.ResponseWriter, r *http.Request) {
	var o Order
	if err := json.NewDecoder(r.Body).Decode(&o); err != nil || o.ID == "" || o.User == "" || o.Item == "" || o.Qty <= 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "send {\"id\",\"user\",\"item\",\"qty\">0,\"price\"}"})
		return
	}
	body, _ := json.Marshal(o)
	stockKey, orderKey := "stock/"+o.Item, "order/"+o.ID
	insufficient := errors.New("not enough stock")
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	err := client.Update(ctx, h.KV, func(ctx context.Context, tx *client.Tx) error {
		if _, err := tx.Get(ctx, orderKey); err == nil {
			return nil // already placed (a retry): nothing more to do
		} else if !errors.Is(err, kvd.ErrNotFound) {
			return err
		}
		it, err := tx.Get(ctx, stockKey)
		if errors.Is(err, kvd.ErrNotFound) {
			return insufficient
		}
		if err != nil {
			return err
		}
		stock, _ := strconv.ParseInt(string(it.Value), 10, 64)
		if stock < o.Qty {
			return insufficient
		}
		tx.Put(stockKey, []byte(strconv.FormatInt(stock-o.Qty, 10)))
		tx.Put(orderKey, body)
		spent, _ := tx.Get(ctx, "spent/"+o.User)
		total, _ := strconv.ParseInt(string(spent.Value), 10, 64)
		tx.Put("spent/"+o.User, []byte(strconv.FormatInt(total+o.Qty*o.Price, 10)))
		return nil
	})
	if errors.Is(err, insufficient) {
		writeJSON(w, http.StatusConflict, map[string]string{"error": "not enough stock"})
		return
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, o)
}

// restock adds to an item's stock.
func (h *Host) restock(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("qty"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "qty must be an integer"})
		return
	}
	v, err := h.KV.Add(r.Context(), "stock/"+r.PathValue("item"), n)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"stock": v})
}
