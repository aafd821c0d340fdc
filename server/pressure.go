package server

import (
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"
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
	// lastCycles is the collector's cycle count at the last sample, and
	// forced the time of the last collection sample forced (both used
	// by sample's goroutine only).
	lastCycles uint64
	forced     time.Time
}

// forceEvery bounds how often sample forces a collection.
const forceEvery = time.Second

// liveHeapMetric is the heap's bytes still reachable at the end of the
// last garbage collection: what the node holds, without its garbage.
const liveHeapMetric = "/gc/heap/live:bytes"

// cyclesMetric counts the collector's completed cycles.
const cyclesMetric = "/gc/cycles/total:gc-cycles"

// sample reads the live heap. The figure is the last collection's: a node
// over the mark that refuses every request allocates too little for the
// collector to run again, and would stay over it, idle, long after what
// held the memory is gone. So while over the mark with no collection since
// the last sample, it forces one (at most once a second) and reads again.
func (p *memPressure) sample() {
	live, cycles, ok := readHeap()
	if !ok {
		return
	}
	over := p.high > 0 && live > p.high
	if over && cycles == p.lastCycles && time.Since(p.forced) >= forceEvery {
		p.forced = time.Now()
		runtime.GC()
		if live, cycles, ok = readHeap(); ok {
			over = live > p.high
		}
	}
	p.lastCycles = cycles
	p.over.Store(over)
}

// readHeap reads the live heap and the collector's cycle count.
func readHeap() (live, cycles uint64, ok bool) {
	s := []metrics.Sample{{Name: liveHeapMetric}, {Name: cyclesMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0, 0, false
	}
	return s[0].Value.Uint64(), s[1].Value.Uint64(), true
}

// underPressure reports the last sample.
func (p *memPressure) underPressure() bool { return p.over.Load() }
