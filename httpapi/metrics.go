package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvd-project/kvd/api"
)

// httpMetrics counts requests and their latencies by route, method and
// status code.
type httpMetrics struct {
	traffic     api.TrafficCounter
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	peerRefused prometheus.Counter
	// authFailures counts requests refused by auth, by reason.
	authFailures *prometheus.CounterVec
}

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_http_requests_total",
			Help: "HTTP requests served, by route template, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvd_http_request_duration_seconds",
			Help:    "HTTP request latency, by route template, method and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "code"}),
		peerRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvd_peer_auth_refused_total",
			Help: "Calls to node-to-node endpoints refused for lack of the cluster's credential.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_auth_failures_total",
			Help: "Requests refused by authentication or authorization, by reason (missing, malformed, invalid, forbidden, limited).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.peerRefused, m.authFailures} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// middleware records each request under its route template, so keys do
// not become label values.
func (m *httpMetrics) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := "unmatched"
		if cr := mux.CurrentRoute(r); cr != nil {
			if t, err := cr.GetPathTemplate(); err == nil {
				route = t
			}
		}
		code := strconv.Itoa(rec.status)
		took := time.Since(start).Seconds()
		m.requests.WithLabelValues(route, r.Method, code).Inc()
		m.latency.WithLabelValues(route, r.Method, code).Observe(took)
		if clientRoute(route) {
			m.traffic.Observe(took)
		}
	})
}

// clientRoute tells whether route serves clients' data (keys, scans,
// transactions, batches), the requests a node's traffic counts.
func clientRoute(route string) bool {
	switch route {
	case "/v1/kv/{key:.*}", "/v1/kv", "/v1/txn", "/v1/batch":
		return true
	}
	return false
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
