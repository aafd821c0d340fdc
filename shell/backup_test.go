package shell

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// testBackupFile returns a backup of n keys.
func testBackupFile(t *testing.T, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := backup.NewWriter(&buf, backup.Header{Created: time.Now().UTC()})
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, w.Add(backup.Record{Key: fmt.Sprintf("k/%03d", i), Value: bytes.Repeat([]byte("v"), 1000)}))
	}
	_, err = w.Close()
	require.NoError(t, err)
	return buf.Bytes()
}

// fakeTransferNode is a one-node cluster that answers backups and
// restores with its funcs, recording the restores it was sent.
type fakeTransferNode struct {
	srv     *httptest.Server
	backup  func(w http.ResponseWriter)
	restore func(w http.ResponseWriter)

	// mu protects restores.
	mu       sync.Mutex
	restores []restoreRequest
}

// restoreRequest is what the fake node saw of a restore.
type restoreRequest struct {
	query, contentType string
	length             int64
	body               []byte
}

func (f *fakeTransferNode) sent() []restoreRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]restoreRequest(nil), f.restores...)
}

func newFakeTransferNode(t *testing.T) (*fakeTransferNode, *client.Client) {
	t.Helper()
	f := &fakeTransferNode{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/cluster":
			addr := strings.TrimPrefix(f.srv.URL, "http://")
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(api.Cluster{Epoch: 1, Replicas: 1, Nodes: []api.Node{{ID: "n1", HTTP: addr, Raft: addr, State: "active"}},
				Groups: []api.Group{{ID: 1, Members: []string{"n1"}, Leader: "n1", Slots: [][2]int{{0, kvd.SlotCount - 1}}}}})
		case "/v1/admin/backup":
			f.backup(w)
		case "/v1/admin/restore":
			b, _ := io.ReadAll(r.Body)
			f.mu.Lock()
			f.restores = append(f.restores, restoreRequest{query: r.URL.RawQuery, contentType: r.Header.Get("Content-Type"), length: r.ContentLength, body: b})
			f.mu.Unlock()
			f.restore(w)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	cfg := client.DefaultConfig(f.srv.URL)
	cfg.Timeout = 5 * time.Second
	c, err := client.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return f, c
}

func jsonAnswer(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

// streamThenCut sends b, then cuts the connection if cut is set.
func streamThenCut(w http.ResponseWriter, b []byte, cut bool) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	w.(http.Flusher).Flush()
	if cut {
		panic(http.ErrAbortHandler)
	}
}

func TestBackupCommand_WritesTheFileOnlyOnceVerified(t *testing.T) {
	file := testBackupFile(t, 20)
	f, c := newFakeTransferNode(t)
	var out, progress bytes.Buffer
	sh := New(c, Options{Progress: &progress}, strings.NewReader(""), &out)
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.kvdb")
	run := func(words ...string) error {
		out.Reset()
		progress.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	f.backup = func(w http.ResponseWriter) { streamThenCut(w, file, false) }
	require.NoError(t, run("backup", path))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, file, got)
	digest := sha256.Sum256(file)
	require.Equal(t, fmt.Sprintf("backup written to %s: 20 keys, %s of keys and values; file of %s, sha256 %s\n",
		path, bytesText(20*1005), bytesText(int64(len(file))), hex.EncodeToString(digest[:])), out.String())
	require.Regexp(t, `^backup: [0-9.]+ KiB received in [0-9.]+m?s( \([0-9.]+ [KMG]?i?B/s\))?\n$`, progress.String(),
		"one final progress line when standard error is not a terminal")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left")

	sh.o.JSON = true
	require.NoError(t, run("backup", path))
	var done backupDone
	require.NoError(t, json.Unmarshal(out.Bytes(), &done))
	require.Equal(t, backupDone{File: path, Keys: 20, Bytes: 20 * 1005, Chunks: 3, FileBytes: int64(len(file)), SHA256: hex.EncodeToString(digest[:]), TookMS: done.TookMS}, done)
	sh.o.JSON = false

	// A stream cut short or damaged leaves FILE as it was, and no
	// temporary file.
	require.NoError(t, os.WriteFile(path, []byte("the previous backup"), 0o600))
	damaged := bytes.Clone(file)
	damaged[len(damaged)/2] ^= 1
	for _, tc := range []struct {
		body []byte
		cut  bool
		says string
	}{
		{file[:len(file)/2], true, "truncated"},
		{damaged, false, "corrupt"},
	} {
		f.backup = func(w http.ResponseWriter) { streamThenCut(w, tc.body, tc.cut) }
		err := run("backup", path)
		require.Error(t, err)
		require.Equal(t, ExitUnavailable, ExitCode(err))
		require.Contains(t, Explain(err), "backup failed, "+path+" was not written: ")
		require.Contains(t, Explain(err), tc.says)
		require.NotContains(t, Explain(err), "\n")
		require.Empty(t, out.String())
		require.Contains(t, progress.String(), "backup: stopped after ")
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "the previous backup", string(got))
		_, err = os.Stat(path + ".tmp")
		require.ErrorIs(t, err, os.ErrNotExist, "the partial download is removed")
	}

	f.backup = func(w http.ResponseWriter) {
		jsonAnswer(w, http.StatusConflict, api.Error{Error: api.ErrorDetail{Code: api.CodeConflict, Message: "backup: restore r1 is under way"}})
	}
	err = run("backup", path)
	require.Equal(t, ExitPrecondition, ExitCode(err))
	require.Equal(t, "backup failed, "+path+" was not written: backup: restore r1 is under way", Explain(err))

	err = run("backup", filepath.Join(dir, "no", "such", "dir", "b.kvdb"))
	require.Equal(t, ExitError, ExitCode(err))
	require.Contains(t, Explain(err), "cannot write the backup")
}

// A file that is not a sound backup is refused before anything is sent.
func TestRestoreCommand_RefusesABadFileBeforeSending(t *testing.T) {
	file := testBackupFile(t, 20)
	f, c := newFakeTransferNode(t)
	f.restore = func(w http.ResponseWriter) { jsonAnswer(w, http.StatusOK, api.RestoreResult{}) }
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	dir := t.TempDir()
	flipped := bytes.Clone(file)
	flipped[len(flipped)/2] ^= 1
	version := bytes.Clone(file)
	version[len(backup.Magic)+1] = 2
	for name, tc := range map[string]struct {
		body []byte
		says string
	}{
		"empty":     {nil, "empty file: not a kvd backup"},
		"cut":       {file[:len(file)-40], "backup is truncated"},
		"flipped":   {flipped, "backup is corrupt"},
		"version":   {version, "unsupported backup format version 2"},
		"foreign":   {[]byte("PK\x03\x04 a zip file"), "not a kvd backup"},
		"cut early": {file[:5], "backup is truncated"},
	} {
		path := filepath.Join(dir, name+".kvdb")
		require.NoError(t, os.WriteFile(path, tc.body, 0o600))
		for _, words := range [][]string{{"restore", path}, {"restore", path, "--force"}} {
			err := sh.Exec(context.Background(), words, false)
			require.Equal(t, ExitUsage, ExitCode(err), "%s: %v", name, err)
			require.True(t, strings.HasPrefix(Explain(err), "refused, nothing was sent: "+path+" is not a backup kvcli can restore: "), Explain(err))
			require.Contains(t, Explain(err), tc.says, name)
			require.NotContains(t, Explain(err), "invalid request", name)
		}
	}
	err := sh.Exec(context.Background(), []string{"restore", filepath.Join(dir, "missing.kvdb")}, false)
	require.Equal(t, ExitUsage, ExitCode(err))
	require.Contains(t, Explain(err), "cannot read the backup")
	err = sh.Exec(context.Background(), []string{"restore", dir}, false)
	require.Equal(t, ExitUsage, ExitCode(err))
	for _, words := range [][]string{{"restore"}, {"restore", "a", "b"}, {"restore", "a", "--forced"}, {"backup"}, {"backup", "a", "b"}, {"backup", "a", "--force"}} {
		err := sh.Exec(context.Background(), words, false)
		require.Equal(t, ExitUsage, ExitCode(err), "%q", words)
	}
	require.Empty(t, f.sent(), "nothing was sent")
	require.Empty(t, out.String())
}

func TestRestoreCommand_AnswersAndRefusals(t *testing.T) {
	file := testBackupFile(t, 20)
	f, c := newFakeTransferNode(t)
	var out, progress bytes.Buffer
	sh := New(c, Options{Progress: &progress}, strings.NewReader(""), &out)
	path := filepath.Join(t.TempDir(), "b.kvdb")
	require.NoError(t, os.WriteFile(path, file, 0o600))
	run := func(words ...string) error {
		out.Reset()
		progress.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	res := api.RestoreResult{ID: "r1", Keys: 19, Bytes: 19 * 1005, Expired: 1, Groups: 2, Replaced: true, Created: "2025-01-02T03:04:05Z", TookMS: 1500}
	f.restore = func(w http.ResponseWriter) { jsonAnswer(w, http.StatusOK, res) }
	require.NoError(t, run("restore", path, "--force"))
	require.Equal(t, "restored "+path+" (taken 2025-01-02T03:04:05Z): 19 keys, 18.6 KiB of keys and values, into 2 groups in 1.5s; "+
		"1 key left out, their TTL had run out; the keys the cluster held were dropped first (restore r1)\n", out.String())
	lines := strings.Split(strings.TrimSpace(progress.String()), "\n")
	require.Len(t, lines, 2)
	require.Regexp(t, `^verify: [0-9.]+ KiB of [0-9.]+ KiB read \(100%\), 20 keys in `, lines[0])
	require.Regexp(t, `^restore: [0-9.]+ KiB of [0-9.]+ KiB sent \(100%\) in `, lines[1])
	reqs := f.sent()
	require.Len(t, reqs, 1)
	require.Equal(t, restoreRequest{query: "force=true", contentType: "application/octet-stream", length: int64(len(file)), body: file}, reqs[0],
		"the file goes whole, with its length")

	sh.o.JSON = true
	require.NoError(t, run("restore", path))
	var got api.RestoreResult
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	require.Equal(t, res, got)
	sh.o.JSON = false
	require.Empty(t, f.sent()[1].query)

	for _, tc := range []struct {
		status  int
		code    string
		exit    int
		explain string
	}{
		{http.StatusConflict, api.CodeConflict, ExitPrecondition, "restore refused, nothing was changed: the node's reason"},
		{http.StatusBadRequest, api.CodeInvalidRequest, ExitUsage, "restore refused, nothing was changed: the cluster found " + path + " unfit: the node's reason"},
		{http.StatusServiceUnavailable, api.CodeUnavailable, ExitUnavailable, "restore unavailable, nothing was changed: the node's reason"},
		{http.StatusInternalServerError, api.CodeInternal, ExitUnknown, `restore outcome unknown: the cluster may hold none, part or all of the backup (with --force, its keys may have been dropped); look with "kvcli scan" before trying again: the node's reason`},
	} {
		f.restore = func(w http.ResponseWriter) {
			jsonAnswer(w, tc.status, api.Error{Error: api.ErrorDetail{Code: tc.code, Message: "the node's reason"}})
		}
		err := run("restore", path)
		require.Equal(t, tc.exit, ExitCode(err), "%s: %v", tc.code, err)
		require.Contains(t, Explain(err), tc.explain)
		require.Empty(t, out.String())
		require.Contains(t, progress.String(), "restore: stopped after ")
	}
}

// The progress line is redrawn in place on a terminal, and ends with the
// transfer's last state.
func TestProgress_RedrawsInPlaceOnATerminal(t *testing.T) {
	var w lockedBuffer
	sh := New(nil, Options{Progress: &w, LiveProgress: true}, strings.NewReader(""), io.Discard)
	p := sh.startProgress("restore", "sent", 4<<20, "the cluster loads the keys")
	p.bytes.Store(1 << 20)
	require.Eventually(t, func() bool { return strings.Contains(w.String(), "\rrestore: 1.0 MiB of 4.0 MiB sent (25%), ") }, 2*time.Second, 10*time.Millisecond)
	p.bytes.Store(4 << 20)
	p.fullAt.Store(time.Now().UnixNano())
	require.Eventually(t, func() bool {
		return strings.Contains(w.String(), "\rrestore: 4.0 MiB of 4.0 MiB sent (100%); the cluster loads the keys")
	}, 2*time.Second, 10*time.Millisecond)
	p.end(true)
	s := w.String()
	require.True(t, strings.HasSuffix(s, "\n"))
	last := s[strings.LastIndex(s, "\r")+1:]
	require.Regexp(t, `^restore: 4.0 MiB of 4.0 MiB sent \(100%\) in [0-9.]+m?s \([0-9.]+ [KMG]iB/s\) *\n$`, last)
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu  sync.Mutex // protects b
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A backup taken with the shell from one cluster and restored with it
// into another brings back the keys; the second restore is refused
// unless forced.
func TestBackupRestoreCommands_RoundTrip(t *testing.T) {
	src, dst := testcluster.New(t, 3, 2), testcluster.New(t, 1, 2)
	shellOf := func(c *testcluster.Cluster, out, progress io.Writer) (*Shell, *client.Client) {
		cfg := client.DefaultConfig(c.URL(0))
		cfg.Timeout = 5 * time.Second
		cl, err := client.New(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { cl.Close() })
		return New(cl, Options{Progress: progress}, strings.NewReader(""), out), cl
	}
	var out, progress bytes.Buffer
	from, fromClient := shellOf(src, &out, &progress)
	into, intoClient := shellOf(dst, &out, &progress)
	ctx := context.Background()
	for i := range 200 {
		_, err := fromClient.Put(ctx, fmt.Sprintf("user/%03d", i), []byte(fmt.Sprintf("value %d", i)))
		require.NoError(t, err)
	}
	_, err := fromClient.Put(ctx, "session", []byte("s"), kvd.WithTTL(time.Hour))
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "cluster.kvdb")
	require.NoError(t, from.Exec(ctx, []string{"backup", path}, false))
	require.Contains(t, out.String(), "backup written to "+path+": 201 keys, ")
	require.Contains(t, progress.String(), "backup: ")
	_, sum, err := backup.Verify(mustOpen(t, path))
	require.NoError(t, err)
	require.Equal(t, uint64(201), sum.Keys)

	out.Reset()
	require.NoError(t, into.Exec(ctx, []string{"restore", path}, false))
	require.Contains(t, out.String(), "restored "+path+" (taken ")
	require.Contains(t, out.String(), "201 keys")
	for i := range 200 {
		it, err := intoClient.Get(ctx, fmt.Sprintf("user/%03d", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("value %d", i), string(it.Value))
	}
	_, err = intoClient.Get(ctx, "session")
	require.NoError(t, err)

	_, err = intoClient.Put(ctx, "written/after", []byte("x"))
	require.NoError(t, err)
	out.Reset()
	err = into.Exec(ctx, []string{"restore", path}, false)
	require.Equal(t, ExitPrecondition, ExitCode(err))
	require.Contains(t, Explain(err), "restore refused, nothing was changed: ")
	require.Contains(t, Explain(err), "holds keys")
	require.Empty(t, out.String())

	require.NoError(t, into.Exec(ctx, []string{"restore", path, "--force"}, false))
	require.Contains(t, out.String(), "the keys the cluster held were dropped first")
	_, err = intoClient.Get(ctx, "written/after")
	require.ErrorIs(t, err, kvd.ErrNotFound)
}

func mustOpen(t *testing.T, path string) io.Reader {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestHelp_ExplainsBackupCommands(t *testing.T) {
	var out bytes.Buffer
	sh := New(nil, Options{}, strings.NewReader(""), &out)
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "backup"}, false))
	for _, want := range []string{usageBackup, "FILE.tmp", "verified", "--timeout", "expiry deadline"} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "restore"}, false))
	for _, want := range []string{usageRestore, "--force", "sends nothing", "--timeout"} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help"}, false))
	require.Contains(t, out.String(), "backup FILE")
	require.Contains(t, out.String(), "restore FILE [--force]")
}

func TestCompletion_BackupCommands(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b1.kvdb"), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b2.kvdb"), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".hidden"), nil, 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "old"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "old", "b0.kvdb"), nil, 0o600))
	t.Chdir(dir)
	comp := &completer{s: New(nil, Options{}, strings.NewReader(""), io.Discard)}
	complete := func(line string) []string {
		got, _ := comp.Do([]rune(line), len([]rune(line)))
		var out []string
		for _, g := range got {
			out = append(out, string(g))
		}
		return out
	}
	require.Equal(t, []string{"ckup "}, complete("ba"))
	require.Equal(t, []string{"balance ", "store "}, complete("re"))
	require.Equal(t, []string{"b1.kvdb ", "b2.kvdb ", "old/"}, complete("restore "), "files and directories, not hidden ones")
	require.Equal(t, []string{"1.kvdb ", "2.kvdb "}, complete("restore b"))
	require.Equal(t, []string{"b0.kvdb "}, complete("backup old/"))
	require.Equal(t, []string{"hidden "}, complete("backup ."))
}
