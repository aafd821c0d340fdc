package httpapi

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvd-project/kvd"
)

// inflight caps the requests a node serves at once, and the bytes of
// their bodies, so that no load can make it queue without bound: a request
// past a cap is refused at once (429 overloaded, Retry-After) and costs
// next to nothing. A body of unknown length counts as the largest a
// request may carry.
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
	size := r.ContentLength
	if size < 0 {
		size = l.bodyLimit
	}
	size = min(size, l.bodyLimit)
	n := l.requests.Add(1)
	b := l.bytes.Add(size)
	release = func() {
		l.requests.Add(-1)
		l.bytes.Add(-size)
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
	return release, nil
}
