package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
	"github.com/kvd-project/kvd/internal/wire"
)

// responder writes a successful response.
type responder func(w http.ResponseWriter)

// effect is what a request may do, which decides what a failure of its
// forward means.
type effect int

const (
	// reads change nothing: a failure leaves the request unavailable.
	reads effect = iota
	// writes may change state: a failure once sent is an unknown outcome.
	writes
	// repeatable writes are safe to make twice (the operations API): one
	// lost on a connection a dead peer left open goes to the next node.
	repeatable
)

// write tells whether the request may change state.
func (e effect) write() bool { return e != reads }

// serve runs op, and if this node does not lead the key's group, forwards
// the request to the leader: following leader hints, and waiting a little
// during an election, within the request's deadline. body is the request
// body already read (nil if none).
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rt kvd.Route, body []byte, e effect, op func(ctx context.Context) (responder, error)) {
	write := e.write()
	ctx, cancel := context.WithTimeout(r.Context(), h.o.RequestTimeout)
	defer cancel()
	// Looking for a leader stops after ForwardBudget: a node cut off
	// from the leader answers 503 soon, so the client can try elsewhere.
	findBy := time.Now().Add(h.o.ForwardBudget)
	forwarded := r.Header.Get(api.HeaderForwarded) != ""
	waits := 0 // waits for the group to settle so far
	tried := map[string]bool{}
	hint := "" // the leader named by the last node forwarded to
	for {
		respond, err := op(ctx)
		if err == nil {
			respond(w)
			return
		}
		if !errors.Is(err, kvd.ErrNotLeader) || rt.Direct || forwarded {
			writeError(w, err, write)
			return
		}
		leader := kvd.LeaderHint(err)
		if hint != "" && !tried[hint] {
			leader = hint // fresher than this node's own view
		}
		hint = ""
		if leader != "" && leader != h.b.NodeID() && !tried[leader] {
			done, next := h.forward(ctx, w, r, body, leader, e)
			if done {
				return
			}
			tried[leader] = true
			hint = next
		} else {
			// No leader known, or the known one failed: wait for the
			// group to settle, then look again.
			if settlePace.Wait(ctx, waits) != nil {
				writeError(w, err, write)
				return
			}
			waits++
			clear(tried)
		}
		if ctx.Err() != nil || time.Now().After(findBy) {
			writeError(w, err, write)
			return
		}
	}
}

// settlePace paces a request's waits for its group to elect a leader when
// none is known: 25 ms, doubling, up to 500 ms.
var settlePace = backoff.Policy{Base: 25 * time.Millisecond, Max: 500 * time.Millisecond}

// forward sends the request to node id and relays its answer. It returns
// done = false, having written nothing, when the request certainly had no
// effect there and may be tried again (the node was unreachable, or it
// answered 503, naming the leader it knows of in hint); it returns done =
// true once it has written a response.
func (h *Handler) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, id string, e effect) (done bool, hint string) {
	write := e.write()
	addr, ok := h.b.PeerHTTP(id)
	if !ok {
		return false, ""
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, h.o.ForwardScheme+"://"+addr+r.URL.RequestURI(), rd)
	if err != nil {
		writeError(w, fmt.Errorf("forward to %s: %w", id, err), write)
		return true, ""
	}
	for k, vs := range r.Header {
		switch k {
		case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection":
			continue
		}
		req.Header[k] = vs
	}
	req.Header.Set(api.HeaderForwarded, h.b.NodeID())
	// Whether the request went on a kept-alive connection: one a peer
	// that died left in the pool fails only once the request is on it.
	var reused bool
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
	}))
	resp, err := h.fwd.Do(req)
	if err != nil {
		if !write || wire.NeverSent(err) {
			return false, ""
		}
		if reused && e == repeatable {
			// Try the next node rather than answer an unknown outcome
			// for a peer that is most likely gone.
			return false, ""
		}
		writeError(w, fmt.Errorf("forwarded to leader %s, no answer: %v: %w", id, err, kvd.ErrUnknownOutcome), write)
		return true, ""
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable && ctx.Err() == nil {
		// 503 promises nothing was done; the leader may have moved.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return false, resp.Header.Get(api.HeaderLeader)
	}
	for _, k := range []string{"Content-Type", "Etag", "Retry-After", api.HeaderLeader, api.HeaderNode, api.HeaderExpires, "Content-Length"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true, ""
}
