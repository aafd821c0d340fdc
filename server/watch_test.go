package server_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// openWatch starts a watch and returns its stream once the starting
// cursor came, reading with a deadline.
func openWatch(t *testing.T, ctx context.Context, url string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, 200, resp.StatusCode)
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if strings.HasPrefix(line, "id: ") {
			return resp, br
		}
	}
}

// A node serves at most MaxWatches watches: the next is refused at once
// with 429, and a slot is free again once a watch ends.
func TestWatch_PastTheCapIsRefused(t *testing.T) {
	c := testcluster.New(t, 1, 2, func(cfg *server.Config) { cfg.MaxWatches = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, _ := openWatch(t, ctx, c.URL(0)+"/v1/watch?prefix=a")
	openWatch(t, ctx, c.URL(0)+"/v1/watch?prefix=b")
	r := do(t, "GET", c.URL(0)+"/v1/watch?prefix=c", nil)
	require.Equal(t, 429, r.Status, "%s", r.Body)
	require.Equal(t, api.CodeOverloaded, r.ErrCode(t))
	require.Equal(t, 1.0, testcluster.Metric(t, c.URL(0), "kvd_watches_refused_total"))
	first.Body.Close()
	require.Eventually(t, func() bool {
		return testcluster.Metric(t, c.URL(0), "kvd_watches_open") == 1
	}, 10*time.Second, 20*time.Millisecond)
	openWatch(t, ctx, c.URL(0)+"/v1/watch?prefix=c")
}

// A cursor is what the node handed out: one naming a group the cluster
// does not have is refused as invalid, not watched for ever.
func TestWatch_CursorOfAnUnknownGroupIsInvalid(t *testing.T) {
	c := testcluster.New(t, 1, 2, func(*server.Config) {})
	cursor := base64.RawURLEncoding.EncodeToString([]byte("1:0.0,2:0.0,7:0.0"))
	r := do(t, "GET", c.URL(0)+"/v1/watch?since="+cursor, nil)
	require.Equal(t, 400, r.Status, "%s", r.Body)
	require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
	require.Contains(t, string(r.Body), "group 7")
}

// A cursor past everything a group has committed (from another cluster,
// or kept from before this one was rebuilt) is refused, where reading on
// from it would skip every event up to it; a real cursor is taken on any
// node.
func TestWatch_CursorAheadOfTheLogIsInvalid(t *testing.T) {
	c := testcluster.New(t, 3, 2, func(*server.Config) {})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.Equal(t, 200, do(t, "PUT", c.URL(0)+"/v1/kv/a", []byte("1")).Status)
	req, err := http.NewRequestWithContext(ctx, "GET", c.URL(0)+"/v1/watch", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	br := bufio.NewReader(resp.Body)
	cursor := ""
	for cursor == "" {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "id: "); ok {
			cursor = v
		}
	}
	resp.Body.Close()
	for i := range 3 {
		openWatch(t, ctx, c.URL(i)+"/v1/watch?since="+cursor)
	}
	for _, forged := range []string{"1:1000000.0", "1:2.0,2:1000000.5"} {
		r := do(t, "GET", c.URL(1)+"/v1/watch?since="+base64.RawURLEncoding.EncodeToString([]byte(forged)), nil)
		require.Equal(t, 400, r.Status, "%s", r.Body)
		require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
		require.Contains(t, string(r.Body), "log ends at")
	}
}

// Watchers that stop reading hold at most the node's watch buffer,
// however much is written, and give it all back when they go; a watcher
// that reads gets every event, in order, once they are gone.
func TestWatch_StalledReadersHoldABoundedBuffer(t *testing.T) {
	const budget = 2 << 20
	c := testcluster.New(t, 1, 2, func(cfg *server.Config) { cfg.WatchBufferBytes = budget })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, reader := openWatch(t, ctx, c.URL(0)+"/v1/watch?prefix=big/")

	addr := strings.TrimPrefix(c.URL(0), "http://")
	var stalled []net.Conn
	for range 12 {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
		_, err = fmt.Fprintf(conn, "GET /v1/watch?prefix=big/ HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		stalled = append(stalled, conn)
	}
	defer func() {
		for _, conn := range stalled {
			conn.Close()
		}
	}()
	require.Eventually(t, func() bool {
		return testcluster.Metric(t, c.URL(0), "kvd_watches_open") == 13
	}, 10*time.Second, 20*time.Millisecond)

	const n, size = 60, 200 << 10
	peak := 0.0
	sample := func() {
		peak = max(peak, testcluster.Metric(t, c.URL(0), "kvd_watch_buffered_bytes"))
	}
	for i := range n {
		r := do(t, "PUT", c.URL(0)+fmt.Sprintf("/v1/kv/big/%03d", i), []byte(strings.Repeat(string(rune('a'+i%26)), size)))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		sample()
	}
	for range 20 {
		sample()
		time.Sleep(50 * time.Millisecond)
	}
	require.LessOrEqual(t, peak, float64(budget), "the watch buffer stays within its cap")
	require.Greater(t, peak, float64(budget/2), "the stalled watchers did fill the buffer")

	for _, conn := range stalled {
		conn.Close()
	}
	got := map[string]bool{}
	for len(got) < n {
		line, err := reader.ReadString('\n')
		require.NoError(t, err, "after %d events", len(got))
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev api.WatchEvent
		require.NoError(t, json.Unmarshal([]byte(data), &ev))
		require.Len(t, ev.Value, size)
		require.False(t, got[ev.Key], "%s came twice", ev.Key)
		got[ev.Key] = true
	}
	require.Eventually(t, func() bool {
		return testcluster.Metric(t, c.URL(0), "kvd_watches_open") == 1 &&
			testcluster.Metric(t, c.URL(0), "kvd_watch_buffered_bytes") == 0
	}, 10*time.Second, 20*time.Millisecond, "the stalled watches ended and gave their buffer back")
}

// A watch outlives the time a request has to send its body: the read
// deadline that bounds uploads does not end streams.
func TestWatch_OutlivesTheRequestReadTimeout(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) {
		cfg.ReadHeaderTimeout, cfg.RequestTimeout = 300*time.Millisecond, 300*time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, reader := openWatch(t, ctx, c.URL(0)+"/v1/watch?prefix=late")
	time.Sleep(1500 * time.Millisecond)
	r := do(t, "PUT", c.URL(0)+"/v1/kv/late", []byte("v"))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	for {
		line, err := reader.ReadString('\n')
		require.NoError(t, err, "the stream must still be open")
		if strings.HasPrefix(line, "data: ") {
			require.Contains(t, line, `"key":"late"`)
			return
		}
	}
}
