package httpapi

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Server serves a node's API on a listener: the Handler behind an
// http.Server with the node's timeouts, a cap on open connections and
// JSON answers to what net/http refuses on its own. It is the frontend a
// node starts once its replicas are open and stops first when it closes.
type Server struct {
	h        *Handler
	srv      *http.Server
	o        Options
	conns    atomic.Pointer[ConnLimiter] // the listener under the cap, once Serve runs
	newConns newConns
}

// NewServer returns a server of the API over b. Options.Registry also
// receives the connection metrics.
func NewServer(b Backend, o Options) (*Server, error) {
	s := &Server{o: o}
	shutdown := make(chan struct{})
	s.o.Shutdown = shutdown
	h, err := New(b, s.o)
	if err != nil {
		return nil, err
	}
	s.h, s.o = h, h.o
	var root http.Handler = h
	if o.Profiling {
		root = withProfiling(h)
	}
	headerTimeout := cmp.Or(o.ReadHeaderTimeout, 10*time.Second)
	s.srv = &http.Server{
		Handler:           root,
		ReadHeaderTimeout: headerTimeout,
		// A body is read within the request's own time: an upload that
		// dribbles does not hold its slot longer.
		ReadTimeout:    headerTimeout + s.o.RequestTimeout,
		WriteTimeout:   60 * time.Second,
		IdleTimeout:    60 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.o.Logger.Handler(), slog.LevelWarn),
		ConnState: func(c net.Conn, st http.ConnState) {
			s.newConns.track(c, st)
			ConnState(c, st)
		},
		ConnContext: ConnContext,
	}
	// Watches are endless requests: end them when the server shuts down,
	// so the drain does not wait for them.
	s.srv.RegisterOnShutdown(func() { close(shutdown) })
	open := func(f func(*ConnLimiter) float64) func() float64 {
		return func() float64 {
			if l := s.conns.Load(); l != nil {
				return f(l)
			}
			return 0
		}
	}
	if err := errors.Join(
		s.o.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kvd_http_connections_open", Help: "HTTP connections open."},
			open(func(l *ConnLimiter) float64 { return float64(l.Open()) }))),
		s.o.Registry.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kvd_http_connections_refused_total",
			Help: "HTTP connections answered 503 and closed because the node had as many open as it may."},
			open(func(l *ConnLimiter) float64 { return float64(l.Refused()) })))); err != nil {
		h.Close()
		return nil, fmt.Errorf("register http metrics: %w", err)
	}
	return s, nil
}

// Handler returns the API handler, to call in-process.
func (s *Server) Handler() *Handler { return s.h }

// Serve serves on ln, under the connection cap, until Shutdown; it then
// returns nil.
func (s *Server) Serve(ln net.Listener) error {
	l := LimitConns(ln, s.o.MaxConnections)
	s.conns.Store(l)
	served := JSONErrors(l)
	if s.o.TLS != nil {
		// Outermost, so that net/http sees TLS connections: it sets
		// r.TLS, and answers plain HTTP with a 400.
		served = tls.NewListener(served, s.o.TLS)
	}
	err := s.srv.Serve(served)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, ends watches, waits for the
// requests in flight until ctx ends and releases the handler. Requests
// still in flight when ctx ends (a client uploading slowly, say) are cut
// off: the drain is bounded by design, so that is not an error.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.h.Close()
	err := shutdownHTTP(ctx, s.srv, &s.newConns)
	if err == nil {
		return nil
	}
	s.srv.Close()
	if ctx.Err() != nil {
		s.o.Logger.Warn("the drain's time ran out; closed the connections still busy", "err", err)
		return nil
	}
	return fmt.Errorf("drain http: %w", err)
}
