package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A peer that accepts the connection and never answers the TLS handshake
// does not hold the dial: the client closes it after the handshake
// timeout, even though the request that asked for it gave up first.
func TestPeerClientTLS_AStalledHandshakeIsDropped(t *testing.T) {
	old := tlsHandshakeTimeout
	tlsHandshakeTimeout = 300 * time.Millisecond
	defer func() { tlsHandshakeTimeout = old }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	hc := NewPeerClientTLS(&tls.Config{InsecureSkipVerify: true}, nil) //nolint:gosec // nothing answers
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+ln.Addr().String()+"/", nil)
	require.NoError(t, err)
	_, err = hc.Do(req)
	require.Error(t, err)
	var conn net.Conn
	select {
	case conn = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the client never connected")
	}
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 4096)
	start := time.Now()
	for {
		if _, err := conn.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the client still holds the connection 5 s later")
			}
			break // closed by the client
		}
	}
	require.Less(t, time.Since(start), 3*time.Second)
}
