// Package load drives closed-loop load: a fixed number of workers, each
// issuing its next operation as soon as the previous one returns, and
// summarises throughput and latency percentiles. The benchmarks and the
// kvbench tool share it so that their figures mean the same thing.
package load

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Result summarises a run.
type Result struct {
	Ops       int64         // operations that succeeded
	Errors    int64         // operations that failed
	Elapsed   time.Duration // wall time of the run
	OpsPerSec float64       // successful operations per second
	P50, P90  time.Duration
	P99, P999 time.Duration
	Max       time.Duration
	FirstErr  error
}

// Progress is called about once a second during a run with the counts
// so far (nil: no progress).
type Progress func(done, errors int64, elapsed time.Duration)

// Run performs operations numbered 0..n-1 (n <= 0: until d has passed or
// ctx ends) over workers goroutines. d <= 0 means no time bound (n must
// then be positive). It returns once every worker has stopped.
func Run(ctx context.Context, workers, n int, d time.Duration, progress Progress, op func(ctx context.Context, i int) error) Result {
	if workers < 1 {
		workers = 1
	}
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var next, done, errs atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	start := time.Now()
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					progress(done.Load(), errs.Load(), time.Since(start))
				}
			}
		}()
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if n > 0 && i >= n {
					return
				}
				t0 := time.Now()
				err := op(ctx, i)
				if err != nil {
					if ctx.Err() != nil && d > 0 {
						return // the run's time is up: not a failure
					}
					errs.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	pwg.Wait()
	r := Result{Elapsed: time.Since(start), Errors: errs.Load(), FirstErr: firstErr}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	r.Ops = int64(len(all))
	if len(all) == 0 {
		return r
	}
	slices.Sort(all)
	at := func(q float64) time.Duration { return all[int(q*float64(len(all)-1))] }
	r.OpsPerSec = float64(len(all)) / r.Elapsed.Seconds()
	r.P50, r.P90, r.P99, r.P999, r.Max = at(0.5), at(0.9), at(0.99), at(0.999), all[len(all)-1]
	return r
}
