package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// kvdBinary builds kvd once for all tests in this package.
func kvdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kvd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath, buildErr = kvdproc.Build(dir)
	})
	require.NoError(t, buildErr)
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

var hc = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}

func startCluster(t *testing.T, nodes int) *kvdproc.Cluster {
	t.Helper()
	return startClusterWith(t, nodes, 1)
}

// startClusterWith starts nodes kvd processes hosting groups groups (3
// replicas at most), with quick elections and the extra flags args, and
// waits until every node is ready.
func startClusterWith(t *testing.T, nodes, groups int, args ...string) *kvdproc.Cluster {
	t.Helper()
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), nodes, groups, min(3, nodes))
	require.NoError(t, err)
	c.Args = append([]string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms", "--log-level", "debug"}, args...)
	launch(t, c)
	return c
}

func put(url, key, val string) (uint64, int, error) {
	req, _ := http.NewRequest("PUT", url+"/v1/kv/"+key, strings.NewReader(val))
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var pr api.PutResponse
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &pr); err != nil {
			return 0, resp.StatusCode, err
		}
	}
	return pr.Version, resp.StatusCode, nil
}

func get(url, key, consistency string) (string, string, int, error) {
	resp, err := hc.Get(url + "/v1/kv/" + key + "?consistency=" + consistency)
	if err != nil {
		return "", "", 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.Header.Get("ETag"), resp.StatusCode, nil
}

func TestKvd_SIGKILLLeaderUnderLoad_NoAcknowledgedWriteLost(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, err := c.Leader(ctx, 1)
	require.NoError(t, err)

	type ack struct{ val, etag string }
	var acked sync.Map
	var nacked, failed atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				key := fmt.Sprintf("w%02d-%06d", w, i)
				val := fmt.Sprintf("value-%d-%d", w, i)
				n := c.Nodes[rand.IntN(len(c.Nodes))]
				ver, status, err := put(n.URL(), key, val)
				if err == nil && status == 200 {
					acked.Store(key, ack{val, fmt.Sprintf(`"%d"`, ver)})
					nacked.Add(1)
				} else {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	before := nacked.Load()
	require.NoError(t, c.Kill(leader))
	killed := time.Now()
	// Writes resume on a new leader.
	require.Eventually(t, func() bool { return nacked.Load() > before+100 }, 15*time.Second, 50*time.Millisecond,
		"writes did not resume after the leader died")
	t.Logf("writes resumed within %v of SIGKILL", time.Since(killed).Round(10*time.Millisecond))
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d writes acknowledged, %d failed or unknown", nacked.Load(), failed.Load())

	survivors := []int{}
	for i := range c.Nodes {
		if i != leader {
			survivors = append(survivors, i)
		}
	}
	checked := 0
	acked.Range(func(k, v any) bool {
		a := v.(ack)
		for _, s := range survivors {
			val, etag, status, err := get(c.Nodes[s].URL(), k.(string), "linearizable")
			require.NoError(t, err)
			require.Equal(t, 200, status, "acknowledged write %s lost (asked %s)", k, c.Nodes[s].ID)
			require.Equal(t, a.val, val)
			require.Equal(t, a.etag, etag)
		}
		checked++
		return true
	})
	require.Greater(t, checked, 200)

	// The killed node comes back, catches up from its own data and the
	// log, and serves the same data.
	require.NoError(t, c.Start(leader))
	require.NoError(t, c.WaitReady(ctx, leader))
	require.Eventually(t, func() bool {
		missing := 0
		acked.Range(func(k, v any) bool {
			val, _, status, err := get(c.Nodes[leader].URL(), k.(string), "stale")
			if err != nil || status != 200 || val != v.(ack).val {
				missing++
				return false
			}
			return true
		})
		return missing == 0
	}, 20*time.Second, 200*time.Millisecond, "restarted node did not catch up")
}

func TestKvd_SIGTERM_HandsOffLeadershipAndExitsZero(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, err := c.Leader(ctx, 1)
	require.NoError(t, err)
	_, status, err := put(c.Nodes[leader].URL(), "before", "1")
	require.NoError(t, err)
	require.Equal(t, 200, status)

	// Requests in flight while the signal arrives still complete.
	var wg sync.WaitGroup
	var ok, other atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				_, status, err := put(c.Nodes[leader].URL(), fmt.Sprintf("t%d-%d", w, i), "x")
				if err == nil && status == 200 {
					ok.Add(1)
				} else if err == nil {
					other.Add(1)
				}
				if err != nil {
					return // the listener is closed: the node is draining
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	require.NoError(t, c.Terminate(leader, 20*time.Second), "kvd must exit 0 on SIGTERM")
	t.Logf("SIGTERM to exit: %v; %d writes ok during the drain, %d refused", time.Since(start).Round(time.Millisecond), ok.Load(), other.Load())
	wg.Wait()
	require.Zero(t, other.Load(), "no request in flight may fail on a graceful stop")

	next, err := c.Leader(ctx, 1)
	require.NoError(t, err)
	require.NotEqual(t, leader, next)
	require.Contains(t, c.Logs(leader, 1<<20), "leadership transferred", "the leader handed off before stopping")
	val, _, status, err := get(c.Nodes[next].URL(), "before", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "1", val)
}

func TestKvd_SingleNodeDefaultKeepsDataAcrossRestart(t *testing.T) {
	bin := kvdBinary(t)
	dir := t.TempDir()
	addrs, err := kvdproc.FreeAddrs(2)
	require.NoError(t, err)
	startNode := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "--http-addr", addrs[0], "--raft-addr", addrs[1])
		cmd.Dir = dir // the default data dir is ./kvd-data
		var out bytes.Buffer
		cmd.Stderr = &out
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		require.Eventually(t, func() bool {
			resp, err := hc.Get("http://" + addrs[0] + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}, 20*time.Second, 50*time.Millisecond)
		return cmd, &out
	}
	cmd, _ := startNode()
	_, status, err := put("http://"+addrs[0], "persist", "me")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait())
	_, err = os.Stat(filepath.Join(dir, "kvd-data", "node.json"))
	require.NoError(t, err)

	startNode()
	val, _, status, err := get("http://"+addrs[0], "persist", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "me", val)
}

func TestKvd_DefaultAddresses(t *testing.T) {
	// kvd with no flags listens on 127.0.0.1:7070 and :7071. Only checked
	// when those ports are free on this machine.
	for _, a := range []string{"127.0.0.1:7070", "127.0.0.1:7071"} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("%s is in use here; the default addresses cannot be checked", a)
		}
		ln.Close()
	}
	dir := t.TempDir()
	cmd := exec.Command(kvdBinary(t))
	cmd.Dir = dir
	require.NoError(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	require.Eventually(t, func() bool {
		resp, err := hc.Get("http://127.0.0.1:7070/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 20*time.Second, 50*time.Millisecond)
	var cl api.Cluster
	resp, err := hc.Get("http://127.0.0.1:7070/v1/cluster")
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&cl))
	resp.Body.Close()
	require.Equal(t, "127.0.0.1:7071", cl.Nodes[0].Raft)
	require.Equal(t, [][2]int{{0, 1023}}, cl.Groups[0].Slots)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait())
}

func TestKvd_BadFlagsExitWithUsageError(t *testing.T) {
	bin := kvdBinary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"nodes":[{"id":"n1"}]}`), 0o644))
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"extra-arg"},
		{"--initial-cluster", filepath.Join(dir, "missing.json")},
		{"--initial-cluster", bad},
		{"--log-level", "loud"},
		{"--watch-history", "0"},
		{"--ttl-interval", "-1s"},
		{"--idempotency-retention", "soon"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v: %s", args, out)
		require.Equal(t, 2, ee.ExitCode(), "%v: %s", args, out)
		require.NotEmpty(t, out)
	}
	// A data dir that belongs to another node is refused.
	addrs, err := kvdproc.FreeAddrs(2)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "d"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "d", "node.json"), []byte(`{"id":"other","map":{"epoch":1}}`), 0o644))
	cmd := exec.Command(bin, "--data-dir", filepath.Join(dir, "d"), "--http-addr", addrs[0], "--raft-addr", addrs[1])
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), `belongs to node "other"`)
}

func TestKvd_ThreeNodesThreeGroups_ClientRoutesAndSurvivesANodeLoss(t *testing.T) {
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 3, 3, 3)
	require.NoError(t, err)
	c.Args = []string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms"}
	require.NoError(t, c.StartAll())
	t.Cleanup(c.KillAll)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitAllReady(ctx))

	cfg := client.DefaultConfig(c.Nodes[0].URL())
	cl, err := client.New(ctx, cfg)
	require.NoError(t, err)
	defer cl.Close()
	cm := cl.CachedMap()
	require.Len(t, cm.Groups, 3)

	groups := map[uint64]int{}
	for i := range 150 {
		k := fmt.Sprintf("key/%03d", i)
		_, err := cl.Put(ctx, k, []byte(k))
		require.NoError(t, err)
		groups[uint64(groupOf(cm, k))]++
	}
	require.Len(t, groups, 3, "keys spread over every group")
	// Any node answers, for any key.
	for i := 0; i < 150; i += 7 {
		k := fmt.Sprintf("key/%03d", i)
		for _, n := range c.Nodes {
			val, _, status, err := get(n.URL(), k, "linearizable")
			require.NoError(t, err)
			require.Equal(t, 200, status)
			require.Equal(t, k, val)
		}
	}

	require.NoError(t, c.Kill(1))
	for i := range 150 {
		k := fmt.Sprintf("key/%03d", i)
		it, err := cl.Get(ctx, k)
		require.NoError(t, err, "every group keeps serving after a node loss")
		require.Equal(t, k, string(it.Value))
		_, err = cl.Put(ctx, k, []byte("new"))
		require.NoError(t, err)
	}
	p, err := cl.Scan(ctx, kvd.ScanOptions{Prefix: "key/", Limit: 1000})
	require.NoError(t, err)
	require.Len(t, p.Items, 150)
}

func groupOf(cm api.Cluster, key string) int {
	g, _ := cm.GroupOf(kvd.Slot(key))
	return int(g)
}

// With lazy state sync (the default) a SIGKILL leaves the state marked
// dirty; the restarted node discards it and rebuilds it from its newest
// snapshot and the Raft log after it, so every acknowledged write is back,
// with its version.
func TestKvd_SIGKILLWithLazyStateSyncRebuildsFromSnapshotAndLog(t *testing.T) {
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 1, 1, 1)
	require.NoError(t, err)
	c.Args = []string{"--snapshot-threshold", "64", "--snapshot-interval", "200ms", "--trailing-logs", "16", "--log-level", "info"}
	require.NoError(t, c.StartAll())
	t.Cleanup(func() { c.KillAll() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitAllReady(ctx))
	url := c.Nodes[0].URL()
	versions := map[string]uint64{}
	for i := range 600 {
		k := fmt.Sprintf("k%04d", i%400) // some keys written twice
		v, status, err := put(url, k, fmt.Sprintf("v%d", i))
		require.NoError(t, err)
		require.Equal(t, 200, status)
		versions[k] = v
	}
	// Let a snapshot happen, then write past it so the log has to be
	// replayed on top.
	require.Eventually(t, func() bool { return strings.Contains(c.Logs(0, 200000), "snapshot complete") }, 20*time.Second, 100*time.Millisecond)
	for i := range 50 {
		k := fmt.Sprintf("after%02d", i)
		v, status, err := put(url, k, "x")
		require.NoError(t, err)
		require.Equal(t, 200, status)
		versions[k] = v
	}
	require.NoError(t, c.Kill(0))
	require.NoError(t, c.Start(0))
	require.NoError(t, c.WaitReady(ctx, 0))
	logs := c.Logs(0, 200000)
	require.Contains(t, logs, "not closed cleanly", "the dirty state was noticed")
	require.Contains(t, logs, "restoring it", "and rebuilt from the snapshot")
	for k, want := range versions {
		_, etag, status, err := get(url, k, "linearizable")
		require.NoError(t, err)
		require.Equal(t, 200, status, k)
		require.Equal(t, fmt.Sprintf(`"%d"`, want), etag, k)
	}
}

// launch starts every node of c, kills them when the test ends (logging
// their output if it failed) and waits until every node is ready.
func launch(t *testing.T, c *kvdproc.Cluster) {
	t.Helper()
	require.NoError(t, c.StartAll())
	t.Cleanup(func() {
		c.KillAll()
		if t.Failed() {
			for i := range c.Nodes {
				t.Logf("--- log of %s:\n%s", c.Nodes[i].ID, c.Logs(i, 8000))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitAllReady(ctx))
}
