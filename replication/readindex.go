package replication

import (
	"context"
	"sync"

	"github.com/kvd-project/kvd"
)

// readBatcher shares one read-index round among every read that arrives
// while no round is running, and starts the next round for the reads that
// arrived during the previous one. A read never uses an index captured
// before it arrived: that would let it miss a write acknowledged just
// before.
type readBatcher struct {
	round func(ctx context.Context) (uint64, error)
	// stopped is closed when run returns; later callers fail at once.
	stopped chan struct{}

	// mu protects waiters.
	mu      sync.Mutex
	waiters []chan readIndexResult
	kick    chan struct{}
}

type readIndexResult struct {
	index uint64
	err   error
}

func newReadBatcher(round func(ctx context.Context) (uint64, error)) *readBatcher {
	return &readBatcher{round: round, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// get joins the next round and returns its index.
func (b *readBatcher) get(ctx context.Context) (uint64, error) {
	ch := make(chan readIndexResult, 1)
	b.mu.Lock()
	b.waiters = append(b.waiters, ch)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-b.stopped:
		return 0, kvd.ErrClosed
	}
}

// run serves rounds until ctx ends. Its owner starts and waits for it.
func (b *readBatcher) run(ctx context.Context) {
	for {
		select {
		case <-b.kick:
		case <-ctx.Done():
			close(b.stopped)
			b.mu.Lock()
			ws := b.waiters
			b.waiters = nil
			b.mu.Unlock()
			for _, w := range ws {
				w <- readIndexResult{err: ctx.Err()}
			}
			return
		}
		for {
			b.mu.Lock()
			ws := b.waiters
			b.waiters = nil
			b.mu.Unlock()
			if len(ws) == 0 {
				break
			}
			idx, err := b.round(ctx)
			for _, w := range ws {
				w <- readIndexResult{index: idx, err: err}
			}
		}
	}
}
