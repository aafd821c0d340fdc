package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// testBackup returns a backup file of n keys with values of size bytes.
func testBackup(t *testing.T, n, size int) ([]byte, backup.Summary) {
	t.Helper()
	var buf bytes.Buffer
	w, err := backup.NewWriter(&buf, backup.Header{Created: time.Now().UTC(), Node: "n1"})
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, w.Add(backup.Record{Key: fmt.Sprintf("k/%04d", i), Value: bytes.Repeat([]byte{byte(i)}, size)}))
	}
	sum, err := w.Close()
	require.NoError(t, err)
	return buf.Bytes(), sum
}

// serveBackupBytes answers a backup request with b, flushed as it goes,
// then cuts the connection if cut is set (as a node whose backup fails
// mid-stream does).
func serveBackupBytes(w http.ResponseWriter, b []byte, cut bool) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	for len(b) > 0 {
		n := min(len(b), 64<<10)
		w.Write(b[:n])
		w.(http.Flusher).Flush()
		b = b[n:]
	}
	if cut {
		panic(http.ErrAbortHandler)
	}
}

func TestClient_Backup_StreamsAndVerifies(t *testing.T) {
	file, want := testBackup(t, 300, 10<<10) // several data chunks
	nodes := fakeCluster(t, "n1", "n2")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, file, false) }
	cl := fakeClient(t, nodes[0])

	var out bytes.Buffer
	sum, err := cl.Backup(context.Background(), &out)
	require.NoError(t, err)
	require.Equal(t, want, sum)
	require.Equal(t, file, out.Bytes(), "w holds the file as sent")
	require.Equal(t, []adminRequest{{Method: "GET", Path: "/v1/admin/backup", ContentLength: 0}}, nodes[0].requests())
	require.Empty(t, nodes[1].requests())
}

func TestClient_Backup_StreamCutOrDamagedIsAnError(t *testing.T) {
	file, _ := testBackup(t, 300, 10<<10)
	damaged := bytes.Clone(file)
	damaged[len(damaged)/2] ^= 0x40
	tests := []struct {
		name string
		body []byte
		cut  bool
		want error
	}{
		{"cut inside a chunk", file[:len(file)/2], true, backup.ErrTruncated},
		{"cut between chunks: no end chunk", file[:len(file)-60], true, backup.ErrTruncated},
		{"a byte changed", damaged, false, backup.ErrCorrupt},
		{"not a backup", []byte("<html>a proxy's page</html>"), false, backup.ErrNotBackup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, tc.body, tc.cut) }
			nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, file, false) }
			cl := fakeClient(t, nodes[0])

			var out bytes.Buffer
			_, err := cl.Backup(context.Background(), &out)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, kvd.ErrUnavailable, "nothing was changed: a backup may be taken again")
			require.NotEmpty(t, out.Bytes(), "w holds what came before the failure, for the caller to discard")
			require.Empty(t, nodes[1].requests(), "once bytes were written to w, no other node is asked")
		})
	}
}

func TestClient_Backup_AsksTheNextNodeBeforeTheFirstByte(t *testing.T) {
	file, want := testBackup(t, 10, 100)
	nodes := fakeCluster(t, "n1", "n2", "n3")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		w.Header().Set("Retry-After", "1")
		answer(w, http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "the cut cannot be taken now"}})
	}
	nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, nil, true) } // 200, then no byte
	nodes[2].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, file, false) }
	cl := fakeClient(t, nodes[0])

	var out bytes.Buffer
	sum, err := cl.Backup(context.Background(), &out)
	require.NoError(t, err)
	require.Equal(t, want, sum)
	require.Equal(t, file, out.Bytes())
	for _, n := range nodes {
		require.Len(t, n.requests(), 1, n.id)
	}

	// A refusal that no other node would answer differently is returned.
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusConflict, api.Error{Error: api.ErrorDetail{Code: api.CodeConflict, Message: "restore r1 is under way"}})
	}
	out.Reset()
	_, err = cl.Backup(context.Background(), &out)
	require.ErrorIs(t, err, kvd.ErrConflict)
	require.Contains(t, err.Error(), "restore r1 is under way")
	require.Empty(t, out.Bytes())
	require.Len(t, nodes[1].requests(), 1, "not asked again")
}

// A write error of w is returned as such, not as a broken stream.
func TestClient_Backup_WriteErrorIsReturned(t *testing.T) {
	file, _ := testBackup(t, 100, 10<<10)
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, file, false) }
	cl := fakeClient(t, nodes[0])
	full := errors.New("no space left on device")
	_, err := cl.Backup(context.Background(), &failingWriter{after: 100 << 10, err: full})
	require.ErrorIs(t, err, full)
	require.NotErrorIs(t, err, kvd.ErrUnavailable)
}

type failingWriter struct {
	after int
	err   error
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.after {
		return f.after, f.err
	}
	f.after -= len(p)
	return len(p), nil
}

// Without a deadline on ctx, the client's Timeout bounds each stretch in
// which nothing arrives, not the whole transfer.
func TestClient_Backup_TimeoutBoundsStallsNotTheTransfer(t *testing.T) {
	file, want := testBackup(t, 50, 1<<10)
	nodes := fakeCluster(t, "n1")
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	var stalls atomic.Bool
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		w.WriteHeader(http.StatusOK)
		b := file
		for len(b) > 0 {
			n := min(len(b), len(file)/10+1)
			w.Write(b[:n])
			w.(http.Flusher).Flush()
			b = b[n:]
			if stalls.Load() && len(b) < len(file)/2 {
				<-stall // stops sending, keeping the connection open
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	cfg := client.DefaultConfig(nodes[0].srv.URL)
	cfg.Timeout = 400 * time.Millisecond
	cl, err := client.New(context.Background(), cfg)
	require.NoError(t, err)
	defer cl.Close()

	var out bytes.Buffer
	start := time.Now()
	sum, err := cl.Backup(context.Background(), &out)
	require.NoError(t, err)
	require.Equal(t, want, sum)
	require.Greater(t, time.Since(start), cfg.Timeout, "the transfer lasted longer than Timeout")

	stalls.Store(true)
	out.Reset()
	start = time.Now()
	_, err = cl.Backup(context.Background(), &out)
	require.ErrorIs(t, err, kvd.ErrUnavailable)
	require.Contains(t, err.Error(), "no progress for 400ms")
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestClient_Restore_StreamsTheFile(t *testing.T) {
	file, _ := testBackup(t, 20, 100)
	nodes := fakeCluster(t, "n1", "n2")
	res := api.RestoreResult{ID: "r1", Keys: 20, Bytes: 2120, Groups: 1, TookMS: 5}
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, res) }
	cl := fakeClient(t, nodes[0])
	ctx := context.Background()

	path := filepath.Join(t.TempDir(), "b.kvdb")
	require.NoError(t, os.WriteFile(path, file, 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	got, err := cl.Restore(ctx, f, false)
	require.NoError(t, err)
	require.Equal(t, res, got)

	got, err = cl.Restore(ctx, io.MultiReader(bytes.NewReader(file)), true) // a length it cannot tell
	require.NoError(t, err)
	require.Equal(t, res, got)

	seen := nodes[0].requests()
	require.Len(t, seen, 2)
	require.Equal(t, adminRequest{Method: "POST", Path: "/v1/admin/restore", Body: string(file), ContentLength: int64(len(file))}, seen[0],
		"a file goes with its length")
	require.Equal(t, adminRequest{Method: "POST", Path: "/v1/admin/restore", Query: "force=true", Body: string(file), ContentLength: -1}, seen[1],
		"a reader of unknown length goes chunked")
}

func TestClient_Restore_ErrorsAndNoRepeat(t *testing.T) {
	file, _ := testBackup(t, 20, 100)
	tests := []struct {
		name   string
		status int
		code   string
		want   error
	}{
		{"damaged", http.StatusBadRequest, api.CodeInvalidRequest, kvd.ErrInvalid},
		{"cluster holds keys", http.StatusConflict, api.CodeConflict, kvd.ErrConflict},
		{"503 after the body", http.StatusServiceUnavailable, api.CodeUnavailable, kvd.ErrUnavailable},
		{"500", http.StatusInternalServerError, api.CodeInternal, kvd.ErrUnknownOutcome},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
				answer(w, tc.status, api.Error{Error: api.ErrorDetail{Code: tc.code, Message: "the node's reason"}})
			}
			nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, api.RestoreResult{}) }
			cl := fakeClient(t, nodes[0])
			_, err := cl.Restore(context.Background(), bytes.NewReader(file), false)
			require.ErrorIs(t, err, tc.want)
			require.Contains(t, err.Error(), "the node's reason")
			require.Empty(t, nodes[1].requests(), "a restore whose body was read is never sent again")
		})
	}

	t.Run("connection cut after the body", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { panic(http.ErrAbortHandler) }
		nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, api.RestoreResult{}) }
		cl := fakeClient(t, nodes[0])
		_, err := cl.Restore(context.Background(), bytes.NewReader(file), false)
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
		require.Empty(t, nodes[1].requests())
	})

	t.Run("a node that cannot be reached is passed over", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, api.RestoreResult{ID: "r2"}) }
		cl := fakeClient(t, nodes[0])
		nodes[0].srv.Close()
		res, err := cl.Restore(context.Background(), bytes.NewReader(file), false)
		require.NoError(t, err)
		require.Equal(t, "r2", res.ID)
		require.Equal(t, string(file), nodes[1].requests()[0].Body)
	})
}

// restoreTestCluster starts a cluster for the round trips: three nodes
// and two groups, with TTLs checked every 20 ms.
func restoreTestCluster(t *testing.T) *testcluster.Cluster {
	return testcluster.New(t, 3, 2, func(cfg *server.Config) { cfg.TTLInterval = 20 * time.Millisecond })
}

// A backup taken from one cluster and restored into a fresh one brings
// back every key and value, and each key's expiry deadline as it was:
// absolute, not counted again from the restore.
func TestClient_BackupRestore_RoundTrip(t *testing.T) {
	src, dst := restoreTestCluster(t), restoreTestCluster(t)
	from, into := newClient(t, src, nil), newClient(t, dst, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	want := map[string][]byte{}
	for i := range 200 {
		k := fmt.Sprintf("key/%03d", i)
		v := []byte(fmt.Sprintf("value %d", i))
		switch i % 50 {
		case 0:
			v = bytes.Repeat([]byte{byte(i)}, 300<<10) // several data chunks
		case 1:
			v = []byte{}
		case 2:
			v = []byte{0, 0xff, '\n', 0}
		}
		want[k] = v
	}
	putAll(t, ctx, from, want)
	ttls := map[string]time.Duration{"ttl/long": time.Hour, "ttl/short": 3 * time.Second, "ttl/gone": time.Second}
	before := time.Now()
	for k, ttl := range ttls {
		_, err := from.Put(ctx, k, []byte(ttl.String()), kvd.WithTTL(ttl))
		require.NoError(t, err)
	}
	after := time.Now()

	var file bytes.Buffer
	sum, err := from.Backup(ctx, &file)
	require.NoError(t, err)
	require.Equal(t, uint64(len(want)+len(ttls)), sum.Keys)
	_, check, err := backup.Verify(bytes.NewReader(file.Bytes()))
	require.NoError(t, err)
	require.Equal(t, sum, check)

	// The file holds each TTL key's deadline.
	deadlines := backupDeadlines(t, file.Bytes())
	require.Len(t, deadlines, len(ttls), "only the TTL keys have a deadline")
	for k, ttl := range ttls {
		require.GreaterOrEqual(t, deadlines[k], before.Add(ttl).UnixNano(), k)
		require.LessOrEqual(t, deadlines[k], after.Add(ttl).UnixNano()+int64(time.Millisecond), k)
	}

	// ttl/gone's deadline passes before the restore: it is left out.
	for time.Now().UnixNano() <= deadlines["ttl/gone"] {
		time.Sleep(20 * time.Millisecond)
	}
	res, err := into.Restore(ctx, bytes.NewReader(file.Bytes()), false)
	require.NoError(t, err)
	require.Equal(t, sum.Keys, res.Keys+res.Expired)
	require.GreaterOrEqual(t, res.Expired, uint64(1))
	require.False(t, res.Replaced)
	require.Equal(t, 2, res.Groups)
	require.NotEmpty(t, res.ID)

	for k, v := range want {
		it, err := into.Get(ctx, k)
		require.NoError(t, err, k)
		require.True(t, bytes.Equal(v, it.Value), k)
	}
	it, err := into.Get(ctx, "ttl/long")
	require.NoError(t, err)
	require.Equal(t, "1h0m0s", string(it.Value))
	_, err = into.Get(ctx, "ttl/gone")
	require.ErrorIs(t, err, kvd.ErrNotFound)

	// The restored keys keep their deadlines, to the nanosecond: a
	// backup of the new cluster holds the same.
	var again bytes.Buffer
	_, err = into.Backup(ctx, &again)
	require.NoError(t, err)
	got := backupDeadlines(t, again.Bytes())
	require.Equal(t, deadlines["ttl/long"], got["ttl/long"])
	if d, ok := got["ttl/short"]; ok {
		require.Equal(t, deadlines["ttl/short"], d)
	}
	p, err := into.Scan(ctx, kvd.ScanOptions{Limit: 1000})
	require.NoError(t, err)
	for _, it := range p.Items {
		_, ok := want[it.Key]
		require.True(t, ok || it.Key == "ttl/long" || it.Key == "ttl/short", "nothing more than the backup: %s", it.Key)
	}

	// A restored key vanishes at its deadline.
	for {
		_, err := into.Get(ctx, "ttl/short")
		if errors.Is(err, kvd.ErrNotFound) {
			break
		}
		require.NoError(t, err)
		require.Less(t, time.Now().UnixNano(), deadlines["ttl/short"]+int64(1500*time.Millisecond), "still there well past its deadline")
		time.Sleep(20 * time.Millisecond)
	}
}

// putAll writes kvs, a few at a time.
func putAll(t *testing.T, ctx context.Context, cl *client.Client, kvs map[string][]byte) {
	t.Helper()
	keys := make(chan string, len(kvs))
	for k := range kvs {
		keys <- k
	}
	close(keys)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for k := range keys {
				if _, err := cl.Put(ctx, k, kvs[k]); err != nil {
					errs <- fmt.Errorf("put %q: %w", k, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
}

// backupDeadlines returns the expiry deadlines a backup file holds, by
// key, for the keys that have one.
func backupDeadlines(t *testing.T, file []byte) map[string]int64 {
	t.Helper()
	br, err := backup.NewReader(bytes.NewReader(file))
	require.NoError(t, err)
	out := map[string]int64{}
	for {
		rec, err := br.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		if rec.Expires != 0 {
			out[rec.Key] = rec.Expires
		}
	}
}

// A file that is damaged, cut short, of another version or empty is
// refused (kvd.ErrInvalid, the message saying which) and changes nothing.
func TestClient_Restore_RefusesADamagedFile(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	cl := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	file, _ := testBackup(t, 50, 100)

	flipped := bytes.Clone(file)
	flipped[len(flipped)/2] ^= 1
	version := bytes.Clone(file)
	version[len(backup.Magic)+1] = 9
	for name, tc := range map[string]struct {
		body []byte
		says string
	}{
		"a byte changed": {flipped, "corrupt"},
		"cut short":      {file[:len(file)-30], "truncated"},
		"other version":  {version, "version"},
		"empty":          {nil, "empty"},
		"not a backup":   {[]byte("key,value\na,1\n"), "not a kvd backup"},
	} {
		_, err := cl.Restore(ctx, bytes.NewReader(tc.body), false)
		require.ErrorIs(t, err, kvd.ErrInvalid, name)
		require.Contains(t, err.Error(), tc.says, name)
		var ce *client.Error
		require.ErrorAs(t, err, &ce, name)
		require.Equal(t, http.StatusBadRequest, ce.Status, name)
	}
	p, err := cl.Scan(ctx, kvd.ScanOptions{Limit: 10})
	require.NoError(t, err)
	require.Empty(t, p.Items, "nothing was loaded")

	// The cluster is free for a sound restore afterwards.
	res, err := cl.Restore(ctx, bytes.NewReader(file), false)
	require.NoError(t, err)
	require.Equal(t, uint64(50), res.Keys)
}

// A cluster that holds keys refuses a restore (kvd.ErrConflict) unless it
// is forced, which replaces its keys with the backup's.
func TestClient_Restore_NonEmptyClusterConflictsUnlessForced(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	cl := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 20 {
		_, err := cl.Put(ctx, fmt.Sprintf("k/%04d", i), []byte("old"))
		require.NoError(t, err)
	}
	_, err := cl.Put(ctx, "not/in/the/backup", []byte("x"))
	require.NoError(t, err)
	file, _ := testBackup(t, 10, 3)

	_, err = cl.Restore(ctx, bytes.NewReader(file), false)
	require.ErrorIs(t, err, kvd.ErrConflict)
	require.Contains(t, err.Error(), "holds keys")
	it, err := cl.Get(ctx, "k/0015")
	require.NoError(t, err, "nothing was changed")
	require.Equal(t, "old", string(it.Value))

	res, err := cl.Restore(ctx, bytes.NewReader(file), true)
	require.NoError(t, err)
	require.True(t, res.Replaced)
	require.Equal(t, uint64(10), res.Keys)
	p, err := cl.Scan(ctx, kvd.ScanOptions{Limit: 100})
	require.NoError(t, err)
	require.Len(t, p.Items, 10, "the cluster holds the backup's keys only")
	for i, item := range p.Items {
		require.Equal(t, fmt.Sprintf("k/%04d", i), item.Key)
		require.Equal(t, bytes.Repeat([]byte{byte(i)}, 3), item.Value)
	}
}
