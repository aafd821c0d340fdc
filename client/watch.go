package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/backoff"
)

// watcher follows GET /v1/watch, reconnecting (to any node) from the last
// cursor when a stream breaks, so no event is lost or repeated.
type watcher struct {
	c      *Client
	prefix string

	// mu protects cursor and node.
	mu     sync.Mutex
	cursor string
	node   int

	events chan kvd.Event
	// failed holds the error that ended the watch, once closed.
	failed    chan struct{}
	failedErr error
	failOnce  sync.Once

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Watch streams the changes to keys with prefix, from cursor since (""
// means from now). A broken stream is resumed on any node from the last
// event's cursor. A watch that cannot resume (its position fell out of
// the retained history) fails with an error matching kvd.ErrCompacted.
func (c *Client) Watch(ctx context.Context, prefix, since string) (kvd.Watcher, error) {
	w := &watcher{c: c, prefix: prefix, cursor: since, events: make(chan kvd.Event, 256), failed: make(chan struct{})}
	// The stream outlives this call: it runs on its own context, which
	// only the call's context can cancel while connecting.
	bg, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	body, err := w.connect(bg)
	if !stop() || err != nil {
		cancel()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	w.cancel = cancel
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.run(bg, body)
	}()
	return w, nil
}

// nodes returns the base URLs to watch from, starting with the last used.
func (w *watcher) nodes() []string {
	r := w.c.route.Load()
	var urls []string
	for _, n := range r.raw.Nodes {
		urls = append(urls, w.c.nodeFor(n.ID, n.HTTP).url)
	}
	urls = append(urls, w.c.cfg.Endpoints...)
	w.mu.Lock()
	start := w.node % len(urls)
	w.mu.Unlock()
	return append(urls[start:], urls[:start]...)
}

// connect opens a stream on the first node that accepts, and reads up to
// the starting cursor.
func (w *watcher) connect(ctx context.Context) (*bufio.Reader, error) {
	var lastErr error
	for i, base := range w.nodes() {
		w.mu.Lock()
		cursor := w.cursor
		w.mu.Unlock()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/watch?prefix="+url.QueryEscape(w.prefix), nil)
		if err != nil {
			return nil, err
		}
		if cursor != "" {
			req.Header.Set("Last-Event-ID", cursor)
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, err := w.c.hc.Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			e := errorFrom(resp.StatusCode, resp.Header, b)
			if resp.StatusCode < 500 {
				return nil, e // compacted, invalid: no other node will do better
			}
			lastErr = e
			continue
		}
		w.mu.Lock()
		w.node += i
		w.mu.Unlock()
		br := bufio.NewReader(&closingReader{rc: resp.Body, ctx: ctx})
		// The first message is id-only: the starting cursor.
		msg, err := readEvent(br)
		if err != nil {
			resp.Body.Close()
			lastErr = err
			continue
		}
		if msg.id != "" {
			w.mu.Lock()
			w.cursor = msg.id
			w.mu.Unlock()
		}
		return br, nil
	}
	return nil, fmt.Errorf("no node accepted the watch: %v: %w", lastErr, kvd.ErrUnavailable)
}

// closingReader closes the body when its context ends, unblocking reads.
type closingReader struct {
	rc   io.ReadCloser
	ctx  context.Context
	once sync.Once
}

func (r *closingReader) Read(p []byte) (int, error) {
	if r.ctx.Err() != nil {
		r.once.Do(func() { r.rc.Close() })
		return 0, r.ctx.Err()
	}
	return r.rc.Read(p)
}

type sseMessage struct {
	event, id, data string
}

// readEvent reads one Server-Sent Events message.
func readEvent(br *bufio.Reader) (sseMessage, error) {
	var m sseMessage
	seen := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return m, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if seen {
				return m, nil
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, val, _ := strings.Cut(line, ":")
		val = strings.TrimPrefix(val, " ")
		seen = true
		switch field {
		case "event":
			m.event = val
		case "id":
			m.id = val
		case "data":
			if m.data != "" {
				m.data += "\n"
			}
			m.data += val
		}
	}
}

// fail ends the watch with err; the first call wins.
func (w *watcher) fail(err error) {
	w.failOnce.Do(func() {
		w.failedErr = err
		close(w.failed)
	})
}

// reconnectPace paces a broken watch's reconnections: 50 ms, doubling, up
// to 2 s, from the first after an event.
var reconnectPace = backoff.Policy{Base: 50 * time.Millisecond, Max: 2 * time.Second}

// run reads events until the watch is closed, reconnecting as needed.
func (w *watcher) run(ctx context.Context, br *bufio.Reader) {
	defer w.fail(fmt.Errorf("watch closed: %w", kvd.ErrClosed))
	failures := 0 // reconnections since the last event
	for {
		for br != nil {
			msg, err := readEvent(br)
			if err != nil {
				break
			}
			if msg.event == "error" {
				var e api.Error
				_ = json.Unmarshal([]byte(msg.data), &e)
				w.fail(&Error{Code: e.Error.Code, Message: e.Error.Message})
				return
			}
			if msg.data == "" {
				// A progress mark: the stream has read this far with
				// nothing to send; resuming from it skips nothing.
				if msg.id != "" {
					w.mu.Lock()
					w.cursor = msg.id
					w.mu.Unlock()
				}
				continue
			}
			var we api.WatchEvent
			if err := json.Unmarshal([]byte(msg.data), &we); err != nil {
				continue
			}
			ev := kvd.Event{Type: we.Type, Key: we.Key, Value: we.Value, Version: we.Version, Cursor: msg.id}
			select {
			case w.events <- ev:
			case <-ctx.Done():
				return
			}
			w.mu.Lock()
			w.cursor = msg.id
			w.mu.Unlock()
			failures = 0
		}
		if ctx.Err() != nil {
			return
		}
		// The stream broke: resume on the next node from the last cursor.
		w.mu.Lock()
		w.node++
		w.mu.Unlock()
		if reconnectPace.Wait(ctx, failures) != nil {
			return
		}
		failures++
		var err error
		br, err = w.connect(ctx)
		if err != nil {
			if e, ok := err.(*Error); ok && e.Status < 500 {
				w.fail(err)
				return
			}
			br = nil
		}
	}
}

// Next waits for the next event.
func (w *watcher) Next(ctx context.Context) (kvd.Event, error) {
	select {
	case ev := <-w.events:
		return ev, nil
	case <-w.failed:
		select {
		case ev := <-w.events:
			return ev, nil
		default:
		}
		return kvd.Event{}, fmt.Errorf("watch %q: %w", w.prefix, w.failedErr)
	case <-ctx.Done():
		return kvd.Event{}, ctx.Err()
	}
}

// Close ends the watch and waits for its reader.
func (w *watcher) Close() error {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
	return nil
}
