package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

var kvcliBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvcli-bin-")
	if err != nil {
		panic(err)
	}
	kvcliBin = filepath.Join(dir, "kvcli")
	if out, err := exec.Command("go", "build", "-o", kvcliBin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// kvcli runs the binary with the cluster's first node as endpoint.
func kvcli(t *testing.T, c *testcluster.Cluster, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(kvcliBin, append([]string{"--endpoints", c.URL(0), "--timeout", "5s"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{code, out.String(), errb.String()}
}

func TestKvcli_OneShotCommands(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	r := kvcli(t, c, "", "put", "greeting", "hello world")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "OK (version ")

	r = kvcli(t, c, "", "get", "greeting")
	require.Equal(t, 0, r.code)
	require.Equal(t, "hello world\n", r.stdout)

	r = kvcli(t, c, "from stdin", "put", "piped", "-")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "from stdin\n", kvcli(t, c, "", "get", "piped", "--consistency", "follower").stdout)

	r = kvcli(t, c, "", "get", "missing")
	require.Equal(t, 3, r.code)
	require.Contains(t, r.stderr, "not found")
	require.NotContains(t, r.stderr, "goroutine", "no Go stack, ever")

	r = kvcli(t, c, "", "put", "greeting", "x", "--if-version", "1")
	require.Equal(t, 4, r.code)
	require.Contains(t, r.stderr, "precondition failed, nothing was written")
	r = kvcli(t, c, "", "put", "greeting", "x", "--create-only")
	require.Equal(t, 4, r.code)

	r = kvcli(t, c, "", "cas", "greeting", "hello world", "hi")
	require.Equal(t, 0, r.code, r.stderr)
	r = kvcli(t, c, "", "cas", "greeting", "hello world", "again")
	require.Equal(t, 4, r.code)
	require.Equal(t, "hi\n", kvcli(t, c, "", "get", "greeting").stdout)

	for i := range 5 {
		require.Equal(t, 0, kvcli(t, c, "", "put", "user/"+string(rune('a'+i)), "u").code)
	}
	r = kvcli(t, c, "", "scan", "user/", "--limit", "2")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "KEY")
	require.Contains(t, r.stdout, "user/a")
	require.Contains(t, r.stdout, `more follow: --start "user/c"`)
	r = kvcli(t, c, "", "scan", "user/", "--all", "--keys-only")
	require.Equal(t, "user/a\nuser/b\nuser/c\nuser/d\nuser/e\n5 keys\n", r.stdout)

	r = kvcli(t, c, "", "del", "user/a")
	require.Equal(t, "deleted\n", r.stdout)
	r = kvcli(t, c, "", "del", "user/a")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "nothing deleted")

	r = kvcli(t, c, `{"compare":[{"key":"user/b","exists":true}],"ops":[{"op":"get","key":"user/b"},{"op":"put","key":"user/z","value":"eg=="}]}`, "txn")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "committed")
	require.Contains(t, r.stdout, "get user/b = u")
	r = kvcli(t, c, `{"compare":[{"key":"user/b","exists":false}],"ops":[{"op":"put","key":"user/y","value":"eQ=="}]}`, "txn")
	require.Equal(t, 4, r.code)
	require.Contains(t, r.stderr, "compare [0] did not hold")

	r = kvcli(t, c, "", "cluster")
	require.Equal(t, 0, r.code)
	for _, want := range []string{"epoch 1", "GROUP", "LEADER", "n1", "0-340"} {
		require.Contains(t, r.stdout, want)
	}
	r = kvcli(t, c, "", "status", "n2")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "node n2")
	require.Contains(t, r.stdout, "APPLIED")
	r = kvcli(t, c, "", "health")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	require.Equal(t, 3, strings.Count(r.stdout, "ready"))
	r = kvcli(t, c, "", "help", "put")
	require.Contains(t, r.stdout, "--if-version")
}

func TestKvcli_UsageErrorsExitTwo(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	for _, args := range [][]string{
		{"frobnicate"}, {"get"}, {"get", "a", "b"}, {"put", "k"}, {"put", "k", "v", "--if-version", "x"},
		{"scan", "--limit", "0"}, {"get", "k", "--nope"}, {"begin"}, {"put", "k", "@/no/such/file"},
		{"--consistency", "eventual", "get", "k"}, {"get", ""},
		{"node"}, {"node", "add", "n4"}, {"node", "add", "n4", "http://127.0.0.1:1", "127.0.0.1:2"}, {"node", "remove"},
		{"group", "leader", "x", "n1"}, {"group", "add-member", "1"}, {"group", "split", "1"},
	} {
		r := kvcli(t, c, "", args...)
		require.Equal(t, 2, r.code, "%v: %s", args, r.stderr)
		require.NotEmpty(t, r.stderr)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "one line: %q", r.stderr)
	}
	r := kvcli(t, c, "", "txn")
	require.Equal(t, 2, r.code, "an empty transaction: %s", r.stderr)
}

func TestKvcli_UnavailableExitsFive(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	cmd := exec.Command(kvcliBin, "--endpoints", "http://127.0.0.1:1", "get", "k")
	out, err := cmd.CombinedOutput()
	require.Equal(t, 5, err.(*exec.ExitError).ExitCode())
	require.Contains(t, string(out), "cannot reach the cluster")
	require.Contains(t, string(out), "connection refused")

	c.Stop(2)
	r := kvcli(t, c, "", "health")
	require.Equal(t, 5, r.code)
	require.Contains(t, r.stdout, "DOWN")
}

func TestKvcli_JSONOutput(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	var put struct {
		Key     string `json:"key"`
		Version uint64 `json:"version"`
	}
	r := kvcli(t, c, "", "--json", "put", "j", "v")
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &put))
	require.NotZero(t, put.Version)
	var got struct {
		Value   []byte `json:"value"`
		Version uint64 `json:"version"`
	}
	r = kvcli(t, c, "", "--json", "get", "j")
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
	require.Equal(t, "v", string(got.Value))
	require.Equal(t, put.Version, got.Version)

	var sr api.ScanResponse
	r = kvcli(t, c, "", "--json", "scan", "j")
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sr))
	require.Len(t, sr.Items, 1)

	var cl api.Cluster
	require.NoError(t, json.Unmarshal([]byte(kvcli(t, c, "", "--json", "cluster").stdout), &cl))
	require.Len(t, cl.Groups, 3)
	var st api.Status
	require.NoError(t, json.Unmarshal([]byte(kvcli(t, c, "", "--json", "status").stdout), &st))
	require.NotEmpty(t, st.Node)
	var hs []map[string]any
	require.NoError(t, json.Unmarshal([]byte(kvcli(t, c, "", "--json", "health").stdout), &hs))
	require.Len(t, hs, 3)
	var tr api.TxnResponse
	require.NoError(t, json.Unmarshal([]byte(kvcli(t, c, `{"ops":[{"op":"get","key":"j"}]}`, "--json", "txn").stdout), &tr))
	require.True(t, tr.Committed)
	var del map[string]any
	require.NoError(t, json.Unmarshal([]byte(kvcli(t, c, "", "--json", "del", "j").stdout), &del))
	require.Equal(t, true, del["deleted"])
}

func TestKvcli_BinaryValuesRoundTrip(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	val := make([]byte, 4096)
	_, err := rand.Read(val)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "blob")
	require.NoError(t, os.WriteFile(path, val, 0o600))
	require.Equal(t, 0, kvcli(t, c, "", "put", "blob", "@"+path).code)
	r := kvcli(t, c, "", "--raw", "get", "blob")
	require.Equal(t, val, []byte(r.stdout), "--raw writes the bytes untouched")
	r = kvcli(t, c, "", "get", "blob")
	require.True(t, strings.HasPrefix(r.stdout, `"`), "binary is shown escaped: %.40q", r.stdout)
	require.NotContains(t, r.stdout, "\x00")
}

func TestKvcli_Script(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	script := `# a comment
put a 1
put "b c" 'two words'
get "b c"
begin
get a
put a 2
put d 4
commit
get a
get missing
get d
`
	r := kvcli(t, c, script)
	require.Equal(t, 3, r.code, "stops at the first failure with its code: %s", r.stderr)
	require.Contains(t, r.stdout, "two words\n")
	require.Contains(t, r.stdout, "queued: put a")
	require.Contains(t, r.stdout, "committed")
	require.Contains(t, r.stderr, "line 11: not found")
	require.NotContains(t, r.stdout, "4\n", "nothing after the failure ran")

	r = kvcli(t, c, script, "--keep-going")
	require.Equal(t, 3, r.code)
	require.True(t, strings.HasSuffix(r.stdout, "4\n"), "--keep-going runs the rest: %q", r.stdout)
}

// term drives kvcli in a pseudo-terminal.
type term struct {
	t   *testing.T
	f   *os.File
	mu  sync.Mutex
	buf bytes.Buffer
}

func (tm *term) send(s string) {
	_, err := tm.f.Write([]byte(s))
	require.NoError(tm.t, err)
}

// expect waits until the output since the last mark contains want.
func (tm *term) expect(want string) {
	tm.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tm.mu.Lock()
		out := tm.buf.String()
		if i := strings.Index(out, want); i >= 0 {
			tm.buf.Next(i + len(want))
			tm.mu.Unlock()
			return
		}
		tm.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.t.Fatalf("never saw %q in the terminal; output: %q", want, tm.buf.String())
}

// startShell starts kvcli's interactive shell against c in a terminal,
// with home as its home directory.
func startShell(t *testing.T, c *testcluster.Cluster, home string) (*exec.Cmd, *term) {
	t.Helper()
	cmd := exec.Command(kvcliBin, "--endpoints", c.URL(0))
	cmd.Env = append(os.Environ(), "HOME="+home, "TERM=xterm")
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	tm := &term{t: t, f: f}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			tm.mu.Lock()
			tm.buf.Write(b[:n])
			tm.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return cmd, tm
}

func TestKvcli_InteractiveHistoryAndCompletion(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	home := t.TempDir()
	require.Equal(t, 0, kvcli(t, c, "", "put", "completion-target", "found-me").code)

	cmd, tm := startShell(t, c, home)
	tm.expect("> ")
	tm.send("put k1 v1\r")
	tm.expect("OK (version")
	tm.send("get k1\r")
	tm.expect("v1")
	// History: arrow up recalls the last line.
	tm.send("put k1 v2\r")
	tm.expect("OK (version")
	tm.send("\x1b[A\x1b[A\r") // two up: "get k1"
	tm.expect("v2")
	// Completion: the command, then the key by prefix.
	tm.send("ge\tcompletion-t\t\r")
	tm.expect("found-me")
	// A transaction shows in the prompt.
	tm.send("begin\r")
	tm.expect("(txn)> ")
	tm.send("put k1 v3\r")
	tm.expect("queued")
	tm.send("commit\r")
	tm.expect("committed")
	tm.send("get nope\r")
	tm.expect("error: not found")
	tm.send("exit\r")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("kvcli did not exit")
	}
	hist, err := os.ReadFile(filepath.Join(home, ".kvcli_history"))
	require.NoError(t, err)
	require.Contains(t, string(hist), "put k1 v2")
	require.Contains(t, string(hist), "get completion-target")
}

func TestKvcli_FunctionsCommands(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	r := kvcli(t, c, "", "add", "hits", "5")
	require.Equal(t, "5\n", r.stdout, r.stderr)
	r = kvcli(t, c, "", "add", "hits", "-2")
	require.Equal(t, "3\n", r.stdout)
	require.Equal(t, 0, kvcli(t, c, "", "put", "text", "abc").code)
	r = kvcli(t, c, "", "add", "text", "1")
	require.Equal(t, 4, r.code)
	require.Contains(t, r.stderr, "not a number")

	r = kvcli(t, c, "", "put", "session", "s", "--ttl", "300ms")
	require.Equal(t, 0, r.code, r.stderr)
	require.Eventually(t, func() bool { return kvcli(t, c, "", "get", "session").code == 3 }, 10*time.Second, 100*time.Millisecond)
	r = kvcli(t, c, "", "put", "session", "s", "--ttl", "soon")
	require.Equal(t, 2, r.code)

	// A watch prints the changes that follow it.
	cmd := exec.Command(kvcliBin, "--endpoints", c.URL(1), "--json", "watch", "w/", "--count", "2")
	var out bytes.Buffer
	cmd.Stdout = &out
	require.NoError(t, cmd.Start())
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, 0, kvcli(t, c, "", "put", "w/a", "1").code)
	require.Equal(t, 0, kvcli(t, c, "", "del", "w/a").code)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("watch --count 2 did not end")
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2)
	var ev map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &ev))
	require.Equal(t, "delete", ev["type"])
	require.NotEmpty(t, ev["cursor"])
}

// Ending the interactive shell (Ctrl-D or exit) with a transaction open
// must not drop its queued writes silently: the first end warns, the
// second discards them and exits non-zero.
func TestKvcli_EndOfInputWithAnOpenTransactionWarnsFirst(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	cmd, tm := startShell(t, c, t.TempDir())
	tm.expect("> ")
	tm.send("begin\r")
	tm.expect("(txn)> ")
	tm.send("put queued-key v\r")
	tm.expect("queued")
	tm.send("\x04") // Ctrl-D
	tm.expect("1 writes queued, nothing committed")
	tm.expect("(txn)> ")
	tm.send("\x04")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "leaving with queued writes is not a success")
		require.Equal(t, 1, ee.ExitCode())
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("kvcli did not exit")
	}
	tm.expect("discarded")
	r := kvcli(t, c, "", "get", "queued-key")
	require.Equal(t, 3, r.code, "nothing was written")
}

func TestKvcli_TxnListAndAbort(t *testing.T) {
	var block atomic.Bool
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) {
		cfg.TxnTimeout = time.Minute
		cfg.TxnAfterPrepare = func(string) error {
			if block.Load() {
				return errors.New("coordinator stopped")
			}
			return nil
		}
	})
	r := kvcli(t, c, "", "txn", "list")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "no transaction holds a lock")

	// A transaction over two groups whose coordinator stops after the
	// prepare: its keys stay locked until an operator aborts it.
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "lock", 1)
	keys := []string{ks[1][0], ks[2][0]}
	block.Store(true)
	body := fmt.Sprintf(`{"ops":[{"op":"put","key":%q,"value":"eA=="},{"op":"put","key":%q,"value":"eA=="}]}`, keys[0], keys[1])
	r = kvcli(t, c, body, "txn", "-")
	require.NotEqual(t, 0, r.code)
	block.Store(false)

	r = kvcli(t, c, "", "--json", "txn", "list")
	require.Equal(t, 0, r.code, r.stderr)
	var list api.TxnList
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list.Txns, 1)
	id := list.Txns[0].ID
	r = kvcli(t, c, "", "txn", "list")
	require.Contains(t, r.stdout, id)
	require.Contains(t, r.stdout, keys[0])
	require.Equal(t, 4, kvcli(t, c, "", "put", keys[0], "plain").code, "the key is locked")

	r = kvcli(t, c, "", "txn", "abort", id)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "aborted")
	require.Equal(t, 0, kvcli(t, c, "", "put", keys[0], "plain").code, "the lock is gone")
	require.Equal(t, 3, kvcli(t, c, "", "get", keys[1]).code, "nothing of it was written")
	r = kvcli(t, c, "", "txn", "abort", id)
	require.Equal(t, 0, r.code, "a repeat is harmless: %s", r.stderr)
	require.Equal(t, 3, kvcli(t, c, "", "txn", "abort", "0123456789abcdef0123456789abcdef").code, "an unknown id is not found")
	r = kvcli(t, c, "", "txn", "abort")
	require.Equal(t, 2, r.code)
}

// freeAddrs returns n local addresses nothing listens on.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		out = append(out, ln.Addr().String())
		ln.Close()
	}
	return out
}

// clusterMap reads the map with kvcli --json cluster.
func clusterMap(t *testing.T, c *testcluster.Cluster) api.Cluster {
	t.Helper()
	r := kvcli(t, c, "", "--json", "cluster")
	require.Equal(t, 0, r.code, r.stderr)
	var cl api.Cluster
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &cl))
	return cl
}

func groupOf(t *testing.T, cl api.Cluster, id uint64) api.Group {
	t.Helper()
	for _, g := range cl.Groups {
		if g.ID == id {
			return g
		}
	}
	t.Fatalf("no group %d in %+v", id, cl)
	return api.Group{}
}

func TestKvcli_MembershipCommands(t *testing.T) {
	c := testcluster.New(t, 3, 2, func(cfg *server.Config) { cfg.BalanceReplicas = false })

	r := kvcli(t, c, "", "group", "leader", "1", "n2")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "group 1: leadership handed to n2")
	r = kvcli(t, c, "", "group", "leader", "1", "n9")
	require.Equal(t, 4, r.code, "not a voter of the group: %s", r.stderr)

	// A node that is added but never starts: it joins the map, and leaves
	// it again, holding nothing.
	addrs := freeAddrs(t, 2)
	r = kvcli(t, c, "", "node", "add", "n9", addrs[0], addrs[1])
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "node n9 added")
	r = kvcli(t, c, "", "node", "add", "n9", addrs[0], addrs[1])
	require.Equal(t, 0, r.code, "adding the same node again is harmless: %s", r.stderr)
	r = kvcli(t, c, "", "node", "add", "n1", addrs[0], addrs[1])
	require.Equal(t, 4, r.code)
	require.Contains(t, r.stderr, "refused, nothing was changed")
	r = kvcli(t, c, "", "cluster")
	require.Equal(t, 0, r.code)
	require.Regexp(t, `n9 +127\.0\.0\.1:[0-9]+ +127\.0\.0\.1:[0-9]+ +joining`, r.stdout)
	require.Contains(t, r.stdout, "of 3 replicas")
	require.Contains(t, r.stdout, "LEARNERS")
	r = kvcli(t, c, "", "node", "remove", "n9")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "n9")
	require.Eventually(t, func() bool {
		for _, n := range clusterMap(t, c).Nodes {
			if n.ID == "n9" {
				return false
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond, "n9 leaves the map")
	require.Equal(t, 3, kvcli(t, c, "", "node", "remove", "n9").code, "an unknown node is not found")

	// A replica removed and added back.
	r = kvcli(t, c, "", "group", "remove-member", "1", "n3")
	require.Equal(t, 0, r.code, r.stderr)
	require.Eventually(t, func() bool {
		g := groupOf(t, clusterMap(t, c), 1)
		return !slices.Contains(g.Members, "n3") && !slices.Contains(g.Learners, "n3")
	}, 30*time.Second, 200*time.Millisecond, "n3 leaves group 1")
	require.Equal(t, 3, kvcli(t, c, "", "group", "remove-member", "1", "n3").code, "n3 holds no replica of group 1 any more")
	require.Eventually(t, func() bool {
		r = kvcli(t, c, "", "group", "add-member", "1", "n3")
		return r.code == 0 // refused (4) while the removal is still being carried out
	}, 30*time.Second, 200*time.Millisecond, "add n3 back: %s", r.stderr)
	require.Regexp(t, `n3 added to group 1, voting|adding n3 to group 1: in progress .*kvcli cluster`, r.stdout)
	require.Eventually(t, func() bool {
		return slices.Contains(groupOf(t, clusterMap(t, c), 1).Members, "n3")
	}, 30*time.Second, 200*time.Millisecond, "n3 votes in group 1 again")
	r = kvcli(t, c, "", "group", "add-member", "1", "n3")
	require.Equal(t, 4, r.code, "a repeat is refused: %s", r.stderr)
	require.Contains(t, r.stderr, "refused, nothing was changed")

	require.Equal(t, 3, kvcli(t, c, "", "group", "add-member", "9", "n3").code, "an unknown group is not found")
	require.Equal(t, 0, kvcli(t, c, "", "put", "after-the-changes", "v").code)
}

func TestKvcli_BackupAndRestore(t *testing.T) {
	src, dst := testcluster.New(t, 3, 2), testcluster.New(t, 1, 1)
	for i := range 5 {
		require.Equal(t, 0, kvcli(t, src, "", "put", fmt.Sprintf("user/%d", i), "u").code)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.kvdb")
	r := kvcli(t, src, "", "backup", file)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "backup written to "+file+": 5 keys, ")
	require.Regexp(t, `^backup: [0-9.]+ (B|KiB) received in [^\n]+\n$`, r.stderr, "standard error is no terminal: one final progress line")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left")

	b, err := os.ReadFile(file)
	require.NoError(t, err)
	bad := filepath.Join(t.TempDir(), "cut.kvdb")
	require.NoError(t, os.WriteFile(bad, b[:len(b)-10], 0o600))
	r = kvcli(t, dst, "", "restore", bad)
	require.Equal(t, 2, r.code, r.stderr)
	require.Contains(t, r.stderr, "kvcli: refused, nothing was sent: "+bad+" is not a backup kvcli can restore: backup is truncated")

	r = kvcli(t, dst, "", "restore", file)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "restored "+file)
	require.Contains(t, r.stdout, "5 keys")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, lines, 2, r.stderr)
	require.True(t, strings.HasPrefix(lines[0], "verify: "), lines[0])
	require.True(t, strings.HasPrefix(lines[1], "restore: "), lines[1])
	require.Equal(t, "u\n", kvcli(t, dst, "", "get", "user/3").stdout)

	r = kvcli(t, dst, "", "restore", file)
	require.Equal(t, 4, r.code, r.stderr)
	require.Contains(t, r.stderr, "kvcli: restore refused, nothing was changed: ")
}
