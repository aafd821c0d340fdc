package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

// expiryEvent finds key's delete event in replica g's history.
func expiryEvent(t *testing.T, g interface{ Store() *store.DB }, key string) (store.Event, bool) {
	evs, _, _, err := g.Store().History(store.Pos{}, key, 1000, 0)
	require.NoError(t, err)
	for _, ev := range evs {
		if ev.Key == key && ev.Delete {
			return ev, true
		}
	}
	return store.Event{}, false
}

func TestTTL_ExpiresIdenticallyOnEveryReplicaAndAcrossALeaderChange(t *testing.T) {
	c := testcluster.New(t, 3, 1, func(cfg *server.Config) {
		cfg.TTLInterval = 20 * time.Millisecond
		cfg.LeaderBalanceInterval = 0
	})
	leader := c.Leader(1)
	req, _ := http.NewRequest("PUT", c.URL(leader)+"/v1/kv/ttl-a?ttl=300ms", strings.NewReader("x"))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	req, _ = http.NewRequest("PUT", c.URL(leader)+"/v1/kv/ttl-b?ttl=1500ms", strings.NewReader("y"))
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()

	// The leader that set ttl-b's TTL hands over before it runs out: the
	// next leader expires it, from the replicated expiry index.
	time.Sleep(500 * time.Millisecond)
	g, _ := c.Node(leader).Group(1)
	require.NoError(t, g.TransferLeadership())
	next := c.Leader(1)
	require.NotEqual(t, leader, next)

	for _, key := range []string{"ttl-a", "ttl-b"} {
		var first store.Event
		for i := range 3 {
			g, _ := c.Node(i).Group(1)
			var ev store.Event
			require.Eventually(t, func() bool {
				var ok bool
				ev, ok = expiryEvent(t, g, key)
				return ok
			}, 10*time.Second, 20*time.Millisecond, "%s never expired on node %d", key, i)
			_, err := g.Store().Get(key)
			require.ErrorIs(t, err, kvd.ErrNotFound)
			if i == 0 {
				first = ev
			}
			require.Equal(t, first.Pos, ev.Pos, "every replica deletes %s at the same position", key)
		}
	}
}

func TestIdempotency_RetryAfterAKilledConnectionAppliesOnce(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	send := func(ctx context.Context) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "PUT", c.URL((leader+1)%3)+"/v1/kv/once", bytes.NewReader([]byte("v")))
		req.Header.Set("Idempotency-Key", "order-17")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	// The first attempt's connection is killed as soon as it is sent: the
	// client cannot know whether it applied.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	_, _, err := send(ctx)
	cancel()
	require.Error(t, err)
	// Retries until one gets an answer: all answer the same, and the key
	// changed once.
	var answers []string
	for range 3 {
		status, body, err := send(context.Background())
		require.NoError(t, err)
		require.Equal(t, 200, status, body)
		answers = append(answers, body)
	}
	require.Equal(t, answers[0], answers[1])
	require.Equal(t, answers[0], answers[2])
	g, _ := c.Node(leader).Group(1)
	evs, _, _, err := g.Store().History(store.Pos{}, "once", 100, 0)
	require.NoError(t, err)
	require.Len(t, evs, 1, "applied once")
	require.Equal(t, fmt.Sprintf("{\"version\":%d}\n", evs[0].Version()), answers[0])

	// The same key with another body is refused.
	req, _ := http.NewRequest("PUT", c.URL(leader)+"/v1/kv/once", bytes.NewReader([]byte("different")))
	req.Header.Set("Idempotency-Key", "order-17")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 422, resp.StatusCode)
}

func TestIdempotency_ConcurrentRepeatsApplyOnce(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	var wg sync.WaitGroup
	bodies := make([]string, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", c.URL(i%3)+"/v1/txn", strings.NewReader(`{"ops":[{"op":"add","key":"{a}n","delta":1},{"op":"add","key":"other-group-key","delta":1}]}`))
			req.Header.Set("Idempotency-Key", "same-request")
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, 200, resp.StatusCode, string(b))
			bodies[i] = string(b)
		}()
	}
	wg.Wait()
	for _, b := range bodies {
		require.Equal(t, bodies[0], b, "every repeat returns the first outcome")
	}
	resp, err := http.Get(c.URL(0) + "/v1/kv/%7Ba%7Dn")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "1", string(b))
}

// One request fingerprints alike whichever way it comes: sent in-process
// first, then over HTTP with the same idempotency key, it is a repeat
// (the first outcome, nothing applied again); a different request under
// the key is refused on either path.
func TestIdempotency_SameRequestInProcessAndOverHTTPIsOneRequest(t *testing.T) {
	c := testcluster.New(t, 1, 2)
	kv := c.Node(0).KV()
	ctx := context.Background()
	url := c.URL(0)

	ver, err := kv.Put(ctx, "fp/put", []byte("v1"), kvd.WithIdempotencyKey("put-1"), kvd.WithTTL(time.Hour), kvd.CreateOnly())
	require.NoError(t, err)
	r := do(t, "PUT", url+"/v1/kv/fp/put?ttl=1h", []byte("v1"), "Idempotency-Key", "put-1", "If-None-Match", "*")
	require.Equal(t, 200, r.Status, string(r.Body))
	require.JSONEq(t, fmt.Sprintf(`{"version":%d}`, ver), string(r.Body), "the first outcome, not a second write")
	require.Equal(t, 422, do(t, "PUT", url+"/v1/kv/fp/put?ttl=1h", []byte("v2"), "Idempotency-Key", "put-1", "If-None-Match", "*").Status)
	_, err = kv.Put(ctx, "fp/put", []byte("v1"), kvd.WithIdempotencyKey("put-1"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "no ttl, no condition: another request")

	// Over HTTP first, then in-process.
	r = do(t, "DELETE", url+"/v1/kv/fp/put", nil, "Idempotency-Key", "del-1")
	require.Equal(t, 200, r.Status, string(r.Body))
	deleted, err := kv.Delete(ctx, "fp/put", kvd.WithIdempotencyKey("del-1"))
	require.NoError(t, err)
	require.True(t, deleted, "the first outcome: it existed then")

	ks := testcluster.KeysInGroups(c.Node(0).Map(), "fp/t", 1)
	a, b := ks[1][0], ks[2][0]
	t1 := kvd.Txn{Compares: []kvd.Compare{kvd.Exists(a, false)}, Ops: []kvd.Op{kvd.OpPut(a, []byte("x")), kvd.OpAddTTL(b, 5, time.Minute)}}
	resp, err := kv.Txn(ctx, t1, kvd.WithIdempotencyKey("txn-1"))
	require.NoError(t, err)
	require.True(t, resp.Committed)
	body := fmt.Sprintf(`{"compare":[{"key":%q,"exists":false}],"ops":[{"op":"put","key":%q,"value":"eA=="},{"op":"add","key":%q,"delta":5,"ttl":"1m0s"}]}`, a, a, b)
	r = do(t, "POST", url+"/v1/txn", []byte(body), "Idempotency-Key", "txn-1")
	require.Equal(t, 200, r.Status, "a repeat, not a second run (whose compare would fail): %s", r.Body)
	require.Contains(t, string(r.Body), `"committed":true`)
	it, err := kv.Get(ctx, b)
	require.NoError(t, err)
	require.Equal(t, "5", string(it.Value), "added once")
	r = do(t, "POST", url+"/v1/txn", []byte(strings.Replace(body, `"delta":5`, `"delta":6`, 1)), "Idempotency-Key", "txn-1")
	require.Equal(t, 422, r.Status, string(r.Body))
}
