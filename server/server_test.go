package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/node"
	"github.com/kvd-project/kvd/server"
)

func TestServer_StoresClusterMapThroughRaft(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	for i := range 3 {
		for g := kvd.GroupID(1); g <= 2; g++ {
			grp, ok := c.Node(i).Group(g)
			require.True(t, ok, "node %d hosts group %d", i, g)
			require.Eventually(t, func() bool { return grp.Store().Map() != nil }, 10*time.Second, 10*time.Millisecond)
			m := grp.Store().Map()
			require.Equal(t, uint64(1), m.Epoch)
			require.NoError(t, m.Validate())
			require.Len(t, m.Groups, 2)
		}
	}
}

// A client's pool may dial a spare connection and never send on it; the
// drain must not wait for it as if it carried a request (net/http waits
// five seconds for those, longer than this test's ShutdownTimeout allows).
func TestServer_ShutdownClosesConnectionsThatNeverSentARequest(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.ShutdownTimeout = 3 * time.Second })
	spare, err := net.Dial("tcp", strings.TrimPrefix(c.URL(0), "http://"))
	require.NoError(t, err)
	defer spare.Close()
	require.Equal(t, 200, httpPut(t, c.URL(0), "k", "v").StatusCode)
	require.NoError(t, c.Node(0).Close())
	spare.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = spare.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the server should have closed the unused connection")
}

func TestServer_RestartIgnoresTheBootstrapFile(t *testing.T) {
	dir := t.TempDir()
	start := func(groups int) *server.Server {
		httpLn, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		raftLn, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		cfg := server.DefaultConfig()
		cfg.DataDir = dir
		cfg.HTTPListener, cfg.RaftListener = httpLn, raftLn
		cfg.Replication = testcluster.FastReplication()
		cfg.Logger = testcluster.Logger()
		cfg.InitialCluster = &kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: httpLn.Addr().String(), Raft: raftLn.Addr().String()}}, Groups: groups, Replicas: 1}
		s, err := node.New(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := start(1)
	require.NoError(t, s.Close())
	s = start(4)
	require.Len(t, s.Map().Groups, 1, "a restarted node resumes from its data dir")
	_, ok := s.Group(2)
	require.False(t, ok)
}

func TestServer_RestartedNodeCatchesUp(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	f := (leader + 1) % 3
	c.Stop(f)
	for i := range 20 {
		req, _ := http.NewRequest("PUT", c.URL(leader)+fmt.Sprintf("/v1/kv/r%d", i), strings.NewReader("x"))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	c.Restart(f)
	require.Eventually(t, func() bool {
		resp, err := http.Get(c.URL(f) + "/v1/kv/r19?consistency=stale")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 10*time.Second, 20*time.Millisecond)
}

func TestServer_ScanMergesGroupsInOrder(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	want := []string{}
	groups := map[kvd.GroupID]bool{}
	for i := range 60 {
		k := fmt.Sprintf("s/%03d", i)
		want = append(want, k)
		gid, _ := c.Node(0).Map().GroupOf(kvd.Slot(k))
		groups[gid] = true
		req, _ := http.NewRequest("PUT", c.URL(i%3)+"/v1/kv/"+url.PathEscape(k), strings.NewReader(k))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	require.Len(t, groups, 3, "the keys spread over every group")
	for _, consistency := range []string{"linearizable", "follower", "stale"} {
		for node := range 3 {
			var got []string
			start := ""
			for range 20 {
				resp, err := http.Get(c.URL(node) + "/v1/kv?prefix=s/&limit=7&consistency=" + consistency + "&start=" + url.QueryEscape(start))
				require.NoError(t, err)
				require.Equal(t, 200, resp.StatusCode)
				var sr api.ScanResponse
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&sr))
				resp.Body.Close()
				for _, it := range sr.Items {
					got = append(got, it.Key)
					require.Equal(t, it.Key, string(it.Value))
				}
				if !sr.More {
					break
				}
				require.Len(t, sr.Items, 7)
				start = sr.Next
			}
			require.Equal(t, want, got, "%s scan from node %d", consistency, node)
		}
	}
}

func TestServer_ScanPagesStopAtTheByteBudget(t *testing.T) {
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) { cfg.Limits.MaxScanBytes = 2000 })
	val := strings.Repeat("v", 300)
	var want []string
	for i := range 40 {
		k := fmt.Sprintf("b/%02d", i)
		want = append(want, k)
		resp := httpPut(t, c.URL(i%3), k, val)
		require.Equal(t, 200, resp.StatusCode)
	}
	var got []string
	start := ""
	pages := 0
	for ; pages < 100; pages++ {
		resp, err := http.Get(c.URL(0) + "/v1/kv?prefix=b/&limit=100&consistency=follower&start=" + url.QueryEscape(start))
		require.NoError(t, err)
		var sr api.ScanResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&sr))
		resp.Body.Close()
		require.NotEmpty(t, sr.Items)
		size := 0
		for _, it := range sr.Items {
			got = append(got, it.Key)
			size += len(it.Key) + len(it.Value)
		}
		// Each of the 3 groups reads its third of the cap, and the
		// merged page is cut to the cap itself.
		require.LessOrEqual(t, size, 2000, "page %d", pages)
		if !sr.More {
			break
		}
		start = sr.Next
	}
	require.Equal(t, want, got, "pages cut by bytes still cover every key once, in order")
	require.Greater(t, pages+1, 2, "40 values of 300 bytes do not fit a 2000-byte page")

	// A caller may ask for smaller pages, never larger ones.
	r := do(t, "GET", c.URL(0)+"/v1/kv?prefix=b/&limit=100&consistency=follower&bytes=1", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var sr api.ScanResponse
	require.NoError(t, json.Unmarshal(r.Body, &sr))
	require.True(t, sr.More)
	require.Len(t, sr.Items, 1, "a page holds one item when one alone is over the cap")
	r = do(t, "GET", c.URL(0)+"/v1/kv?prefix=b/&limit=100&bytes=1000000", nil)
	require.NoError(t, json.Unmarshal(r.Body, &sr))
	require.Less(t, len(sr.Items), 40, "the node's cap still holds")
	r = do(t, "GET", c.URL(0)+"/v1/kv?bytes=0", nil)
	require.Equal(t, 400, r.Status)
}

// A client that uploads a body too slowly to finish does not make the
// node's shutdown fail: the drain is bounded, then cuts it off.
func TestServer_CloseCutsOffASlowUploadAtTheDrainDeadline(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.ShutdownTimeout = 300 * time.Millisecond })
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.URL(0), "http://"), time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("PUT /v1/kv/slow HTTP/1.1\r\nHost: kvd\r\nContent-Length: 1000\r\n\r\nx"))
	require.NoError(t, err)
	// The metrics request counts itself: 2 means the upload is in flight.
	require.Eventually(t, func() bool { return testcluster.Metric(t, c.URL(0), "kvd_http_inflight_requests") >= 2 },
		5*time.Second, 10*time.Millisecond, "the request is in flight, its body unfinished")
	start := time.Now()
	require.NoError(t, c.Node(0).Close(), "a bounded drain that cut a client off is no failure")
	require.Less(t, time.Since(start), 5*time.Second)
	_, err = c.Node(0).KV().Get(context.Background(), "slow")
	require.Error(t, err, "the node is closed, and the cut-off upload wrote nothing")
}

// A request shed before its body is read still gets its answer: the body
// is read and dropped, so a client sending a large one sees the 429, not a
// reset connection.
func TestServer_AShedUploadGetsItsAnswerNotAReset(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.MaxInflightBytes = 1500 })
	addr := strings.TrimPrefix(c.URL(0), "http://")
	// An upload that never finishes holds 1000 of the 1500 bytes.
	hold, err := net.DialTimeout("tcp", addr, time.Second)
	require.NoError(t, err)
	defer hold.Close()
	_, err = hold.Write([]byte("PUT /v1/kv/held HTTP/1.1\r\nHost: kvd\r\nContent-Length: 1000\r\n\r\nx"))
	require.NoError(t, err)
	// The metrics request counts itself: 2 means the upload holds its bytes.
	require.Eventually(t, func() bool { return testcluster.Metric(t, c.URL(0), "kvd_http_inflight_requests") >= 2 },
		5*time.Second, 10*time.Millisecond)

	for range 5 {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		require.NoError(t, err)
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		body := bytes.Repeat([]byte("v"), 1<<20)
		wrote := make(chan error, 1)
		go func() {
			_, err := conn.Write(append([]byte(fmt.Sprintf("PUT /v1/kv/big HTTP/1.1\r\nHost: kvd\r\nContent-Length: %d\r\n\r\n", len(body))), body...))
			wrote <- err
		}()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err, "the answer, not a reset")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 429, resp.StatusCode, "%s", b)
		require.Contains(t, string(b), `"code":"overloaded"`)
		require.NoError(t, <-wrote, "the whole body was taken")
		conn.Close()
	}
}
