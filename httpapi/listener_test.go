package httpapi

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// A value that is, byte for byte, net/http's plain-text error answer must
// reach the client untouched: only net/http's own answers are rewritten.
func TestJSONErrors_NeverRewriteAHandlersAnswer(t *testing.T) {
	plain := []byte("HTTP/1.1 400 Bad Request" + plainErrorHeaders + "400 Bad Request")
	for name, val := range map[string][]byte{
		"exactly net/http's answer":    plain,
		"its shape, another body":      append(append([]byte(nil), plain[:len(plain)-15]...), bytes.Repeat([]byte("x"), 8192)...),
		"net/http's answer, then more": append(append([]byte(nil), plain...), bytes.Repeat([]byte("y"), 8192)...),
	} {
		t.Run(name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			srv := &http.Server{ConnContext: ConnContext, ConnState: ConnState, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer markAnswering(r)()
				w.Header().Set("Content-Length", strconv.Itoa(len(val)))
				w.WriteHeader(200)
				w.(http.Flusher).Flush() // the value then starts a write of its own
				w.Write(val)
			})}
			go srv.Serve(JSONErrors(ln))
			defer srv.Close()
			for range 2 { // a fresh connection, then a reused one
				resp, err := http.Get("http://" + ln.Addr().String() + "/")
				require.NoError(t, err)
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				require.NoError(t, err)
				require.Equal(t, val, got)
			}
		})
	}
}

func TestJSONErrors_RewritesOnlyNetHTTPsOwnShape(t *testing.T) {
	out, ok := rewritePlainError([]byte("HTTP/1.1 400 Bad Request" + plainErrorHeaders + "400 Bad Request"))
	require.True(t, ok)
	require.Contains(t, string(out), `"code":"invalid_request"`)
	_, ok = rewritePlainError([]byte("HTTP/1.1 400 Bad Request" + plainErrorHeaders + "something else"))
	require.False(t, ok)
	out, ok = rewritePlainError([]byte("HTTP/1.1 501 Not Implemented" + plainErrorHeaders + "Unsupported transfer encoding"))
	require.True(t, ok)
	require.Contains(t, string(out), `"code":"not_implemented"`)
	_, ok = rewritePlainError([]byte("HTTP/1.1 200 OK" + plainErrorHeaders + "200 OK"))
	require.False(t, ok, "not an error")
}
