package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"

	"github.com/kvd-project/kvd/api"
)

// JSONErrors wraps a listener so that the errors net/http answers by
// itself, before any handler runs (a malformed request line or header, a
// bad percent-encoding in the path, a negative Content-Length, headers
// too large, an unsupported transfer encoding), are JSON like every
// other error of the API instead of plain text. Serve with ConnContext
// and ConnState set too (http.Server.ConnContext, ConnState), so that
// nothing a handler writes is ever taken for such an error.
//
// net/http writes each such answer in one write: a status line, exactly
// these headers, and the status again as the body. It does so only while
// no handler is answering on the connection: on a new connection, or
// after the last answer was flushed and net/http went back to reading.
// The wrapper rewrites only then, and only writes of exactly that shape.
func JSONErrors(ln net.Listener) net.Listener { return jsonErrorListener{ln} }

// ConnContext is the http.Server.ConnContext hook that goes with
// JSONErrors: it lets the handler mark its connection busy.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if jc, ok := c.(*jsonErrorConn); ok {
		return context.WithValue(ctx, connKey{}, jc)
	}
	return ctx
}

type connKey struct{}

// ConnState is the http.Server.ConnState hook that goes with JSONErrors:
// net/http tells it a connection is idle once an answer was flushed
// whole, and only then may its writes be net/http's own again. (A read
// does not tell as much: net/http reads in the background while an
// answer is still being flushed.)
func ConnState(c net.Conn, st http.ConnState) {
	if jc, ok := c.(*jsonErrorConn); ok && st == http.StateIdle {
		jc.state.Store(connIdle)
	}
}

// markAnswering marks the request's connection as answering until the
// returned function is called (when the handler returns; net/http then
// flushes the answer, and goes back to reading).
func markAnswering(r *http.Request) func() {
	jc, ok := r.Context().Value(connKey{}).(*jsonErrorConn)
	if !ok {
		return func() {}
	}
	jc.state.Store(connAnswering)
	return func() { jc.state.Store(connFlushing) }
}

const plainErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

type jsonErrorListener struct{ net.Listener }

func (l jsonErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &jsonErrorConn{Conn: c}, nil
}

// A connection's state, as far as its writes go.
const (
	connIdle      int32 = iota // net/http is reading a request, or has not answered it
	connAnswering              // a handler is answering
	connFlushing               // the handler returned; its answer is being flushed
)

type jsonErrorConn struct {
	net.Conn
	state atomic.Int32
}

func (c *jsonErrorConn) Write(p []byte) (int, error) {
	if c.state.Load() == connIdle {
		if out, ok := rewritePlainError(p); ok {
			if _, err := c.Conn.Write(out); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// expectationFailed is net/http's whole answer to an Expect header other
// than 100-continue, written before any handler runs.
var expectationFailed = regexp.MustCompile("^HTTP/1\\.1 417 Expectation Failed\r\nConnection: close\r\nDate: [^\r\n]+\r\nContent-Length: 0\r\n\r\n$")

// plainToTLS is net/http's whole answer to plain HTTP on a TLS port,
// written on the raw connection.
const plainToTLS = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

// rewritePlainError turns net/http's plain-text error answer into the
// API's JSON error, or reports that p is not one. The statuses outside
// the API's codes become 400 invalid_request: an unsupported protocol
// version (505) and an unsupported expectation (417).
func rewritePlainError(p []byte) ([]byte, bool) {
	if string(p) == plainToTLS {
		return jsonError(http.StatusBadRequest, api.CodeInvalidRequest, "this port serves HTTPS: plain HTTP is refused"), true
	}
	if expectationFailed.Match(p) {
		return jsonError(http.StatusBadRequest, api.CodeInvalidRequest, "Expect asks for what the server does not do: only 100-continue is supported"), true
	}
	const proto = "HTTP/1.1 "
	if len(p) < len(proto)+3 || !bytes.HasPrefix(p, []byte(proto)) || (p[len(proto)] != '4' && p[len(proto)] != '5') {
		return nil, false
	}
	i := bytes.Index(p, []byte(plainErrorHeaders))
	if i < 0 || bytes.Contains(p[:i], []byte("\r\n")) {
		return nil, false
	}
	status, err := strconv.Atoi(string(p[len(proto) : len(proto)+3]))
	if err != nil {
		return nil, false
	}
	line, msg := string(p[len(proto):i]), string(p[i+len(plainErrorHeaders):])
	if msg != line && !(status == http.StatusNotImplemented && msg == "Unsupported transfer encoding") {
		return nil, false // not net/http's own answer
	}
	code := api.CodeInvalidRequest
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		code = api.CodeHeadersTooLarge
	case http.StatusNotImplemented:
		code = api.CodeNotImplemented
	case http.StatusRequestEntityTooLarge:
		code = api.CodeTooLarge
	case http.StatusHTTPVersionNotSupported:
		status = http.StatusBadRequest // the client's mistake; the API has no code of its own for it
	default:
		if status >= 500 {
			code = api.CodeInternal
		}
	}
	return jsonError(status, code, msg), true
}

// jsonError is a whole answer that closes the connection, with the API's
// JSON error and any extra header lines.
func jsonError(status int, code, msg string, headers ...string) []byte {
	body, _ := json.Marshal(api.Error{Error: api.ErrorDetail{Code: code, Message: msg}})
	body = append(body, '\n')
	out := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n", status, http.StatusText(status))
	for _, h := range headers {
		out = append(append(out, h...), "\r\n"...)
	}
	return fmt.Appendf(out, "Content-Length: %d\r\n\r\n%s", len(body), body)
}
