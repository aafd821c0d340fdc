// Package node starts a kvd node: the core of package server, serving its
// API over HTTP with package httpapi. It is the composition root that
// cmd/kvd and the test clusters use; an embedded store (package embed)
// runs the core alone and serves no HTTP.
package node

import (
	"github.com/kvd-project/kvd/httpapi"
	"github.com/kvd-project/kvd/server"
)

// The node's core is what the HTTP handlers serve.
var _ httpapi.Backend = (*server.Server)(nil)

// New opens a node as server.New does, serving its API over HTTP.
func New(cfg server.Config) (*server.Server, error) {
	cfg.Frontend = HTTP
	return server.New(cfg)
}

// HTTP is the server.FrontendFunc that serves node s's API with package
// httpapi, under the node's limits, timeouts and caps.
func HTTP(s *server.Server, env server.FrontendEnv) (server.Frontend, error) {
	c := env.Config
	return httpapi.NewServer(s, httpapi.Options{
		Limits:              c.Limits,
		RequestTimeout:      c.RequestTimeout,
		Registry:            env.Registry,
		Logger:              env.Logger,
		PeerCredential:      env.PeerCredential,
		MaxInflightRequests: c.MaxInflightRequests,
		MaxInflightBytes:    c.MaxInflightBytes,
		MaxConnections:      c.MaxConnections,
		ReadHeaderTimeout:   c.ReadHeaderTimeout,
		Profiling:           c.Profiling,
		UnderPressure:       env.UnderPressure,
		ForwardClient:       env.PeerClient,
		ForwardScheme:       env.PeerScheme,
		PeerCA:              env.PeerCA,
		TLS:                 env.TLS,
	})
}
