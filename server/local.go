package server

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/httpapi"
)

// KV returns the node's store as a kvd.KV, served in-process by this node
// with the same validation, semantics and errors as its HTTP API. It is
// what the embedded store exposes; on a node of a multi-node cluster it
// serves only what this node can serve itself.
func (s *Server) KV() kvd.KV { return local{s} }

type local struct{ s *Server }

var _ kvd.KV = local{}

func (l local) b() backend { return backend(l) }

func (l local) Get(ctx context.Context, key string, opts ...kvd.ReadOption) (kvd.Item, error) {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return kvd.Item{}, fmt.Errorf("get %q: %w", key, err)
	}
	o := kvd.ApplyReadOptions(kvd.Linearizable, opts)
	if _, err := kvd.ParseConsistency(string(o.Consistency)); err != nil {
		return kvd.Item{}, err
	}
	return l.b().Get(ctx, key, o.Consistency, httpapi.Route{})
}

func (l local) validateWrite(key string, value []byte) error {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return err
	}
	return l.s.cfg.Limits.ValidateValue(len(value))
}

func idemFor(o kvd.WriteOptions, parts ...[]byte) *kvd.Idem {
	if o.IdempotencyKey == "" {
		return nil
	}
	cond := []byte(fmt.Sprintf("%d:%d:%d", o.Cond.Kind, o.Cond.Version, o.TTL))
	return &kvd.Idem{Key: o.IdempotencyKey, FP: kvd.Fingerprint(append([][]byte{cond}, parts...)...)}
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
	return l.b().Put(ctx, key, value, httpapi.Write{Cond: o.Cond, TTL: o.TTL, Idem: idemFor(o, []byte("PUT"), []byte(key), value)}, httpapi.Route{})
}

func (l local) Delete(ctx context.Context, key string, opts ...kvd.WriteOption) (bool, error) {
	if err := l.s.cfg.Limits.ValidateKey(key); err != nil {
		return false, fmt.Errorf("delete %q: %w", key, err)
	}
	o := kvd.ApplyWriteOptions(opts)
	if o.TTL != 0 {
		return false, fmt.Errorf("delete %q: %w: a ttl is for puts", key, kvd.ErrInvalid)
	}
	deleted, _, err := l.b().Delete(ctx, key, httpapi.Write{Cond: o.Cond, Idem: idemFor(o, []byte("DELETE"), []byte(key))}, httpapi.Route{})
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
	items, next, err := l.b().Scan(ctx, so, o.Consistency, httpapi.Route{})
	if err != nil {
		return kvd.Page{}, err
	}
	return kvd.Page{Items: items, More: next != "", Next: next}, nil
}

func (l local) Txn(ctx context.Context, t kvd.Txn, opts ...kvd.WriteOption) (kvd.TxnResponse, error) {
	var parts [][]byte
	for _, op := range t.Ops {
		parts = append(parts, []byte(op.Op), []byte(op.Key), op.Value, []byte(strconv.FormatInt(op.Delta, 10)), []byte(op.TTL.String()))
	}
	for _, c := range t.Compares {
		parts = append(parts, []byte(c.Key), c.Value, compareFingerprint(c))
	}
	o, err := kvd.TxnOptions(opts)
	if err != nil {
		return kvd.TxnResponse{}, err
	}
	resp, err := l.s.coord.Do(ctx, t, idemFor(o, parts...))
	for i := range resp.Results {
		resp.Results[i].Found = resp.Results[i].Found || resp.Results[i].Op == "add"
	}
	return resp, err
}

func (l local) Add(ctx context.Context, key string, delta int64, opts ...kvd.WriteOption) (int64, error) {
	return kvd.AddWith(ctx, l.Txn, key, delta, opts)
}

// compareFingerprint names what a compare checks, for idempotency
// fingerprints: which field is set, and its value.
func compareFingerprint(c kvd.Compare) []byte {
	switch {
	case c.Version != nil:
		return []byte(fmt.Sprintf("v:%d", *c.Version))
	case c.Exists != nil:
		return []byte(fmt.Sprintf("e:%t", *c.Exists))
	case c.Value != nil:
		return []byte("value")
	}
	return []byte("-")
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
