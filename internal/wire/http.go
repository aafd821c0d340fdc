package wire

import (
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
