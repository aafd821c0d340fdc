package httpapi

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd/api"
)

// ConnLimiter caps the connections a listener keeps open at once, so
// that clients holding connections cannot take the descriptors the node
// needs for its files and its peers. Past the cap a new connection gets
// a 503 unavailable answer (JSON, Connection: close) and is closed at
// once.
type ConnLimiter struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Uint64
	// refusing bounds the refusals being answered at once.
	refusing chan struct{}
}

// LimitConns wraps ln so that at most max of its connections are open
// at once (0: no cap).
func LimitConns(ln net.Listener, max int) *ConnLimiter {
	return &ConnLimiter{Listener: ln, max: int64(max), refusing: make(chan struct{}, 64)}
}

// Accept returns the next connection under the cap, answering and
// closing those past it.
func (l *ConnLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); l.max > 0 && n > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			select {
			case l.refusing <- struct{}{}:
				go func() {
					defer func() { <-l.refusing }()
					refuseConn(c, l.max)
				}()
			default: // answering too many already: just close
				_ = c.Close()
			}
			continue
		}
		return &limitedConn{Conn: c, l: l}, nil
	}
}

// Open returns the connections open now.
func (l *ConnLimiter) Open() int64 { return l.open.Load() }

// Refused returns how many connections were refused for the cap.
func (l *ConnLimiter) Refused() uint64 { return l.refused.Load() }

// refuseConn answers a connection past the cap and closes it: it sends
// the answer, ends its side, and reads what the client sent for a moment,
// so that closing does not reset the connection before the answer is read.
func refuseConn(c net.Conn, max int64) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	answer := jsonError(http.StatusServiceUnavailable, api.CodeUnavailable,
		fmt.Sprintf("the node has %d connections open, its limit; retry shortly or through another node", max), "Retry-After: 1")
	if _, err := c.Write(answer); err != nil {
		return
	}
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

type limitedConn struct {
	net.Conn
	l    *ConnLimiter
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
