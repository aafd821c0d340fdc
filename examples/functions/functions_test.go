package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/embed"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// stores runs fn against an embedded store and against a 3-node cluster:
// the functions' code is the same.
func stores(t *testing.T, fn func(t *testing.T, kv kvd.KV)) {
	t.Run("embedded", func(t *testing.T) {
		st, err := embed.Open(t.TempDir(), embed.Options{TTLInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		defer st.Close()
		fn(t, st)
	})
	t.Run("cluster", func(t *testing.T) {
		c := testcluster.New(t, 3, 3)
		cl, err := client.New(context.Background(), client.DefaultConfig(c.URLs()...))
		require.NoError(t, err)
		defer cl.Close()
		fn(t, cl)
	})
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestRateLimiter_CountsExactlyUnderConcurrency(t *testing.T) {
	stores(t, func(t *testing.T, kv kvd.KV) {
		now := time.Unix(1_000_000, 0)
		var mu sync.Mutex
		h := &Host{KV: kv, Limit: 20, Window: time.Minute, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
		srv := httptest.NewServer(h.Handler())
		defer srv.Close()
		var allowed, refused atomic.Int64
		var wg sync.WaitGroup
		for range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, _ := post(t, srv.URL+"/ratelimit/alice", "")
				switch status {
				case 200:
					allowed.Add(1)
				case 429:
					refused.Add(1)
				default:
					t.Errorf("status %d", status)
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int64(20), allowed.Load(), "exactly the limit gets through")
		require.Equal(t, int64(10), refused.Load())
		// Another client has its own budget; a new window starts afresh.
		status, _ := post(t, srv.URL+"/ratelimit/bob", "")
		require.Equal(t, 200, status)
		mu.Lock()
		now = now.Add(time.Minute)
		mu.Unlock()
		status, out := post(t, srv.URL+"/ratelimit/alice", "")
		require.Equal(t, 200, status)
		require.Equal(t, float64(1), out["count"])
	})
}

func TestShortener(t *testing.T) {
	stores(t, func(t *testing.T, kv kvd.KV) {
		h := &Host{KV: kv, Limit: 1, Window: time.Second, Now: time.Now}
		srv := httptest.NewServer(h.Handler())
		defer srv.Close()
		codes := map[string]bool{}
		for i := range 20 {
			status, out := post(t, srv.URL+"/shorten", fmt.Sprintf(`{"url":"https://example.com/%d"}`, i))
			require.Equal(t, 201, status)
			code := out["code"].(string)
			require.False(t, codes[code])
			codes[code] = true
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noFollow.Get(srv.URL + "/s/" + code)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, 302, resp.StatusCode)
			require.Equal(t, fmt.Sprintf("https://example.com/%d", i), resp.Header.Get("Location"))
		}
		status, _ := post(t, srv.URL+"/shorten", `{"url":"ftp://nope"}`)
		require.Equal(t, 400, status)
		resp, err := http.Get(srv.URL + "/s/missing")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 404, resp.StatusCode)
	})
}

func TestOrders_AllOrNothingAndNeverOversold(t *testing.T) {
	stores(t, func(t *testing.T, kv kvd.KV) {
		h := &Host{KV: kv, Limit: 1, Window: time.Second, Now: time.Now}
		srv := httptest.NewServer(h.Handler())
		defer srv.Close()
		status, _ := post(t, srv.URL+"/stock/widget?qty=10", "")
		require.Equal(t, 200, status)
		var placed, refused atomic.Int64
		var placedID atomic.Value
		var wg sync.WaitGroup
		for i := range 15 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, _ := post(t, srv.URL+"/orders", fmt.Sprintf(`{"id":"o%d","user":"u%d","item":"widget","qty":1,"price":7}`, i, i%3))
				switch status {
				case 201:
					placed.Add(1)
					placedID.Store(i)
				case 409:
					refused.Add(1)
				default:
					t.Errorf("status %d", status)
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int64(10), placed.Load(), "exactly the stock is sold")
		require.Equal(t, int64(5), refused.Load())
		ctx := context.Background()
		it, err := kv.Get(ctx, "stock/widget")
		require.NoError(t, err)
		require.Equal(t, "0", string(it.Value))
		var spent int64
		for u := range 3 {
			it, err := kv.Get(ctx, fmt.Sprintf("spent/u%d", u))
			if err == nil {
				var n int64
				fmt.Sscan(string(it.Value), &n)
				spent += n
			}
		}
		require.Equal(t, int64(70), spent, "every placed order was charged once")
		// Placing a placed order again changes nothing (and is not refused
		// for want of stock: it is already there).
		i := placedID.Load().(int)
		status, _ = post(t, srv.URL+"/orders", fmt.Sprintf(`{"id":"o%d","user":"u%d","item":"widget","qty":1,"price":7}`, i, i%3))
		require.Equal(t, 201, status)
		it, _ = kv.Get(ctx, "stock/widget")
		require.Equal(t, "0", string(it.Value))
		var again int64
		for u := range 3 {
			if it, err := kv.Get(ctx, fmt.Sprintf("spent/u%d", u)); err == nil {
				var n int64
				fmt.Sscan(string(it.Value), &n)
				again += n
			}
		}
		require.Equal(t, spent, again, "the repeat charged nothing")
	})
}
