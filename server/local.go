package server

import (
	"context"
	"fmt"
	"sync"

	"github.com/kvd-project/kvd"
)

// KV returns the node's store as a kvd.KV, served in-process by this node
// with the same validation, semantics and errors as its HTTP API. It is
// what the embedded store exposes; on a node of a multi-node cluster it
// serves only what this node can serve itself.
func (s *Server) KV() kvd.KV { return local{s} }

type local struct{ s *Server }

var _ kvd.KV = local{}

func (l local) Get(ctx context.Context, key string, opts ...kvd.ReadOption) (kvd.Item, error) {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
	}
	o := kvd.ApplyReadOptions(kvd.Linearizable, opts)
	if _, err := kvd.ParseConsistency(string(o.Consistency)); err != nil {
		return kvd.Item{}, err
	}
	return l.s.Get(ctx, key, o.Consistency, kvd.Route{})
}

func (l local) validateWrite(key string, value []byte) error {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return err
	}
	return l.s.cfg.Limits.ValidateValue(len(value))
}

func (l local) Put(ctx context.Context, key string, value []byte, opts ...kvd.WriteOption) (kvd.Version, error) {
	if err := l.validateWrite(key, value); err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	o := kvd.ApplyWriteOptions(opts)
	if o.TTL < 0 {
		return 0, fmt.Errorf("put %q: %w: negative ttl", key, kvd.ErrInvalid)
	}
	if value == nil {
		value = []byte{}
	}
	return l.s.Put(ctx, key, value, o, kvd.Route{})
}

func (l local) Delete(ctx context.Context, key string, opts ...kvd.WriteOption) (bool, error) {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return false, fmt.Errorf("delete %q: %w", key, err)
	}
	o := kvd.ApplyWriteOptions(opts)
	if o.TTL != 0 {
		return false, fmt.Errorf("delete %q: %w: a ttl is for puts", key, kvd.ErrInvalid)
	}
	deleted, _, err := l.s.Delete(ctx, key, o, kvd.Route{})
	return deleted, err
}

func (l local) Scan(ctx context.Context, so kvd.ScanOptions, opts ...kvd.ReadOption) (kvd.Page, error) {
	lim := l.s.cfg.Limits
	switch {
	case so.Limit == 0:
		so.Limit = lim.DefaultScanLimit
	case so.Limit < 0 || so.Limit > lim.MaxScanLimit:
		return kvd.Page{}, fmt.Errorf("%w: limit must be between 1 and %d", kvd.ErrInvalid, lim.MaxScanLimit)
	}
	o := kvd.ApplyReadOptions(kvd.Linearizable, opts)
	items, next, err := l.s.Scan(ctx, so, o.Consistency, kvd.Route{})
	if err != nil {
		return kvd.Page{}, err
	}
	return kvd.Page{Items: items, More: next != "", Next: next}, nil
}

func (l local) Txn(ctx context.Context, t kvd.Txn, opts ...kvd.WriteOption) (kvd.TxnResponse, error) {
	o, err := kvd.TxnOptions(opts)
	if err != nil {
		return kvd.TxnResponse{}, err
	}
	resp, err := l.s.Txn(ctx, t, o)
	for i := range resp.Results {
		resp.Results[i].Found = resp.Results[i].Found || resp.Results[i].Op == "add"
	}
	return resp, err
}

func (l local) Add(ctx context.Context, key string, delta int64, opts ...kvd.WriteOption) (int64, error) {
	return kvd.AddWith(ctx, l.Txn, key, delta, opts)
}

// localWatch runs a watch in-process: Server.Watch feeds a channel.
type localWatch struct {
	events chan kvd.Event
	done   chan struct{}
	err    error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (l local) Watch(ctx context.Context, prefix, since string) (kvd.Watcher, error) {
	w := &localWatch{events: make(chan kvd.Event, 256), done: make(chan struct{})}
	bg, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	// Room for both sends (started, then ended), so the goroutine never
	// blocks on a caller that already gave up.
	started := make(chan error, 2)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		err := l.s.Watch(bg, prefix, since, func(string) error {
			started <- nil
			return nil
		}, func(ev kvd.Event) error {
			if ev.Type == "" {
				return nil // a progress mark: nothing to deliver in-process
			}
			select {
			case w.events <- ev:
				return nil
			case <-bg.Done():
				return bg.Err()
			}
		})
		w.err = err
		close(w.done)
		started <- err
	}()
	select {
	case err := <-started:
		if err != nil {
			cancel()
			w.wg.Wait()
			return nil, fmt.Errorf("watch %q: %w", prefix, err)
		}
	case <-ctx.Done():
		cancel()
		w.wg.Wait()
		return nil, ctx.Err()
	}
	return w, nil
}

func (w *localWatch) Next(ctx context.Context) (kvd.Event, error) {
	select {
	case ev := <-w.events:
		return ev, nil
	case <-w.done:
		select {
		case ev := <-w.events:
			return ev, nil
		default:
		}
		if w.err == nil {
			return kvd.Event{}, fmt.Errorf("watch ended: %w", kvd.ErrClosed)
		}
		return kvd.Event{}, w.err
	case <-ctx.Done():
		return kvd.Event{}, ctx.Err()
	}
}

func (w *localWatch) Close() error {
	w.cancel()
	w.wg.Wait()
	return nil
}

func (l local) Close() error { return l.s.Close() }
