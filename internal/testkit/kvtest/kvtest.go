// Package kvtest is the conformance suite of kvd.KV: the same tests run
// against the Go client of a cluster and against the embedded store, so
// both keep the same semantics and errors.
package kvtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

// Run runs the suite against the store kv. Every test uses its own keys.
func Run(t *testing.T, kv kvd.KV) {
	tests := []struct {
		name string
		fn   func(*testing.T, kvd.KV, string)
	}{
		{"GetPutDelete", getPutDelete},
		{"Conditions", conditions},
		{"Scan", scan},
		{"Txn", transactions},
		{"Add", add},
		{"ConcurrentAdds", concurrentAdds},
		{"TTL", ttl},
		{"Idempotency", idempotency},
		{"Watch", watch},
		{"BadInput", badInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, kv, "conf/"+tc.name+"/") })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func getPutDelete(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	_, err := kv.Get(c, p+"a")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	v1, err := kv.Put(c, p+"a", []byte("1"))
	require.NoError(t, err)
	it, err := kv.Get(c, p+"a")
	require.NoError(t, err)
	require.Equal(t, "1", string(it.Value))
	require.Equal(t, v1, it.Version)
	v2, err := kv.Put(c, p+"a", []byte("2"))
	require.NoError(t, err)
	require.Greater(t, v2, v1, "versions grow")
	for _, cons := range []kvd.Consistency{kvd.Linearizable, kvd.Follower} {
		it, err = kv.Get(c, p+"a", kvd.WithConsistency(cons))
		require.NoError(t, err)
		require.Equal(t, "2", string(it.Value))
	}
	require.Eventually(t, func() bool {
		it, err := kv.Get(c, p+"a", kvd.WithConsistency(kvd.Stale))
		return err == nil && string(it.Value) == "2"
	}, 5*time.Second, 10*time.Millisecond)
	_, err = kv.Put(c, p+"empty", nil)
	require.NoError(t, err)
	it, err = kv.Get(c, p+"empty")
	require.NoError(t, err)
	require.Empty(t, it.Value)
	deleted, err := kv.Delete(c, p+"a")
	require.NoError(t, err)
	require.True(t, deleted)
	deleted, err = kv.Delete(c, p+"a")
	require.NoError(t, err)
	require.False(t, deleted)
	_, err = kv.Get(c, p+"a")
	require.ErrorIs(t, err, kvd.ErrNotFound)
}

func conditions(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	v, err := kv.Put(c, p+"k", []byte("a"), kvd.CreateOnly())
	require.NoError(t, err)
	_, err = kv.Put(c, p+"k", []byte("b"), kvd.CreateOnly())
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	_, err = kv.Put(c, p+"k", []byte("b"), kvd.IfVersion(v+1000))
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	v2, err := kv.Put(c, p+"k", []byte("b"), kvd.IfVersion(v))
	require.NoError(t, err)
	_, err = kv.Put(c, p+"none", []byte("x"), kvd.IfExists())
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	_, err = kv.Delete(c, p+"k", kvd.IfVersion(v))
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	deleted, err := kv.Delete(c, p+"k", kvd.IfVersion(v2))
	require.NoError(t, err)
	require.True(t, deleted)
}

func scan(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("%s%02d", p, i)
		want = append(want, k)
		_, err := kv.Put(c, k, []byte(k))
		require.NoError(t, err)
	}
	var got []string
	o := kvd.ScanOptions{Prefix: p, Limit: 10}
	for range 10 {
		page, err := kv.Scan(c, o)
		require.NoError(t, err)
		for _, it := range page.Items {
			got = append(got, it.Key)
			require.Equal(t, it.Key, string(it.Value))
		}
		if !page.More {
			break
		}
		require.Len(t, page.Items, 10)
		o.Start = page.Next
	}
	require.Equal(t, want, got)
	page, err := kv.Scan(c, kvd.ScanOptions{Start: p + "05", End: p + "08"})
	require.NoError(t, err)
	require.Len(t, page.Items, 3)
}

func transactions(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	keys := []string{p + "a", p + "b", p + "c", p + "{tag}x", p + "{tag}y"}
	var ops []kvd.Op
	for _, k := range keys {
		ops = append(ops, kvd.OpPut(k, []byte("0")))
	}
	resp, err := kv.Txn(c, kvd.Txn{Compares: []kvd.Compare{kvd.Exists(p+"a", false)}, Ops: ops})
	require.NoError(t, err)
	require.True(t, resp.Committed)
	require.Len(t, resp.Results, len(keys))
	ver := resp.Results[0].Version
	require.NotZero(t, ver)

	resp, err = kv.Txn(c, kvd.Txn{
		Compares: []kvd.Compare{kvd.VersionIs(p+"a", ver), kvd.ValueIs(p+"b", []byte("0"))},
		Ops:      []kvd.Op{kvd.OpGet(p + "c"), kvd.OpPut(p+"a", []byte("1")), kvd.OpDelete(p + "b"), kvd.OpGet(p + "none")},
	})
	require.NoError(t, err)
	require.True(t, resp.Results[0].Found)
	require.Equal(t, "0", string(resp.Results[0].Value))
	require.Greater(t, resp.Results[1].Version, ver)
	require.True(t, resp.Results[2].Deleted)
	require.False(t, resp.Results[3].Found)

	resp, err = kv.Txn(c, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs(p+"a", []byte("1")), kvd.Exists(p+"b", true)},
		Ops: []kvd.Op{kvd.OpPut(p+"a", []byte("2")), kvd.OpPut(p+"c", []byte("2"))}})
	require.ErrorIs(t, err, kvd.ErrCompareFailed)
	require.Equal(t, []int{1}, resp.Failed)
	for _, k := range []string{p + "a", p + "c"} {
		it, err := kv.Get(c, k)
		require.NoError(t, err)
		require.NotEqual(t, "2", string(it.Value), "nothing of a failed transaction applies")
	}
	_, err = kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(p+"a", nil), kvd.OpPut(p+"a", nil)}})
	require.ErrorIs(t, err, kvd.ErrInvalid)

	// An empty value is a value: a compare with it holds for a key that
	// holds zero bytes and fails for one that holds more.
	_, err = kv.Put(c, p+"empty", nil)
	require.NoError(t, err)
	resp, err = kv.Txn(c, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs(p+"empty", nil)}, Ops: []kvd.Op{kvd.OpGet(p + "empty")}})
	require.NoError(t, err, "the empty value compares equal")
	require.True(t, resp.Committed)
	_, err = kv.Txn(c, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs(p+"a", []byte{})}, Ops: []kvd.Op{kvd.OpGet(p + "a")}})
	require.ErrorIs(t, err, kvd.ErrCompareFailed, "a key holding bytes is not empty")
}

func add(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	n, err := kv.Add(c, p+"n", 5)
	require.NoError(t, err)
	require.Equal(t, int64(5), n)
	n, err = kv.Add(c, p+"n", -8)
	require.NoError(t, err)
	require.Equal(t, int64(-3), n)
	_, err = kv.Put(c, p+"text", []byte("abc"))
	require.NoError(t, err)
	_, err = kv.Add(c, p+"text", 1)
	require.ErrorIs(t, err, kvd.ErrNotANumber)
	_, err = kv.Put(c, p+"max", []byte(strconv.FormatInt(math.MaxInt64, 10)))
	require.NoError(t, err)
	_, err = kv.Add(c, p+"max", 1)
	require.ErrorIs(t, err, kvd.ErrNotANumber)
	// Across groups in one transaction.
	resp, err := kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpAdd(p+"x", 1), kvd.OpAdd(p+"y", 2), kvd.OpAdd(p+"z", 3)}})
	require.NoError(t, err)
	require.Equal(t, "3", string(resp.Results[2].Value))
	require.NotZero(t, resp.Results[2].Version)
	// Write options apply to an add: conditions and a ttl.
	it, err := kv.Get(c, p+"x")
	require.NoError(t, err)
	_, err = kv.Add(c, p+"x", 1, kvd.IfVersion(it.Version+1))
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	_, err = kv.Add(c, p+"x", 1, kvd.CreateOnly())
	require.ErrorIs(t, err, kvd.ErrPreconditionFailed)
	n, err = kv.Add(c, p+"x", 1, kvd.IfVersion(it.Version))
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	n, err = kv.Add(c, p+"fresh", 5, kvd.CreateOnly(), kvd.WithTTL(200*time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, int64(5), n)
	require.Eventually(t, func() bool {
		_, err := kv.Get(c, p+"fresh")
		return errors.Is(err, kvd.ErrNotFound)
	}, 5*time.Second, 20*time.Millisecond, "an add's ttl expires the counter")
	// A transaction's conditions are compares, not options.
	_, err = kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(p+"t", []byte("v"))}}, kvd.WithTTL(time.Second))
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = kv.Get(c, p+"t")
	require.ErrorIs(t, err, kvd.ErrNotFound, "nothing applied")
}

func concurrentAdds(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := kv.Add(c, p+"hits", 1)
				if errors.Is(err, kvd.ErrConflict) {
					continue // a transaction held it: nothing applied, try again
				}
				errs <- err
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	it, err := kv.Get(c, p+"hits")
	require.NoError(t, err)
	require.Equal(t, "100", string(it.Value), "100 concurrent adds of 1")
}

func ttl(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	w, err := kv.Watch(c, p, "")
	require.NoError(t, err)
	defer w.Close()
	v, err := kv.Put(c, p+"short", []byte("x"), kvd.WithTTL(300*time.Millisecond))
	require.NoError(t, err)
	_, err = kv.Put(c, p+"long", []byte("y"), kvd.WithTTL(time.Hour))
	require.NoError(t, err)
	it, err := kv.Get(c, p+"short")
	require.NoError(t, err)
	require.Equal(t, v, it.Version)
	require.Eventually(t, func() bool {
		_, err := kv.Get(c, p+"short")
		return errors.Is(err, kvd.ErrNotFound)
	}, 5*time.Second, 20*time.Millisecond, "the key expires")
	_, err = kv.Get(c, p+"long")
	require.NoError(t, err)
	// The expiry is a delete with its own version, seen by watches.
	var del kvd.Event
	for del.Type != "delete" {
		del, err = w.Next(c)
		require.NoError(t, err)
	}
	require.Equal(t, p+"short", del.Key)
	require.Greater(t, del.Version, v)
	// A transaction's put may carry a ttl too.
	_, err = kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpPutTTL(p+"txn", []byte("z"), 300*time.Millisecond)}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := kv.Get(c, p+"txn")
		return errors.Is(err, kvd.ErrNotFound)
	}, 5*time.Second, 20*time.Millisecond)
	// So may an add, alone or beside others (across groups: two-phase).
	resp, err := kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpAddTTL(p+"n1", 2, 300*time.Millisecond)}})
	require.NoError(t, err)
	require.Equal(t, "2", string(resp.Results[0].Value))
	_, err = kv.Txn(c, kvd.Txn{Ops: []kvd.Op{
		kvd.OpAddTTL(p+"n2", 1, 300*time.Millisecond), kvd.OpAddTTL(p+"n3", 1, 300*time.Millisecond), kvd.OpAdd(p+"n4", 1),
	}})
	require.NoError(t, err)
	for _, k := range []string{"n1", "n2", "n3"} {
		require.Eventually(t, func() bool {
			_, err := kv.Get(c, p+k)
			return errors.Is(err, kvd.ErrNotFound)
		}, 5*time.Second, 20*time.Millisecond, k)
	}
	it, err = kv.Get(c, p+"n4")
	require.NoError(t, err, "an add without a ttl stays")
	require.Equal(t, "1", string(it.Value))
}

func idempotency(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	key := fmt.Sprintf("%s-%d", p, time.Now().UnixNano())
	v1, err := kv.Put(c, p+"k", []byte("v"), kvd.WithIdempotencyKey(key+"put"))
	require.NoError(t, err)
	v2, err := kv.Put(c, p+"k", []byte("v"), kvd.WithIdempotencyKey(key+"put"))
	require.NoError(t, err)
	require.Equal(t, v1, v2, "a retry returns the first outcome")
	it, err := kv.Get(c, p+"k")
	require.NoError(t, err)
	require.Equal(t, v1, it.Version, "and applies nothing")
	_, err = kv.Put(c, p+"k", []byte("other"), kvd.WithIdempotencyKey(key+"put"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch)

	n1, err := kv.Add(c, p+"n", 1, kvd.WithIdempotencyKey(key+"add"))
	require.NoError(t, err)
	n2, err := kv.Add(c, p+"n", 1, kvd.WithIdempotencyKey(key+"add"))
	require.NoError(t, err)
	require.Equal(t, n1, n2)
	it, err = kv.Get(c, p+"n")
	require.NoError(t, err)
	require.Equal(t, "1", string(it.Value), "an idempotent add applies once")

	t1 := kvd.Txn{Ops: []kvd.Op{kvd.OpAdd(p+"a", 1), kvd.OpAdd(p+"b", 1), kvd.OpAdd(p+"c", 1)}}
	r1, err := kv.Txn(c, t1, kvd.WithIdempotencyKey(key+"txn"))
	require.NoError(t, err)
	r2, err := kv.Txn(c, t1, kvd.WithIdempotencyKey(key+"txn"))
	require.NoError(t, err)
	require.Equal(t, r1.Results, r2.Results)
	for _, k := range []string{"a", "b", "c"} {
		it, err := kv.Get(c, p+k)
		require.NoError(t, err)
		require.Equal(t, "1", string(it.Value))
	}
	deleted, err := kv.Delete(c, p+"k", kvd.WithIdempotencyKey(key+"del"))
	require.NoError(t, err)
	require.True(t, deleted)
	deleted, err = kv.Delete(c, p+"k", kvd.WithIdempotencyKey(key+"del"))
	require.NoError(t, err)
	require.True(t, deleted, "the first outcome, again")
	// Compares are part of the request: an identical conditional add
	// retried is the same request.
	n1, err = kv.Add(c, p+"cond", 1, kvd.CreateOnly(), kvd.WithIdempotencyKey(key+"cond"))
	require.NoError(t, err)
	n2, err = kv.Add(c, p+"cond", 1, kvd.CreateOnly(), kvd.WithIdempotencyKey(key+"cond"))
	require.NoError(t, err, "an identical retry")
	require.Equal(t, n1, n2)
	_, err = kv.Add(c, p+"cond", 1, kvd.IfExists(), kvd.WithIdempotencyKey(key+"cond"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "another condition is another request")

	// A key used for one request is refused for any other, whichever
	// groups their keys live in: eight keys spread over the groups.
	_, err = kv.Put(c, p+"reuse/0", []byte("v"), kvd.WithIdempotencyKey(key+"reuse"))
	require.NoError(t, err)
	for i := 1; i < 8; i++ {
		k := fmt.Sprintf("%sreuse/%d", p, i)
		_, err := kv.Put(c, k, []byte("v"), kvd.WithIdempotencyKey(key+"reuse"))
		require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "token reused for %s", k)
		_, err = kv.Get(c, k)
		require.ErrorIs(t, err, kvd.ErrNotFound, "refused before writing %s", k)
		_, err = kv.Delete(c, k, kvd.WithIdempotencyKey(key+"reuse"))
		require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch)
		_, err = kv.Add(c, k, 1, kvd.WithIdempotencyKey(key+"reuse"))
		require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch)
	}
	_, err = kv.Txn(c, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(p+"reuse/x", []byte("1")), kvd.OpPut(p+"reuse/y", []byte("1"))}}, kvd.WithIdempotencyKey(key+"reuse"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch)
	_, err = kv.Put(c, p+"reuse/0", []byte("v"), kvd.WithIdempotencyKey(key+"reuse"))
	require.NoError(t, err, "the first request, repeated, still gets its outcome")
}

func watch(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	watchReturnsWhenOver(t, c, kv, p)
	evs := watchSeesChanges(t, c, kv, p)
	watchResumesAfterCursor(t, c, kv, p, evs)
}

// watchReturnsWhenOver: a watch whose context is already over returns at
// once; a closed watch's Next returns at once too.
func watchReturnsWhenOver(t *testing.T, c context.Context, kv kvd.KV, p string) {
	gone, cancel := context.WithCancel(c)
	cancel()
	returned := make(chan error, 1)
	go func() {
		w, err := kv.Watch(gone, p, "")
		if w != nil {
			w.Close()
		}
		returned <- err
	}()
	select {
	case err := <-returned:
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Watch with an ended context did not return")
	}
	closed, err := kv.Watch(c, p, "")
	require.NoError(t, err)
	require.NoError(t, closed.Close())
	go func() {
		_, err := closed.Next(context.Background())
		returned <- err
	}()
	select {
	case err := <-returned:
		require.ErrorIs(t, err, kvd.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Next on a closed watch did not return")
	}
}

// watchSeesChanges: a watch of prefix p sees the changes under it, and
// only those, in version order per key. It returns the six events seen.
func watchSeesChanges(t *testing.T, c context.Context, kv kvd.KV, p string) []kvd.Event {
	w, err := kv.Watch(c, p, "")
	require.NoError(t, err)
	var versions []kvd.Version
	for i := range 5 {
		v, err := kv.Put(c, fmt.Sprintf("%sk%d", p, i%2), []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		versions = append(versions, v)
	}
	_, err = kv.Delete(c, p+"k0")
	require.NoError(t, err)
	_, err = kv.Put(c, "elsewhere/"+p, []byte("not watched"))
	require.NoError(t, err)
	var evs []kvd.Event
	for len(evs) < 6 {
		ev, err := w.Next(c)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(ev.Key, p), "only the prefix: %s", ev.Key)
		require.NotEmpty(t, ev.Cursor)
		evs = append(evs, ev)
	}
	w.Close()
	perKey := map[string][]kvd.Version{}
	for _, ev := range evs[:5] {
		require.Equal(t, "put", ev.Type)
		perKey[ev.Key] = append(perKey[ev.Key], ev.Version)
	}
	require.Equal(t, []kvd.Version{versions[0], versions[2], versions[4]}, perKey[p+"k0"], "in version order per key")
	require.Equal(t, "delete", evs[5].Type)
	return evs
}

// watchResumesAfterCursor: resuming from an event's cursor replays
// exactly what followed it; a cursor that is not one is refused.
func watchResumesAfterCursor(t *testing.T, c context.Context, kv kvd.KV, p string, evs []kvd.Event) {
	w2, err := kv.Watch(c, p, evs[2].Cursor)
	require.NoError(t, err)
	defer w2.Close()
	seen := map[string]bool{}
	for range 3 {
		ev, err := w2.Next(c)
		require.NoError(t, err)
		id := fmt.Sprint(ev.Key, ev.Version, ev.Type)
		require.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
	}
	for _, ev := range evs[:3] {
		require.False(t, seen[fmt.Sprint(ev.Key, ev.Version, ev.Type)] && ev.Key == evs[0].Key && ev.Version < evs[2].Version, "replayed an event before the cursor")
	}
	for _, ev := range evs[3:] {
		require.True(t, seen[fmt.Sprint(ev.Key, ev.Version, ev.Type)], "missed %v", ev)
	}
	_, err = kv.Watch(c, p, "not-a-cursor")
	require.ErrorIs(t, err, kvd.ErrInvalid)
}

func badInput(t *testing.T, kv kvd.KV, p string) {
	c := ctx(t)
	_, err := kv.Put(c, "", []byte("x"))
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = kv.Get(c, "")
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = kv.Put(c, strings.Repeat("k", 2000), []byte("x"))
	require.ErrorIs(t, err, kvd.ErrTooLarge)
	_, err = kv.Put(c, p+"big", make([]byte, 1<<20+1))
	require.ErrorIs(t, err, kvd.ErrTooLarge)
	_, err = kv.Put(c, p+"bad\xff", []byte("x"))
	require.ErrorIs(t, err, kvd.ErrInvalid)
	_, err = kv.Txn(c, kvd.Txn{})
	require.ErrorIs(t, err, kvd.ErrInvalid)
}
