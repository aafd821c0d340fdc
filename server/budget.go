package server

import (
	"context"
	"sync"
)

// byteBudget counts bytes held by many owners against a cap: acquire
// waits while taking n would pass it, release gives bytes back. A single
// take larger than the cap goes through once nothing else is held, so an
// outsized item waits its turn instead of failing.
type byteBudget struct {
	max int64 // 0: no cap

	mu      sync.Mutex
	used    int64
	waiters int
	wake    chan struct{} // closed and replaced on a release while some wait
}

func newByteBudget(max int64) *byteBudget {
	return &byteBudget{max: max, wake: make(chan struct{})}
}

// acquire takes n bytes, waiting for room until ctx ends.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.max <= 0 || b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		wake := b.wake
		b.waiters++
		b.mu.Unlock()
		var err error
		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		}
		b.mu.Lock()
		b.waiters--
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// charge takes n bytes at once, past the cap if need be: for bytes
// already held (an item larger than what was reserved for it).
func (b *byteBudget) charge(n int64) {
	b.mu.Lock()
	b.used += n
	b.mu.Unlock()
}

// release gives n bytes back and wakes the waiters.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.waiters > 0 {
		close(b.wake)
		b.wake = make(chan struct{})
	}
	b.mu.Unlock()
}

// held returns the bytes taken.
func (b *byteBudget) held() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
