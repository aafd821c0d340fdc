package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// watchWriteTimeout bounds each write to a watch stream: a client that
// stops reading for that long loses its stream (and resumes from its
// cursor when it comes back).
const watchWriteTimeout = 30 * time.Second

// watch serves GET /v1/watch as Server-Sent Events: an id-only message
// with the starting cursor, then one message per change, each with an id
// that resumes right after it. A comment every 15 s keeps idle
// connections open. A watch that cannot resume is refused with 410.
func (h *Handler) watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix := q.Get("prefix")
	if !utf8.ValidString(prefix) {
		writeError(w, fmt.Errorf("%w: prefix is not valid UTF-8", kvd.ErrInvalid), false)
		return
	}
	if !h.allow(w, r, principalOf(r).CanReadRange(prefix, "", ""), fmt.Sprintf("watching prefix %q", prefix)) {
		return
	}
	since := q.Get("since")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		since = id
	}
	ctx, cancel := h.untilShutdown(r.Context())
	defer cancel()
	st := newSSEStream(w)
	done := make(chan error, 1)
	go func() {
		done <- h.b.Watch(ctx, prefix, since, func(cursor string) error { return st.start(prefix, cursor) }, st.send)
	}()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	// With auth, the token is checked again while the watch runs: a
	// revoked or expired token ends it.
	var recheck <-chan time.Time
	if h.b.AuthOn() && principalOf(r) != nil {
		t := time.NewTicker(authRecheck)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case <-keepalive.C:
			if err := st.keepAlive(); err != nil {
				cancel()
				<-done
				return
			}
		case <-recheck:
			p, err := h.b.Authenticate(tokenOf(r))
			if err == nil && !p.CanReadRange(prefix, "", "") {
				err = fmt.Errorf("%w: token %s no longer has a grant for watching prefix %q", kvd.ErrForbidden, p.Name, prefix)
			}
			if err != nil {
				cancel()
				<-done
				st.end(err, false)
				return
			}
		case err := <-done:
			st.end(err, ctx.Err() != nil)
			return
		}
	}
}

// authRecheck is how often a watch checks its token again.
const authRecheck = 500 * time.Millisecond

// untilShutdown returns a context that also ends when the server shuts
// down: watches are endless requests, which a drain would wait for.
func (h *Handler) untilShutdown(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	if h.o.Shutdown != nil {
		go func() {
			select {
			case <-h.o.Shutdown:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}

// sseStream writes one watch's Server-Sent Events. The watch writes each
// event itself, so that an event leaves the node's watch buffer only once
// it is on the wire, and a client that stops reading holds up only its
// own watch; the handler writes the keep-alives. Every write has a
// deadline: a client that stops reading does not hold the stream
// forever.
type sseStream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// mu keeps the watch's writes and the keep-alives apart; it protects
	// w and streaming.
	mu        sync.Mutex
	streaming bool
}

func newSSEStream(w http.ResponseWriter) *sseStream {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's write timeout
	return &sseStream{w: w, rc: rc}
}

// write writes pieces as they are, not formatted into one buffer (an
// event's JSON is held once while the client is slow to take it), and
// flushes them. The caller holds mu.
func (s *sseStream) write(pieces ...[]byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	for _, p := range pieces {
		if _, err := s.w.Write(p); err != nil {
			return err
		}
	}
	return s.rc.Flush()
}

// start answers 200 and sends the starting cursor.
func (s *sseStream) start(prefix, cursor string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.Header().Set("Content-Type", "text/event-stream")
	s.w.Header().Set("Cache-Control", "no-cache")
	s.w.WriteHeader(http.StatusOK)
	s.streaming = true
	return s.write(fmt.Appendf(nil, ": watching %q\nid: %s\n\n", prefix, cursor))
}

// send sends one event, or an id alone for a progress mark.
func (s *sseStream) send(ev kvd.Event) error {
	if ev.Type == "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.write(fmt.Appendf(nil, "id: %s\n\n", ev.Cursor))
	}
	b, err := json.Marshal(api.WatchEvent{Type: ev.Type, Key: ev.Key, Value: ev.Value, Version: ev.Version})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(fmt.Appendf(nil, "id: %s\ndata: ", ev.Cursor), b, []byte("\n\n"))
}

// keepAlive sends a comment, once the stream has started.
func (s *sseStream) keepAlive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.streaming {
		return nil
	}
	return s.write([]byte(": keep-alive\n\n"))
}

// end finishes the answer once the watch returned err: an error before
// the stream started is answered as usual; one after is sent as an error
// event, unless the request or the server ended the watch (cancelled).
func (s *sseStream) end(err error, cancelled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.streaming {
		if err != nil {
			writeError(s.w, err, false)
		}
		return
	}
	if err != nil && !cancelled {
		_, code := statusOf(err, false)
		b, _ := json.Marshal(api.Error{Error: api.ErrorDetail{Code: code, Message: err.Error()}})
		_ = s.write([]byte("event: error\ndata: "), b, []byte("\n\n"))
	}
}
