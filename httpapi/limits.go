package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvd-project/kvd"
)

// inflight caps the requests a node serves at once, and the bytes of
// their bodies, so that no load can make it queue without bound: a request
// past a cap is refused at once (429 overloaded, Retry-After) and costs
// next to nothing. A body of announced length counts in full from the
// start; one of unknown length (chunked) counts as it is read, so slow
// uploads that have sent little hold little, and one whose bytes would
// pass the cap is refused then.
type inflight struct {
	maxRequests int64
	maxBytes    int64
	bodyLimit   int64

	requests atomic.Int64
	bytes    atomic.Int64
	shed     *prometheus.CounterVec
}

func (l *inflight) register(reg prometheus.Registerer) error {
	l.shed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvd_http_shed_total",
		Help: "Requests refused at once because the node was serving too many (reason requests), too many body bytes (reason bytes), or was short of memory (reason memory).",
	}, []string{"reason"})
	for _, c := range []prometheus.Collector{l.shed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kvd_http_inflight_requests", Help: "Requests being served (watches excepted)."},
			func() float64 { return float64(l.requests.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kvd_http_inflight_bytes", Help: "Body bytes of the requests being served."},
			func() float64 { return float64(l.bytes.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// admit takes a slot for r, or refuses it with kvd.ErrOverloaded.
func (l *inflight) admit(r *http.Request) (release func(), err error) {
	size := min(max(r.ContentLength, 0), l.bodyLimit)
	n := l.requests.Add(1)
	b := l.bytes.Add(size)
	var body *countedBody
	release = func() {
		l.requests.Add(-1)
		l.bytes.Add(-size)
		if body != nil {
			l.bytes.Add(-body.read.Load())
		}
	}
	switch {
	case l.maxRequests > 0 && n > l.maxRequests:
		release()
		l.shed.WithLabelValues("requests").Inc()
		return nil, fmt.Errorf("the node is serving %d requests, its limit: %w", n-1, kvd.ErrOverloaded)
	case l.maxBytes > 0 && b > l.maxBytes && b != size:
		release()
		l.shed.WithLabelValues("bytes").Inc()
		return nil, fmt.Errorf("the node holds %d bytes of requests, its limit is %d: %w", b-size, l.maxBytes, kvd.ErrOverloaded)
	}
	if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		body = &countedBody{ReadCloser: r.Body, l: l}
		r.Body = body
	}
	return release, nil
}

// hold counts n more bytes an answer being built holds against the cap,
// or refuses them with kvd.ErrOverloaded; free gives them back.
func (l *inflight) hold(n int64) error {
	if b := l.bytes.Add(n); l.maxBytes > 0 && b > l.maxBytes {
		l.bytes.Add(-n)
		l.shed.WithLabelValues("bytes").Inc()
		return fmt.Errorf("the node holds %d bytes of requests and answers, its limit is %d: %w", b-n, l.maxBytes, kvd.ErrOverloaded)
	}
	return nil
}

func (l *inflight) free(n int64) { l.bytes.Add(-n) }

// countedBody counts a body of unknown length against the cap as it is
// read.
type countedBody struct {
	io.ReadCloser
	l    *inflight
	read atomic.Int64 // counted so far; released with the request
}

func (c *countedBody) Read(p []byte) (int, error) {
	// Counted once read: a body that waits for bytes holds none. The
	// count may pass the cap by one read per body; the next read of a
	// body past it fails (unless the body is alone over the cap, as one
	// of announced length may be).
	n, err := c.ReadCloser.Read(p)
	read := c.read.Add(int64(n))
	b := c.l.bytes.Add(int64(n))
	if err == nil && c.l.maxBytes > 0 && b > c.l.maxBytes && b != read {
		c.l.shed.WithLabelValues("bytes").Inc()
		return n, fmt.Errorf("the node holds %d bytes of requests, its limit is %d: %w", b-read, c.l.maxBytes, kvd.ErrOverloaded)
	}
	return n, err
}
