package httpapi

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// newConnGrace is how long a connection may stay open without sending a
// request once the server is shutting down.
const newConnGrace = 250 * time.Millisecond

// newConns tracks the HTTP connections that have not yet sent a byte of
// a request. http.Server.Shutdown waits up to five seconds for such a
// connection, a spare that a client's pool dialed and never used, as if
// it carried a request; shutdown closes them instead.
type newConns struct {
	mu sync.Mutex // protects m
	m  map[net.Conn]time.Time
}

// track is the server's ConnState hook.
func (n *newConns) track(c net.Conn, st http.ConnState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st == http.StateNew {
		if n.m == nil {
			n.m = map[net.Conn]time.Time{}
		}
		n.m[c] = time.Now()
		return
	}
	delete(n.m, c)
}

// closeOlder closes the connections that have been waiting for their first
// request for longer than d.
func (n *newConns) closeOlder(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c, since := range n.m {
		if time.Since(since) > d {
			c.Close()
			delete(n.m, c)
		}
	}
}

// shutdownHTTP drains srv: it stops accepting, waits for requests in
// flight until ctx ends, and closes connections that carry none.
func shutdownHTTP(ctx context.Context, srv *http.Server, conns *newConns) error {
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	tick := time.NewTicker(newConnGrace / 5)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			conns.closeOlder(newConnGrace)
		}
	}
}
