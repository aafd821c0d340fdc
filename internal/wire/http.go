package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"
)

// NewPeerClient returns the HTTP client for calls between nodes and for
// requests one node forwards to another: keep-alive connections, a short
// dial timeout, no proxies from the environment.
func NewPeerClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}}
}

// NeverSent reports whether a failed HTTP call failed while connecting:
// the request never left, so the other side cannot have acted on it. Any
// other failure of a write leaves its outcome unknown.
func NeverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// NewPeerClientTLS is NewPeerClient over TLS with cfg; serverName, if
// set, names the server a connection to addr must present a certificate
// for (a node's id, for its peers), instead of the address's host.
func NewPeerClientTLS(cfg *tls.Config, serverName func(addr string) string) *http.Client {
	c := NewPeerClient()
	tr := c.Transport.(*http.Transport)
	dialer := &net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := cfg.Clone()
		if serverName != nil {
			tc.ServerName = serverName(addr)
		}
		if tc.ServerName == "" {
			tc.ServerName, _, _ = net.SplitHostPort(addr)
		}
		// A peer that takes the connection but never finishes the
		// handshake (stopped, overloaded) must not hold the dial: the
		// transport's dial outlives the request that asked for it.
		hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
		defer cancel()
		tlsConn := tls.Client(conn, tc)
		if err := tlsConn.HandshakeContext(hctx); err != nil {
			conn.Close()
			return nil, err
		}
		return tlsConn, nil
	}
	return c
}

// tlsHandshakeTimeout bounds a peer connection's TLS handshake.
var tlsHandshakeTimeout = 5 * time.Second
