package httpapi_test

import (
	"bufio"
	"bytes"
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

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

type response = testcluster.Response

func do(t *testing.T, method, url string, body []byte, header ...string) response {
	t.Helper()
	return testcluster.Do(t, method, url, body, header...)
}

func TestAPI_SingleKeyLifecycle(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	base := c.URL(0) + "/v1/kv/"

	r := do(t, "GET", base+"k", nil)
	require.Equal(t, 404, r.Status)
	require.Equal(t, api.CodeNotFound, r.ErrCode(t))

	r = do(t, "PUT", base+"k", []byte("v1"))
	require.Equal(t, 200, r.Status)
	var pr api.PutResponse
	require.NoError(t, json.Unmarshal(r.Body, &pr))
	require.NotZero(t, pr.Version)
	require.Equal(t, fmt.Sprintf(`"%d"`, pr.Version), r.Header.Get("ETag"))

	r = do(t, "GET", base+"k", nil)
	require.Equal(t, 200, r.Status)
	require.Equal(t, "v1", string(r.Body))
	require.Equal(t, fmt.Sprintf(`"%d"`, pr.Version), r.Header.Get("ETag"))

	// If-None-Match with the current version: not modified.
	r = do(t, "GET", base+"k", nil, "If-None-Match", fmt.Sprintf(`"%d"`, pr.Version))
	require.Equal(t, 304, r.Status)

	// Compare-and-set.
	r = do(t, "PUT", base+"k", []byte("v2"), "If-Match", `"999999"`)
	require.Equal(t, 412, r.Status)
	require.Equal(t, api.CodePreconditionFailed, r.ErrCode(t))
	r = do(t, "PUT", base+"k", []byte("v2"), "If-Match", fmt.Sprintf(`"%d"`, pr.Version))
	require.Equal(t, 200, r.Status)
	var pr2 api.PutResponse
	require.NoError(t, json.Unmarshal(r.Body, &pr2))
	require.Greater(t, pr2.Version, pr.Version)

	// Create-only.
	r = do(t, "PUT", base+"k", []byte("v3"), "If-None-Match", "*")
	require.Equal(t, 412, r.Status)
	r = do(t, "PUT", base+"new", []byte("n"), "If-None-Match", "*")
	require.Equal(t, 200, r.Status)
	r = do(t, "PUT", base+"absent", []byte("n"), "If-Match", "*")
	require.Equal(t, 412, r.Status)

	// Empty values are values.
	r = do(t, "PUT", base+"empty", nil)
	require.Equal(t, 200, r.Status)
	r = do(t, "GET", base+"empty", nil)
	require.Equal(t, 200, r.Status)
	require.Empty(t, r.Body)

	// Delete, with and without a condition.
	r = do(t, "DELETE", base+"k", nil, "If-Match", `"1"`)
	require.Equal(t, 412, r.Status)
	r = do(t, "DELETE", base+"k", nil)
	require.Equal(t, 200, r.Status)
	var dr api.DeleteResponse
	require.NoError(t, json.Unmarshal(r.Body, &dr))
	require.True(t, dr.Deleted)
	require.Greater(t, dr.Version, pr2.Version)
	r = do(t, "DELETE", base+"k", nil)
	require.Equal(t, 200, r.Status)
	require.JSONEq(t, `{"deleted":false}`, string(r.Body))
	r = do(t, "GET", base+"k", nil)
	require.Equal(t, 404, r.Status)
}

func TestAPI_KeysAreKeptExactly(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	keys := []string{"a/b", "a//b", "/lead", "./dot", "../up", "a/./b", "x/../y", "sp ace", "q?mark", "hash#tag", "pct%41", "ünï/cødé", "{tag}/k", "trail/"}
	for i, k := range keys {
		r := do(t, "PUT", c.URL(0)+"/v1/kv/"+url.PathEscape(k), []byte(fmt.Sprint(i)))
		require.Equal(t, 200, r.Status, "put %q: %s", k, r.Body)
	}
	// Unescaped slashes are part of the key too, and never redirected.
	r := do(t, "PUT", c.URL(0)+"/v1/kv/raw//slashes/./here", []byte("raw"))
	require.Equal(t, 200, r.Status)
	keys = append(keys, "raw//slashes/./here")

	for i, k := range keys[:len(keys)-1] {
		r := do(t, "GET", c.URL(0)+"/v1/kv/"+url.PathEscape(k), nil)
		require.Equal(t, 200, r.Status, "get %q", k)
		require.Equal(t, fmt.Sprint(i), string(r.Body), "get %q", k)
	}
	r = do(t, "GET", c.URL(0)+"/v1/kv/raw//slashes/./here", nil)
	require.Equal(t, "raw", string(r.Body))
	// Percent-decoded once: %2541 is the key "%41", not "A".
	r = do(t, "GET", c.URL(0)+"/v1/kv/pct%2541", nil)
	require.Equal(t, 200, r.Status)
	r = do(t, "GET", c.URL(0)+"/v1/kv/pctA", nil)
	require.Equal(t, 404, r.Status)

	r = do(t, "GET", c.URL(0)+"/v1/kv?limit=100", nil)
	require.Equal(t, 200, r.Status)
	var sr api.ScanResponse
	require.NoError(t, json.Unmarshal(r.Body, &sr))
	got := map[string]bool{}
	for _, it := range sr.Items {
		got[it.Key] = true
	}
	for _, k := range keys {
		require.True(t, got[k], "scan lost key %q", k)
	}
	require.Len(t, sr.Items, len(keys))
}

func TestAPI_Scan_PagesExactly(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	for i := range 25 {
		do(t, "PUT", c.URL(0)+fmt.Sprintf("/v1/kv/p/%02d", i), []byte{byte(i)})
	}
	do(t, "PUT", c.URL(0)+"/v1/kv/q", []byte("other"))
	var all []string
	start := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10)
		r := do(t, "GET", c.URL(0)+"/v1/kv?prefix=p/&limit=10&start="+url.QueryEscape(start), nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		var sr api.ScanResponse
		require.NoError(t, json.Unmarshal(r.Body, &sr))
		for _, it := range sr.Items {
			all = append(all, it.Key)
			require.NotZero(t, it.Version)
		}
		if !sr.More {
			require.Empty(t, sr.Next)
			break
		}
		require.Len(t, sr.Items, 10)
		start = sr.Next
	}
	require.Len(t, all, 25)
	for i, k := range all {
		require.Equal(t, fmt.Sprintf("p/%02d", i), k)
	}
	r := do(t, "GET", c.URL(0)+"/v1/kv?start=p/05&end=p/08", nil)
	var sr api.ScanResponse
	require.NoError(t, json.Unmarshal(r.Body, &sr))
	require.Len(t, sr.Items, 3)
	require.Equal(t, []byte{5}, sr.Items[0].Value)
	require.False(t, sr.More)
	// A page that ends exactly at the last key says there is no more.
	r = do(t, "GET", c.URL(0)+"/v1/kv?prefix=p/&limit=25", nil)
	require.NoError(t, json.Unmarshal(r.Body, &sr))
	require.Len(t, sr.Items, 25)
	require.False(t, sr.More)
}

func TestAPI_BadInputIsRefusedWithJSON(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	u := c.URL(0)
	long := strings.Repeat("k", 1025)
	tests := []struct {
		name, method, path string
		body               []byte
		hdr                []string
		status             int
		code               string
	}{
		{"empty key", "GET", "/v1/kv/", nil, nil, 400, api.CodeInvalidRequest},
		{"invalid utf-8 key", "PUT", "/v1/kv/%FF%FE", []byte("x"), nil, 400, api.CodeInvalidRequest},
		{"key too long", "PUT", "/v1/kv/" + long, []byte("x"), nil, 413, api.CodeTooLarge},
		{"value too large", "PUT", "/v1/kv/big", bytes.Repeat([]byte("x"), 1<<20+1), nil, 413, api.CodeTooLarge},
		{"bad consistency", "GET", "/v1/kv/k?consistency=maybe", nil, nil, 400, api.CodeInvalidRequest},
		{"bad if-match", "PUT", "/v1/kv/k", []byte("x"), []string{"If-Match", "abc"}, 400, api.CodeInvalidRequest},
		{"both conditions", "PUT", "/v1/kv/k", []byte("x"), []string{"If-Match", `"1"`, "If-None-Match", "*"}, 400, api.CodeInvalidRequest},
		{"ttl not a duration", "PUT", "/v1/kv/k?ttl=soon", []byte("x"), nil, 400, api.CodeInvalidRequest},
		{"negative ttl", "PUT", "/v1/kv/k?ttl=-5s", []byte("x"), nil, 400, api.CodeInvalidRequest},
		{"idempotency key too long", "PUT", "/v1/kv/k", []byte("x"), []string{"Idempotency-Key", strings.Repeat("i", 257)}, 400, api.CodeInvalidRequest},
		{"ttl on a delete op", "POST", "/v1/txn", []byte(`{"ops":[{"op":"delete","key":"k","ttl":"5s"}]}`), nil, 400, api.CodeInvalidRequest},
		{"delta on a put op", "POST", "/v1/txn", []byte(`{"ops":[{"op":"put","key":"k","value":"eA==","delta":1}]}`), nil, 400, api.CodeInvalidRequest},
		{"watch cursor garbage", "GET", "/v1/watch?since=notacursor", nil, nil, 400, api.CodeInvalidRequest},
		{"malformed query", "GET", "/v1/watch?since=%%%", nil, nil, 400, api.CodeInvalidRequest},
		{"malformed scan query", "GET", "/v1/kv?prefix=a%zz", nil, nil, 400, api.CodeInvalidRequest},
		{"watch invalid utf-8 prefix", "GET", "/v1/watch?prefix=%FF", nil, nil, 400, api.CodeInvalidRequest},
		{"scan limit zero", "GET", "/v1/kv?limit=0", nil, nil, 400, api.CodeInvalidRequest},
		{"scan limit too big", "GET", "/v1/kv?limit=10001", nil, nil, 400, api.CodeInvalidRequest},
		{"scan limit not a number", "GET", "/v1/kv?limit=ten", nil, nil, 400, api.CodeInvalidRequest},
		{"scan invalid utf-8", "GET", "/v1/kv?prefix=%FF", nil, nil, 400, api.CodeInvalidRequest},
		{"bad group header", "GET", "/v1/kv/k", nil, []string{api.HeaderGroup, "x", api.HeaderEpoch, "1"}, 400, api.CodeInvalidRequest},
		{"unknown endpoint", "GET", "/v2/nothing", nil, nil, 404, api.CodeNotFound},
		{"wrong method", "POST", "/v1/kv/k", []byte("x"), nil, 405, api.CodeMethodNotAllowed},
		{"ttl past the clock's range", "PUT", "/v1/kv/k?ttl=2500000h", []byte("x"), nil, 400, api.CodeInvalidRequest},
		{"transaction with ops twice", "POST", "/v1/txn", []byte(`{"ops":[{"op":"put","key":"a","value":"eA=="}],"ops":[{"op":"put","key":"b","value":"eA=="}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with a key twice in an op", "POST", "/v1/txn", []byte(`{"ops":[{"op":"put","key":"a","key":"b","value":"eA=="}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with ops twice in other cases", "POST", "/v1/txn", []byte(`{"ops":[{"op":"put","key":"a","value":"eA=="}],"OPS":[{"op":"put","key":"b","value":"eA=="}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with key twice, once with a Kelvin sign", "POST", "/v1/txn", []byte(`{"ops":[{"op":"put","key":"a","\u212aey":"b","value":"eA=="}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with ops twice, once with a long s", "POST", "/v1/txn", []byte("{\"ops\":[{\"op\":\"get\",\"key\":\"a\"}],\"op\u017f\":[{\"op\":\"get\",\"key\":\"b\"}]}"), nil, 400, api.CodeInvalidRequest},
		{"transaction with invalid UTF-8", "POST", "/v1/txn", []byte("{\"ops\":[{\"op\":\"get\",\"key\":\"a\xff\"}]}"), nil, 400, api.CodeInvalidRequest},
		{"transaction with a lone high surrogate", "POST", "/v1/txn", []byte(`{"ops":[{"op":"get","key":"a\ud800"}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with a lone low surrogate", "POST", "/v1/txn", []byte(`{"ops":[{"op":"get","key":"a\udc00b"}]}`), nil, 400, api.CodeInvalidRequest},
		{"transaction with a reversed pair", "POST", "/v1/txn", []byte(`{"ops":[{"op":"get","key":"\udc00\ud800"}]}`), nil, 400, api.CodeInvalidRequest},
		{"node-to-node read index from a client", "GET", "/v1/internal/readindex?group=1", nil, nil, 403, api.CodeForbidden},
		{"node-to-node propose from a client", "POST", "/v1/internal/propose?group=1", []byte{2, 0, 0, 0, 0}, nil, 403, api.CodeForbidden},
		{"node-to-node propose with a wrong credential", "POST", "/v1/internal/propose?group=1", []byte{2}, []string{api.HeaderPeerAuth, "guess"}, 403, api.CodeForbidden},
		{"node-to-node history from a client", "GET", "/v1/internal/history?group=1&after=now", nil, nil, 403, api.CodeForbidden},
		{"node-to-node read from a client", "POST", "/v1/internal/read?group=1", []byte(`["a"]`), nil, 403, api.CodeForbidden},
		{"node-to-node snapshot from a client", "GET", "/v1/internal/snapshot?group=1&min_index=0", nil, nil, 403, api.CodeForbidden},
		{"abort of an unknown transaction", "POST", "/v1/admin/txns/nosuchtxn/abort", nil, nil, 404, api.CodeNotFound},
		{"abort of a transaction id that is not UTF-8", "POST", "/v1/admin/txns/a%FF/abort", nil, nil, 400, api.CodeInvalidRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, u+tc.path, tc.body, tc.hdr...)
			require.Equal(t, tc.status, r.Status, "%s", r.Body)
			require.Equal(t, "application/json", r.Header.Get("Content-Type"))
			require.Equal(t, tc.code, r.ErrCode(t))
		})
	}
	// An error quoting what the client sent stays short.
	r := do(t, "POST", u+"/v1/txn", []byte(`{"ops":[{"op":"add","key":"n","delta":`+strings.Repeat("9", 1<<20)+`}]}`))
	require.Equal(t, 400, r.Status)
	require.Less(t, len(r.Body), 4<<10, "the answer does not echo the megabyte number")
	require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
	// Nothing above was applied.
	r = do(t, "GET", u+"/v1/kv?limit=10", nil)
	require.JSONEq(t, `{"items":[],"more":false}`, string(r.Body))
}

func TestAPI_ValueTooLargeNamesTheValueLimit(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	for _, n := range []int{1<<20 + 1, 3 << 19} {
		r := do(t, "PUT", c.URL(0)+"/v1/kv/big", bytes.Repeat([]byte("x"), n))
		require.Equal(t, 413, r.Status)
		require.Contains(t, string(r.Body), "1048576", "the error names the value limit")
		require.NotContains(t, string(r.Body), "limit is 1048577")
	}
}

// TestAPI_NetHTTPErrorsAreJSON sends what net/http refuses before any
// handler runs: every answer is still the API's JSON error.
func TestAPI_NetHTTPErrorsAreJSON(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.ReadHeaderTimeout = 300 * time.Millisecond })
	addr := strings.TrimPrefix(c.URL(0), "http://")
	raw := func(t *testing.T, req string) string {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Write([]byte(req))
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		b, _ := io.ReadAll(conn)
		return string(b)
	}
	tests := []struct {
		name, req string
		status    int
		code      string
	}{
		{"bad percent-encoding in the path", "GET /v1/kv/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, api.CodeInvalidRequest},
		{"negative Content-Length", "PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, api.CodeInvalidRequest},
		{"malformed header line", "GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, api.CodeInvalidRequest},
		{"headers too large", "GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 200<<10) + "\r\n\r\n", 431, api.CodeHeadersTooLarge},
		{"unsupported transfer encoding", "PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, api.CodeNotImplemented},
		{"unsupported expectation", "PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx", 400, api.CodeInvalidRequest},
		{"unsupported protocol version", "GET /v1/kv/a HTTP/2.0\r\nHost: x\r\n\r\n", 400, api.CodeInvalidRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := raw(t, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
			require.NoError(t, err, "answer: %q", out)
			defer resp.Body.Close()
			require.Equal(t, tc.status, resp.StatusCode)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			b, _ := io.ReadAll(resp.Body)
			require.Equal(t, tc.code, response{Body: b}.ErrCode(t))
		})
	}
	t.Run("headers that never end", func(t *testing.T) {
		// net/http closes the connection once the header timeout passes,
		// without a word: never a plain-text answer.
		out := raw(t, "GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n")
		require.NotContains(t, out, "text/plain")
	})
	// The server still serves afterwards.
	require.Equal(t, 404, do(t, "GET", c.URL(0)+"/v1/kv/a", nil).Status)
}

func TestAPI_BodyOverTheLimitIsRefused(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	// A chunked body (no Content-Length) past the limit.
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for range 40 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, err := http.NewRequest("PUT", c.URL(0)+"/v1/kv/chunked", pr)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pr.Close()
	require.Equal(t, 413, resp.StatusCode, "%s", b)
	r := do(t, "GET", c.URL(0)+"/v1/kv/chunked", nil)
	require.Equal(t, 404, r.Status)
}

func TestAPI_RoutedRequests(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	follower := (leader + 1) % 3
	r := do(t, "PUT", c.URL(leader)+"/v1/kv/k", []byte("v"), api.HeaderGroup, "1", api.HeaderEpoch, "1")
	require.Equal(t, 200, r.Status)

	// Wrong group and stale epoch: 421.
	r = do(t, "GET", c.URL(leader)+"/v1/kv/k", nil, api.HeaderGroup, "2", api.HeaderEpoch, "1")
	require.Equal(t, 421, r.Status)
	require.Equal(t, api.CodeWrongGroup, r.ErrCode(t))
	r = do(t, "GET", c.URL(leader)+"/v1/kv/k", nil, api.HeaderGroup, "1", api.HeaderEpoch, "0")
	require.Equal(t, 421, r.Status)

	// A routed write to a follower is refused, naming the leader, not
	// forwarded.
	r = do(t, "PUT", c.URL(follower)+"/v1/kv/k", []byte("v2"), api.HeaderGroup, "1", api.HeaderEpoch, "1")
	require.Equal(t, 503, r.Status)
	require.Equal(t, api.CodeUnavailable, r.ErrCode(t))
	require.Equal(t, testcluster.NodeID(leader), r.Header.Get(api.HeaderLeader))
	require.NotEmpty(t, r.Header.Get("Retry-After"))
	r = do(t, "GET", c.URL(follower)+"/v1/kv/k", nil, api.HeaderGroup, "1", api.HeaderEpoch, "1")
	require.Equal(t, 503, r.Status)
	// ... but a routed follower or stale read is served there.
	r = do(t, "GET", c.URL(follower)+"/v1/kv/k?consistency=follower", nil, api.HeaderGroup, "1", api.HeaderEpoch, "1")
	require.Equal(t, 200, r.Status)
	require.Equal(t, "v", string(r.Body))
	require.Equal(t, testcluster.NodeID(follower), r.Header.Get(api.HeaderNode))
}

func TestAPI_FollowerForwardsToLeader(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	follower := (leader + 1) % 3
	fu := c.URL(follower)
	r := do(t, "PUT", fu+"/v1/kv/fwd", []byte("1"))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.Equal(t, testcluster.NodeID(leader), r.Header.Get(api.HeaderNode), "the write was served by the leader")
	r = do(t, "PUT", fu+"/v1/kv/fwd", []byte("2"), "If-Match", `"1"`)
	require.Equal(t, 412, r.Status, "errors relay through the forwarder")
	require.Equal(t, api.CodePreconditionFailed, r.ErrCode(t))

	r = do(t, "GET", fu+"/v1/kv/fwd", nil)
	require.Equal(t, 200, r.Status)
	require.Equal(t, "1", string(r.Body))
	require.NotEmpty(t, r.Header.Get("ETag"))
	require.Equal(t, testcluster.NodeID(leader), r.Header.Get(api.HeaderNode))

	r = do(t, "GET", fu+"/v1/kv/fwd?consistency=follower", nil)
	require.Equal(t, 200, r.Status)
	require.Equal(t, testcluster.NodeID(follower), r.Header.Get(api.HeaderNode))
	require.Equal(t, "1", string(r.Body))

	r = do(t, "GET", fu+"/v1/kv/fwd?consistency=stale", nil)
	require.Equal(t, testcluster.NodeID(follower), r.Header.Get(api.HeaderNode))

	r = do(t, "DELETE", fu+"/v1/kv/fwd", nil)
	require.Equal(t, 200, r.Status)
	r = do(t, "GET", fu+"/v1/kv?prefix=fwd", nil)
	require.JSONEq(t, `{"items":[],"more":false}`, string(r.Body))
}

func TestAPI_ClusterStatusHealthMetrics(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	for i := range 3 {
		r := do(t, "GET", c.URL(i)+"/v1/cluster", nil)
		require.Equal(t, 200, r.Status)
		var cl api.Cluster
		require.NoError(t, json.Unmarshal(r.Body, &cl))
		require.Equal(t, uint64(1), cl.Epoch)
		require.Len(t, cl.Nodes, 3)
		require.Len(t, cl.Groups, 1)
		require.Equal(t, [][2]int{{0, 1023}}, cl.Groups[0].Slots)
		require.Equal(t, []string{"n1", "n2", "n3"}, cl.Groups[0].Members)
		require.Eventually(t, func() bool {
			r := do(t, "GET", c.URL(i)+"/v1/cluster", nil)
			json.Unmarshal(r.Body, &cl)
			return cl.Groups[0].Leader == testcluster.NodeID(leader)
		}, 5e9, 1e7)

		r = do(t, "GET", c.URL(i)+"/v1/status", nil)
		require.Equal(t, 200, r.Status)
		var st api.Status
		require.NoError(t, json.Unmarshal(r.Body, &st))
		require.Equal(t, testcluster.NodeID(i), st.Node)
		require.Len(t, st.Groups, 1)
		wantRole := "follower"
		if i == leader {
			wantRole = "leader"
		}
		require.Equal(t, wantRole, st.Groups[0].Role)

		require.Equal(t, 200, do(t, "GET", c.URL(i)+"/healthz", nil).Status)
		require.Equal(t, 200, do(t, "GET", c.URL(i)+"/readyz", nil).Status)
	}
	do(t, "PUT", c.URL(leader)+"/v1/kv/m", []byte("x"))
	r := do(t, "GET", c.URL(leader)+"/metrics", nil)
	require.Equal(t, 200, r.Status)
	body := string(r.Body)
	for _, want := range []string{
		`kvd_http_requests_total{code="200",method="PUT",route="/v1/kv/{key:.*}"}`,
		`kvd_http_request_duration_seconds_bucket`,
		`kvd_raft_state{group="1",role="leader"} 1`,
		`kvd_raft_commit_index{group="1"}`,
		`kvd_raft_applied_index{group="1"}`,
		`kvd_raft_term{group="1"}`,
	} {
		require.Contains(t, body, want)
	}
}

func TestAPI_ReadyzWithoutQuorum(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	leader := c.Leader(1)
	survivor := (leader + 1) % 3
	for i := range 3 {
		if i != survivor {
			c.Stop(i)
		}
	}
	require.Eventually(t, func() bool {
		return do(t, "GET", c.URL(survivor)+"/readyz", nil).Status == 503
	}, 10e9, 5e7)
	r := do(t, "GET", c.URL(survivor)+"/readyz", nil)
	require.Equal(t, api.CodeUnavailable, r.ErrCode(t))
	// A write without a quorum is refused as unavailable, never applied.
	r = do(t, "PUT", c.URL(survivor)+"/v1/kv/k", []byte("x"))
	require.Equal(t, 503, r.Status, "%s", r.Body)
	require.Equal(t, 200, do(t, "GET", c.URL(survivor)+"/healthz", nil).Status)
}
