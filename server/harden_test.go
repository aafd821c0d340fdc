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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

type response = testcluster.Response

func do(t *testing.T, method, url string, body []byte, header ...string) response {
	t.Helper()
	return testcluster.Do(t, method, url, body, header...)
}

// peerDo sends a node-to-node request, as a node would (with the
// cluster's credential).
func peerDo(t *testing.T, c *testcluster.Cluster, method, url string, body []byte) (int, []byte) {
	t.Helper()
	r := do(t, method, url, body, api.HeaderPeerAuth, c.PeerCredential(), api.HeaderForwarded, "n9")
	return r.Status, r.Body
}

func encodeCmd(t *testing.T, kind store.CmdKind, payload any) []byte {
	t.Helper()
	data, err := json.Marshal(payload)
	require.NoError(t, err)
	b := store.Batch{Cmds: []store.Cmd{{Kind: kind, Data: data}}}
	return b.AppendEncode(nil)
}

// Even with the cluster's credential, a proposal that would not apply as
// it reads is refused before it reaches the log: an empty key, a key of
// another group, a lock that would outlive the store.
func TestServer_ForgedInternalProposalsAreRefused(t *testing.T) {
	c := testcluster.New(t, 1, 2)
	m := c.Node(0).Map()
	ks := testcluster.KeysInGroups(m, "f", 1)
	mine, theirs := ks[1][0], ks[2][0]
	u := c.URL(0) + "/v1/internal/propose?group=1"
	far := time.Date(2096, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	soon := time.Now().Add(time.Minute).UnixNano()
	longMine := ""
	for i := 0; longMine == ""; i++ {
		k := fmt.Sprintf("%s%d", strings.Repeat("k", kvd.DefaultLimits().MaxKeyBytes), i)
		if g, _ := m.GroupOf(kvd.Slot(k)); g == 1 {
			longMine = k
		}
	}
	tests := []struct {
		name   string
		body   []byte
		status int
	}{
		{"one-phase put of an empty key", encodeCmd(t, store.CmdTxnOnePhase, store.TxnOnePhase{Ops: []store.TxnOp{{Op: "put", Key: "", Value: []byte("x")}}}), 400},
		{"one-phase put of another group's key", encodeCmd(t, store.CmdTxnOnePhase, store.TxnOnePhase{Ops: []store.TxnOp{{Op: "put", Key: theirs, Value: []byte("x")}}}), 421},
		{"a lock until 2096", encodeCmd(t, store.CmdTxnPrepare, store.TxnPrepare{ID: "forged", RecordGroup: 1, Deadline: far, Ops: []store.TxnOp{{Op: "put", Key: mine, Value: []byte("x")}}}), 400},
		{"a plain put", (&store.Batch{Cmds: []store.Cmd{{Kind: store.CmdPut, Key: mine, Value: []byte("x")}}}).AppendEncode(nil), 400},
		{"garbage", []byte("not a batch"), 400},
		{"one-phase writing a key twice", encodeCmd(t, store.CmdTxnOnePhase, store.TxnOnePhase{Ops: []store.TxnOp{
			{Op: "put", Key: mine, Value: []byte("x")}, {Op: "delete", Key: mine}}}), 400},
		{"a record group the cluster lacks", encodeCmd(t, store.CmdTxnPrepare, store.TxnPrepare{ID: "forged", RecordGroup: 9, Deadline: soon,
			Ops: []store.TxnOp{{Op: "put", Key: mine, Value: []byte("x")}}}), 400},
		{"a participant the cluster lacks", encodeCmd(t, store.CmdTxnPrepare, store.TxnPrepare{ID: "forged", RecordGroup: 1, Deadline: soon,
			Participants: []kvd.GroupID{1, 9}, Ops: []store.TxnOp{{Op: "put", Key: mine, Value: []byte("x")}}}), 400},
		{"participants sent to another group than the record's", encodeCmd(t, store.CmdTxnPrepare, store.TxnPrepare{ID: "forged", RecordGroup: 2, Deadline: soon,
			Participants: []kvd.GroupID{1, 2}, Ops: []store.TxnOp{{Op: "put", Key: mine, Value: []byte("x")}}}), 400},
		{"a value over the node's limit", encodeCmd(t, store.CmdTxnOnePhase, store.TxnOnePhase{Ops: []store.TxnOp{
			{Op: "put", Key: mine, Value: bytes.Repeat([]byte("v"), kvd.DefaultLimits().MaxValueBytes+1)}}}), 413},
		{"a key over the node's limit", encodeCmd(t, store.CmdTxnOnePhase, store.TxnOnePhase{Ops: []store.TxnOp{
			{Op: "put", Key: longMine, Value: []byte("x")}}}), 413},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := peerDo(t, c, "POST", u, tc.body)
			require.Equal(t, tc.status, status, "%s", body)
		})
	}
	// Nothing was applied, nothing is locked, and the node serves.
	r := do(t, "GET", c.URL(0)+"/v1/kv?limit=10", nil)
	require.JSONEq(t, `{"items":[],"more":false}`, string(r.Body))
	for _, k := range []string{mine, theirs} {
		r := do(t, "PUT", c.URL(0)+"/v1/kv/"+k, []byte("v"))
		require.Equal(t, 200, r.Status, "%s", r.Body)
	}
}

// An invalid command that reaches the log anyway (here proposed behind
// the node's back) is applied as an error on every replica: none stops,
// and a restart replays it alike.
func TestServer_InvalidCommandInTheLogStopsNoReplica(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	li := c.Leader(1)
	g, _ := c.Node(li).Group(1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, cmd := range []store.Cmd{
		{Kind: store.CmdPut, Key: "", Value: []byte("x")},
		{Kind: store.CmdTxnPrepare, Data: []byte(`{"id":"","record_group":1,"deadline":1,"ops":[{"op":"put","key":""}]}`)},
		{Kind: store.CmdTxnResolve, Data: []byte(`{`)},
	} {
		res, err := g.Propose(ctx, cmd)
		require.NoError(t, err, "it commits")
		require.ErrorIs(t, res.Err, kvd.ErrInvalid, "and is answered as invalid")
	}
	r := do(t, "PUT", c.URL(li)+"/v1/kv/after", []byte("v"))
	require.Equal(t, 200, r.Status)
	for i := range 3 {
		require.Eventually(t, func() bool {
			r := do(t, "GET", c.URL(i)+"/v1/kv/after?consistency=stale", nil)
			return r.Status == 200
		}, 10*time.Second, 20*time.Millisecond, "node %d serves", i)
	}
	f := (li + 1) % 3
	c.Restart(f)
	c.WaitReady()
	r = do(t, "GET", c.URL(f)+"/v1/kv/after?consistency=stale", nil)
	require.Equal(t, 200, r.Status, "a replay of the invalid entries stops nothing")
}

func TestServer_NodeToNodeCallsNeedTheCredential(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	li := c.Leader(1)
	u := c.URL(li) + "/v1/internal/readindex?group=1"
	r := do(t, "GET", u, nil)
	require.Equal(t, 403, r.Status)
	require.Equal(t, api.CodeForbidden, r.ErrCode(t))
	status, body := peerDo(t, c, "GET", u, nil)
	require.Equal(t, 200, status, "%s", body)
	// The secret is in the data directory, private, and never served.
	for i := range 3 {
		p := filepath.Join(c.DataDir(i), "peer.secret")
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		secret, err := os.ReadFile(p)
		require.NoError(t, err)
		for _, path := range []string{"/v1/cluster", "/v1/status", "/metrics"} {
			r := do(t, "GET", c.URL(i)+path, nil)
			require.NotContains(t, string(r.Body), strings.TrimSpace(string(secret)))
			require.NotContains(t, string(r.Body), c.PeerCredential())
		}
	}
}

func TestTxnAdmin_ListAndAbortAStuckTransaction(t *testing.T) {
	c, block := stoppableCoordinators(t, time.Minute) // long: only the operator ends it
	cl := newBankClient(t, c)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "stuck", 1)
	x, y := ks[1][0], ks[3][0]
	ctx := context.Background()
	block.Store(true)
	_, err := cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(x, []byte("new")), kvd.OpPut(y, []byte("new"))}})
	require.Error(t, err)
	block.Store(false)

	list, err := cl.Txns(ctx)
	require.NoError(t, err)
	require.Len(t, list.Txns, 1, "%+v", list)
	stuck := list.Txns[0]
	require.Equal(t, "pending", stuck.State)
	require.Len(t, stuck.Locks, 2)
	_, err = cl.Put(ctx, x, []byte("plain"))
	require.ErrorIs(t, err, kvd.ErrConflict, "the key is locked")

	got, err := cl.AbortTxn(ctx, stuck.ID)
	require.NoError(t, err)
	require.Equal(t, "aborted", got.State)
	list, err = cl.Txns(ctx)
	require.NoError(t, err)
	require.Len(t, list.Txns, 1, "the aborted record stays until the deadline, to refuse a late prepare")
	require.Equal(t, "aborted", list.Txns[0].State)
	require.Empty(t, list.Txns[0].Locks, "no lock left")
	_, err = cl.Put(ctx, x, []byte("plain"))
	require.NoError(t, err)
	_, err = cl.Get(ctx, y)
	require.ErrorIs(t, err, kvd.ErrNotFound, "aborted: nothing of it was written")
	got, err = cl.AbortTxn(ctx, stuck.ID)
	require.NoError(t, err, "a repeat is harmless")
	require.Equal(t, "aborted", got.State)
	_, err = cl.AbortTxn(ctx, "0123456789abcdef0123456789abcdef")
	require.ErrorIs(t, err, kvd.ErrNotFound)
}

// A node whose group directory was lost does not start that group empty
// (it would have forgotten its vote and its acknowledged entries); the
// others serve the group, and the node says why.
func TestServer_LostGroupDirectoryIsNotStartedEmpty(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	for i := range 10 {
		r := do(t, "PUT", c.URL(0)+fmt.Sprintf("/v1/kv/k%d", i), []byte("v"))
		require.Equal(t, 200, r.Status)
	}
	f := (c.Leader(1) + 1) % 3
	c.Stop(f)
	require.NoError(t, os.RemoveAll(filepath.Join(c.DataDir(f), "groups", "1")))
	c.Restart(f)
	n := c.Node(f)
	_, hosted := n.Group(1)
	require.False(t, hosted, "the group is not started")
	var st api.Status
	r := do(t, "GET", c.URL(f)+"/v1/status", nil)
	require.NoError(t, json.Unmarshal(r.Body, &st))
	require.Len(t, st.Missing, 1)
	require.Equal(t, uint64(1), st.Missing[0].Group)
	for _, name := range []string{"raft.db", "wal"} {
		_, err := os.Stat(filepath.Join(c.DataDir(f), "groups", "1", name))
		require.True(t, os.IsNotExist(err), "nothing is created in its place: %s", name)
	}
	// The node still answers, through the group's other replicas.
	r = do(t, "PUT", c.URL(f)+"/v1/kv/through", []byte("v"))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	r = do(t, "GET", c.URL(f)+"/v1/kv/k3", nil)
	require.Equal(t, 200, r.Status)
}

func TestServer_QuotaRefusesWritesButNotReads(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.QuotaBytes = 1 })
	require.Eventually(t, func() bool {
		return do(t, "PUT", c.URL(0)+"/v1/kv/k", []byte("v")).Status == 507
	}, 5*time.Second, 50*time.Millisecond)
	r := do(t, "PUT", c.URL(0)+"/v1/kv/k", []byte("v"))
	require.Equal(t, 507, r.Status)
	require.Equal(t, api.CodeInsufficientStorage, r.ErrCode(t))
	r = do(t, "POST", c.URL(0)+"/v1/txn", []byte(`{"ops":[{"op":"put","key":"a","value":"eA=="}]}`))
	require.Equal(t, 507, r.Status, "%s", r.Body)
	r = do(t, "GET", c.URL(0)+"/v1/kv/k", nil)
	require.Equal(t, 404, r.Status, "reads go on")
	r = do(t, "DELETE", c.URL(0)+"/v1/kv/k", nil)
	require.Equal(t, 200, r.Status, "deletes go on, to free space: %s", r.Body)
	r = do(t, "POST", c.URL(0)+"/v1/txn", []byte(`{"ops":[{"op":"delete","key":"a"},{"op":"get","key":"b"}]}`))
	require.Equal(t, 200, r.Status, "so do transactions that only delete: %s", r.Body)
	var st api.Status
	require.NoError(t, json.Unmarshal(do(t, "GET", c.URL(0)+"/v1/status", nil).Body, &st))
	require.False(t, st.Storage.Writable)
	require.Contains(t, st.Storage.Reason, "quota")
}

// Past the node's cap of requests in flight, a request is refused at once
// with 429 and a Retry-After, instead of waiting in a queue.
func TestServer_RequestsPastTheInflightCapAreShed(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.MaxInflightRequests = 2 })
	// Two uploads that do not finish hold both slots.
	var wg sync.WaitGroup
	var writers []*io.PipeWriter
	for i := range 2 {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", c.URL(0)+fmt.Sprintf("/v1/kv/slow%d", i), pr)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		_, err := pw.Write([]byte("partial"))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		return do(t, "GET", c.URL(0)+"/v1/kv/x", nil).Status == 429
	}, 5*time.Second, 20*time.Millisecond)
	r := do(t, "GET", c.URL(0)+"/v1/kv/x", nil)
	require.Equal(t, 429, r.Status)
	require.Equal(t, api.CodeOverloaded, r.ErrCode(t))
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	for _, pw := range writers {
		pw.Close()
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		return do(t, "GET", c.URL(0)+"/v1/kv/slow0", nil).Status == 200
	}, 5*time.Second, 20*time.Millisecond, "slots are released")
}

// A leader whose own disk is fine refuses writes when a majority of the
// group's members are short of space: they could not append them.
func TestServer_MajorityOfFullDisksRefusesWritesAtTheLeader(t *testing.T) {
	c := testcluster.New(t, 3, 1, func(cfg *server.Config) {
		if cfg.NodeID != "n1" {
			cfg.QuotaBytes = 1
		}
	})
	li := c.Leader(1)
	if li != 0 {
		g, _ := c.Node(li).Group(1)
		require.NoError(t, g.TransferLeadershipTo("n1"))
	}
	require.Eventually(t, func() bool { return c.Leader(1) == 0 }, 10*time.Second, 20*time.Millisecond)
	var r response
	require.Eventually(t, func() bool {
		r = do(t, "PUT", c.URL(0)+"/v1/kv/k", []byte("v"))
		return r.Status == 507
	}, 10*time.Second, 100*time.Millisecond, "last answer: %d %s", r.Status, r.Body)
	require.Contains(t, string(r.Body), "majority")
}

// A node whose live heap is over its high-water mark refuses client
// requests at once (429), while node-to-node calls, health, readiness,
// metrics and status go on: the cluster stays formed and observable.
func TestServer_MemoryPressureShedsClientRequestsOnly(t *testing.T) {
	c := testcluster.New(t, 3, 1, func(cfg *server.Config) {
		if cfg.NodeID == "n1" {
			cfg.MemoryHighWater = 1 // always over
		}
	})
	var r response
	require.Eventually(t, func() bool {
		r = do(t, "GET", c.URL(0)+"/v1/kv/k", nil)
		return r.Status == 429
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, api.CodeOverloaded, r.ErrCode(t))
	require.Contains(t, string(r.Body), "memory")
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	require.Equal(t, 429, do(t, "PUT", c.URL(0)+"/v1/kv/k", []byte("v")).Status)
	for _, path := range []string{"/healthz", "/readyz", "/v1/status", "/v1/cluster", "/metrics"} {
		require.Equal(t, 200, do(t, "GET", c.URL(0)+path, nil).Status, path)
	}
	require.Positive(t, testcluster.Metric(t, c.URL(0), "kvd_http_shed_total", `reason="memory"`))
	// With n2 leading, the group commits through n1's replica too:
	// replication is not shed.
	if li := c.Leader(1); li != 1 {
		g, _ := c.Node(li).Group(1)
		require.NoError(t, g.TransferLeadershipTo("n2"))
	}
	require.Eventually(t, func() bool { return c.Leader(1) == 1 }, 10*time.Second, 20*time.Millisecond)
	c.Stop(2) // a majority needs n1
	for i := range 5 {
		r := do(t, "PUT", c.URL(1)+fmt.Sprintf("/v1/kv/k%d", i), []byte("v"))
		require.Equal(t, 200, r.Status, "%s", r.Body)
	}
	g, ok := c.Node(0).Group(1)
	require.True(t, ok)
	require.Eventually(t, func() bool {
		_, err := g.Store().Get("k4")
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "n1's replica applies what the others write")
}

// The caches of recent log entries take at most a quarter of a node's
// high-water mark, shared among the groups it hosts: left at 32 MiB a
// group, a node under a small memory limit stayed over its mark, and
// refused every client, once a few large values had been written.
func TestServer_LogCacheFitsTheMemoryHighWater(t *testing.T) {
	c := testcluster.New(t, 1, 2, func(cfg *server.Config) { cfg.MemoryHighWater = 16 << 20 })
	val := bytes.Repeat([]byte("v"), 256<<10)
	for i := range 64 { // 16 MiB
		r := do(t, "PUT", c.URL(0)+fmt.Sprintf("/v1/kv/big-%d", i), val)
		require.Equal(t, 200, r.Status, "%s", r.Body)
	}
	var total int64
	for _, gid := range []kvd.GroupID{1, 2} {
		g, ok := c.Node(0).Group(gid)
		require.True(t, ok)
		total += g.Stats().LogCacheBytes
	}
	require.Positive(t, total, "the groups cache their newest entries")
	require.LessOrEqual(t, total, int64(4<<20)+2*(256<<10+4<<10), "caches within a quarter of the mark (an entry may pass a cache's bound)")
}

// A body of unknown length counts against the node's byte cap as it is
// read: uploads that dribble hold what they sent, not the largest body
// allowed, so they cannot crowd out others; one that would pass the cap
// is refused then.
func TestServer_ChunkedBodiesCountAsTheyAreRead(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.MaxInflightBytes = 1 << 20 })
	var wg sync.WaitGroup
	var writers []*io.PipeWriter
	defer func() {
		for _, pw := range writers {
			pw.Close()
		}
		wg.Wait()
	}()
	hang := func(key string, size int64, first []byte) {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", c.URL(0)+"/v1/kv/"+key, pr)
			req.ContentLength = size // -1: chunked
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		_, err := pw.Write(first)
		require.NoError(t, err)
	}
	for i := range 10 {
		hang(fmt.Sprintf("slow%d", i), -1, []byte("a few bytes"))
	}
	require.Eventually(t, func() bool {
		return testcluster.Metric(t, c.URL(0), "kvd_http_inflight_requests") >= 10
	}, 5*time.Second, 20*time.Millisecond)
	r := do(t, "PUT", c.URL(0)+"/v1/kv/k", bytes.Repeat([]byte("v"), 512<<10))
	require.Equal(t, 200, r.Status, "ten slow uploads of unknown length hold what they sent: %s", r.Body)

	// An announced body holds 900 KiB: a chunked one that reads past
	// the cap is refused while it reads.
	hang("big", 900<<10, []byte("x"))
	require.Eventually(t, func() bool {
		return testcluster.Metric(t, c.URL(0), "kvd_http_inflight_bytes") >= 900<<10
	}, 5*time.Second, 20*time.Millisecond)
	req, err := http.NewRequest("PUT", c.URL(0)+"/v1/kv/chunked", io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("c"), 1<<20))))
	require.NoError(t, err)
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 429, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "overloaded")
}

// Past the node's cap of open connections a new one is answered 503 (in
// JSON, readable before the close) and closed; closing one makes room.
func TestServer_ConnectionsPastTheCapAreAnsweredAndClosed(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.MaxConnections = 3 })
	addr := strings.TrimPrefix(c.URL(0), "http://")
	var held []net.Conn
	defer func() {
		for _, conn := range held {
			conn.Close()
		}
	}()
	// Each held connection proves it was accepted (and not refused
	// because a connection of the cluster's own was still open) by
	// answering a request on it; it then stays open, idle.
	for len(held) < 3 {
		require.Eventually(t, func() bool {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return false
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			resp, err := func() (*http.Response, error) {
				if _, err := io.WriteString(conn, "GET /v1/kv/k HTTP/1.1\r\nHost: kvd\r\n\r\n"); err != nil {
					return nil, err
				}
				return http.ReadResponse(bufio.NewReader(conn), nil)
			}()
			if err != nil || resp.StatusCode != 404 {
				conn.Close()
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_ = conn.SetDeadline(time.Time{})
			held = append(held, conn)
			return true
		}, 5*time.Second, 20*time.Millisecond, "connection %d accepted", len(held))
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var status int
	var body []byte
	require.Eventually(t, func() bool {
		resp, err := hc.Get(c.URL(0) + "/v1/kv/k")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		status = resp.StatusCode
		return true
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 503, status, "%s", body)
	var e api.Error
	require.NoError(t, json.Unmarshal(body, &e))
	require.Equal(t, api.CodeUnavailable, e.Error.Code)
	require.Contains(t, e.Error.Message, "connections")
	held[0].Close()
	held = held[1:]
	require.Eventually(t, func() bool {
		resp, err := hc.Get(c.URL(0) + "/v1/kv/k")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 404
	}, 5*time.Second, 20*time.Millisecond, "a closed connection makes room")
}
