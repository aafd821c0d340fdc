package server

import (
	"runtime/metrics"
	"sync/atomic"
)

// memPressure tells whether the Go heap holds more live bytes than the
// node's high-water mark, as last sampled. Caps on requests, bodies,
// queues and buffers bound what each part of the node may hold; this is
// the backstop for what they leave out (answers: scan pages, values read,
// transaction results), so that no mix of requests drives the node out of
// memory: while it is over the mark, new client requests are refused
// (429) and those running finish.
type memPressure struct {
	high uint64 // 0: never under pressure
	over atomic.Bool
}

// liveHeapMetric is the heap's bytes still reachable at the end of the
// last garbage collection: what the node holds, without its garbage.
const liveHeapMetric = "/gc/heap/live:bytes"

func (p *memPressure) sample() {
	s := []metrics.Sample{{Name: liveHeapMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p.over.Store(p.high > 0 && s[0].Value.Uint64() > p.high)
}

// underPressure reports the last sample.
func (p *memPressure) underPressure() bool { return p.over.Load() }
