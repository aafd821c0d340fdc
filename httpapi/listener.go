package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/kvd-project/kvd/api"
)

// JSONErrors wraps a listener so that the errors net/http answers by
// itself, before any handler runs (a malformed request line or header, a
// bad percent-encoding in the path, a negative Content-Length, headers
// too large, an unsupported transfer encoding), are JSON like every
// other error of the API instead of plain text.
//
// net/http writes each such answer in one write, as a status line
// followed by exactly these headers; a handler's answer always carries
// other headers too (Date, X-Kvd-Node), so it never has this shape.
func JSONErrors(ln net.Listener) net.Listener { return jsonErrorListener{ln} }

const plainErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

type jsonErrorListener struct{ net.Listener }

func (l jsonErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return jsonErrorConn{c}, nil
}

type jsonErrorConn struct{ net.Conn }

func (c jsonErrorConn) Write(p []byte) (int, error) {
	if out, ok := rewritePlainError(p); ok {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// rewritePlainError turns net/http's plain-text error answer into the
// API's JSON error, or reports that p is not one.
func rewritePlainError(p []byte) ([]byte, bool) {
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
	msg := string(p[i+len(plainErrorHeaders):])
	code := api.CodeInvalidRequest
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		code = api.CodeHeadersTooLarge
	case http.StatusNotImplemented:
		code = api.CodeNotImplemented
	case http.StatusRequestEntityTooLarge:
		code = api.CodeTooLarge
	default:
		if status >= 500 {
			code = api.CodeInternal
		}
	}
	body, _ := json.Marshal(api.Error{Error: api.ErrorDetail{Code: code, Message: msg}})
	body = append(body, '\n')
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), len(body), body), true
}
