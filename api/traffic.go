package api

import (
	"sort"
	"sync/atomic"
)

// TrafficBounds are the latency buckets of Traffic, in seconds.
var TrafficBounds = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// TrafficCounter counts requests and their latencies without a lock: a
// node keeps one for its client requests and one per group it serves.
type TrafficCounter struct {
	requests atomic.Uint64
	buckets  [len(TrafficBounds) + 1]atomic.Uint64 // the last: above every bound
}

// Observe counts a request that took seconds.
func (t *TrafficCounter) Observe(seconds float64) {
	t.requests.Add(1)
	t.buckets[sort.SearchFloat64s(TrafficBounds[:], seconds)].Add(1)
}

// Snapshot returns the counts so far, cumulative by bound.
func (t *TrafficCounter) Snapshot() *Traffic {
	out := &Traffic{Requests: t.requests.Load(), LatencyBounds: TrafficBounds[:], LatencyCounts: make([]uint64, len(TrafficBounds))}
	var sum uint64
	for i := range TrafficBounds {
		sum += t.buckets[i].Load()
		out.LatencyCounts[i] = sum
	}
	return out
}
