package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// Frontend serves the node's API on its HTTP listener. The node starts
// it last in New, once its replicas are open, and stops it first in
// Close, before they close. Package httpapi's Server is the one kvd
// ships; package node wires it in.
type Frontend interface {
	// Serve serves on ln until Shutdown, then returns nil.
	Serve(ln net.Listener) error
	// Shutdown stops accepting requests and drains those in flight
	// until ctx ends.
	Shutdown(ctx context.Context) error
}

// FrontendFunc builds the frontend of node s. New calls it once, after
// every replica is open; env carries what the node shares with it.
type FrontendFunc func(s *Server, env FrontendEnv) (Frontend, error)

// FrontendEnv is what a node shares with its frontend.
type FrontendEnv struct {
	// Config is the node's configuration (limits, timeouts, caps).
	Config Config
	// Registry is the node's metrics registry; the frontend serves it.
	Registry *prometheus.Registry
	// Logger is the node's logger.
	Logger *slog.Logger
	// PeerCredential is what node-to-node calls carry; the frontend
	// refuses node-to-node endpoints without it.
	PeerCredential string
	// UnderPressure tells whether the node is short of memory.
	UnderPressure func() bool
	// PeerClient carries the calls to other nodes, PeerScheme is their
	// scheme ("http", or "https" when the nodes serve TLS).
	PeerClient *http.Client
	PeerScheme string
	// PeerCA, with peer TLS, tells whether a verified certificate chain
	// is a peer node's: node-to-node endpoints then require one.
	PeerCA func(chains [][]*x509.Certificate) bool
	// TLS, if set, is what the frontend serves TLS with.
	TLS *tls.Config
}
