package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

func batchesSent(cl *client.Client) int64 {
	var n int64
	for _, s := range cl.Stats() {
		n += s.Batches
	}
	return n
}

// Many concurrent puts, gets and deletes share requests, and each gets
// the answer its request alone would have: versions, values, not found,
// whether a delete found its key, expiry. Conditional writes are not
// coalesced and keep their meaning.
func TestClient_Coalescing_EachOpGetsItsOwnAnswer(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	_, err := cl.Put(ctx, "warm", []byte("x")) // learns the leaders
	require.NoError(t, err)

	const workers, each = 32, 20
	before := totalRequests(cl)
	versions := make([][]kvd.Version, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*4)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				k := fmt.Sprintf("co/%02d/%02d", w, i)
				v, err := cl.Put(ctx, k, []byte("v-"+k))
				if err != nil {
					errs <- err
					continue
				}
				versions[w] = append(versions[w], v)
				if it, err := cl.Get(ctx, k); err != nil || string(it.Value) != "v-"+k || it.Version != v {
					errs <- fmt.Errorf("get %s: %q v%d (put v%d): %v", k, it.Value, it.Version, v, err)
				}
				if _, err := cl.Get(ctx, k+"/absent"); !errors.Is(err, kvd.ErrNotFound) {
					errs <- fmt.Errorf("get of an absent key: %v", err)
				}
				if i%2 == 0 {
					if ok, err := cl.Delete(ctx, k); err != nil || !ok {
						errs <- fmt.Errorf("delete %s: %v %v", k, ok, err)
					}
					if ok, err := cl.Delete(ctx, k); err != nil || ok {
						errs <- fmt.Errorf("second delete %s: %v %v", k, ok, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	ops := int64(workers * each * 4)
	reqs := totalRequests(cl) - before
	t.Logf("%d ops in %d requests, %d of them batches", ops, reqs, batchesSent(cl))
	require.Positive(t, batchesSent(cl), "concurrent ops were coalesced")
	require.Less(t, reqs, ops, "fewer requests than ops")
	for w := range workers {
		require.Len(t, versions[w], each)
	}

	// What was deleted is gone, the rest is there.
	for w := range workers {
		for i := range each {
			k := fmt.Sprintf("co/%02d/%02d", w, i)
			_, err := cl.Get(ctx, k)
			if i%2 == 0 {
				require.ErrorIs(t, err, kvd.ErrNotFound, k)
			} else {
				require.NoError(t, err, k)
			}
		}
	}

	// Conditions and TTLs under concurrency.
	var created, refused sync.Map
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := fmt.Sprintf("once/%d", w%4)
			if _, err := cl.Put(ctx, k, []byte("x"), client.CreateOnly()); err == nil {
				created.Store(w, k)
			} else if errors.Is(err, kvd.ErrPreconditionFailed) {
				refused.Store(w, k)
			} else {
				t.Errorf("create-only put: %v", err)
			}
			_, err := cl.Put(ctx, fmt.Sprintf("ttl/%d", w), []byte("x"), client.WithTTL(300*time.Millisecond))
			if err != nil {
				t.Errorf("put with a ttl: %v", err)
			}
		}()
	}
	wg.Wait()
	var nCreated int
	created.Range(func(any, any) bool { nCreated++; return true })
	require.Equal(t, 4, nCreated, "each key created exactly once")
	require.Eventually(t, func() bool {
		_, err := cl.Get(ctx, "ttl/0")
		return errors.Is(err, kvd.ErrNotFound)
	}, 10*time.Second, 50*time.Millisecond, "a coalesced put's ttl holds")
}

// Ops coalesced for a node that no longer leads are sent on (by the node,
// or again alone by the client): a leader change under concurrent writes
// loses none and fails none.
func TestClient_Coalescing_FollowsALeaderChange(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	_, err := cl.Put(ctx, "warm", []byte("x"))
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[string]kvd.Version{}
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("lc/%02d/%04d", w, i)
				v, err := cl.Put(ctx, k, []byte(k))
				if err != nil {
					t.Errorf("put %s: %v", k, err)
					return
				}
				mu.Lock()
				acked[k] = v
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	old := c.Leader(1)
	to := testcluster.NodeID((old + 1) % 3)
	_, err = cl.TransferLeader(ctx, 1, to)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	require.NotEqual(t, old, c.Leader(1))
	require.Positive(t, batchesSent(cl))
	for k, v := range acked {
		it, err := cl.Get(ctx, k)
		require.NoError(t, err, k)
		require.Equal(t, k, string(it.Value))
		require.Equal(t, v, it.Version)
	}
	t.Logf("%d acknowledged puts across the change, %d batches", len(acked), batchesSent(cl))
}

// Closing the client with ops waiting to be coalesced ends every call
// and leaves no goroutine behind (Close waits for its lanes).
func TestClient_Coalescing_CloseEndsWaitingOps(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	_, err := cl.Put(ctx, "warm", []byte("x"))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if _, err := cl.Put(ctx, fmt.Sprintf("cl/%d/%d", w, i), []byte("v")); err != nil {
					return // closed under it
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, cl.Close())
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("calls still running after Close")
	}
	_, err = cl.Put(ctx, "after", []byte("v"))
	require.ErrorIs(t, err, kvd.ErrClosed)
}

// Off (BatchLanes < 0), every op is a request of its own.
func TestClient_Coalescing_Off(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	cl := newClient(t, c, func(cfg *client.Config) { cfg.BatchLanes = -1 })
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				_, err := cl.Put(ctx, fmt.Sprintf("off/%d/%d", w, i), []byte("v"))
				require.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	require.Zero(t, batchesSent(cl))
}

// A node that knows no batches (an older kvd during an upgrade) answers
// the first one 404: its ops go alone, and it is sent no more batches.
func TestClient_Coalescing_ANodeWithoutBatchesGetsSingleRequests(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	target, err := url.Parse(c.URL(0))
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int64
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/batch" {
			refused.Add(1)
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer old.Close()
	cl := newClient(t, c, func(cfg *client.Config) {
		cfg.Endpoints = []string{old.URL}
		cfg.NodeURLs = map[string]string{testcluster.NodeID(0): old.URL}
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				k := fmt.Sprintf("old/%d/%d", w, i)
				if _, err := cl.Put(ctx, k, []byte(k)); err != nil {
					t.Errorf("put %s: %v", k, err)
				}
			}
		}()
	}
	wg.Wait()
	require.Positive(t, refused.Load(), "a batch was tried")
	require.LessOrEqual(t, refused.Load(), int64(2), "batches kept going to a node without them")
	it, err := cl.Get(ctx, "old/31/19")
	require.NoError(t, err)
	require.Equal(t, "old/31/19", string(it.Value))
}

// A key that is not UTF-8 is never coalesced: JSON would carry another
// key (U+FFFD in place of the bytes). Alone, each put is refused.
func TestClient_Coalescing_KeysThatAreNotUTF8GoAlone(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	cl := newClient(t, c, nil)
	ctx := context.Background()
	_, err := cl.Put(ctx, "warm", []byte("x"))
	require.NoError(t, err)
	var wg sync.WaitGroup
	var accepted atomic.Int64
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.Put(ctx, fmt.Sprintf("utf\xff/%d", i), []byte("v")); err == nil {
				accepted.Add(1)
			} else if !errors.Is(err, kvd.ErrInvalid) {
				t.Errorf("put: %v", err)
			}
		}()
	}
	wg.Wait()
	require.Zero(t, accepted.Load(), "a key that is not UTF-8 was written (as another key)")
	page, err := cl.Scan(ctx, kvd.ScanOptions{Prefix: "utf"})
	require.NoError(t, err)
	require.Empty(t, page.Items)
}
