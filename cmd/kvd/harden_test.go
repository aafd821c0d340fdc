package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/damage"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// Process-level tests of the hardening: crashes, damaged files, full
// disks and floods, each on real kvd processes.

// readAt reads key at node url with consistency, routed to group 1 at
// epoch 1 so the node serves it itself or refuses (never forwards).
type readResult struct {
	status  int
	body    string
	version uint64
	node    string
}

func readAt(url, key, consistency string) (readResult, error) {
	req, _ := http.NewRequest("GET", url+"/v1/kv/"+key+"?consistency="+consistency, nil)
	req.Header.Set(api.HeaderGroup, "1")
	req.Header.Set(api.HeaderEpoch, "1")
	resp, err := hc.Do(req)
	if err != nil {
		return readResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := readResult{status: resp.StatusCode, body: string(b), node: resp.Header.Get(api.HeaderNode)}
	if et := strings.Trim(resp.Header.Get("ETag"), `"`); et != "" {
		r.version, _ = strconv.ParseUint(et, 10, 64)
	}
	return r, nil
}

func followerOf(t *testing.T, c *kvdproc.Cluster) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	li, err := c.Leader(ctx, 1)
	require.NoError(t, err)
	return (li + 1) % len(c.Nodes)
}

// waitHolds waits until node i serves key=val from its own replica.
func waitHolds(t *testing.T, c *kvdproc.Cluster, i int, key, val string) {
	t.Helper()
	require.Eventually(t, func() bool {
		r, err := readAt(c.Nodes[i].URL(), key, "stale")
		return err == nil && r.status == 200 && r.body == val
	}, 20*time.Second, 20*time.Millisecond, "node %d never held %s", i, key)
}

func restart(t *testing.T, c *kvdproc.Cluster, i int) {
	t.Helper()
	require.NoError(t, c.Start(i))
}

// After kill -9 (lazy state sync: the state is rebuilt from an older
// snapshot and the log) a replica answers stale reads only once it is
// back where it was: never a 404 for a key it held, never an older
// version.
func TestKvd_RestartedReplicaNeverGoesBackInTime(t *testing.T) {
	c := startClusterWith(t, 3, 1, "--snapshot-threshold", "100", "--snapshot-interval", "200ms", "--trailing-logs", "100000")
	f := followerOf(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var written atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ctx.Err() == nil; i++ {
			for j := range c.Nodes {
				if j == f {
					continue
				}
				if _, status, _ := put(c.Nodes[j].URL(), "clock", strconv.Itoa(i)); status == 200 {
					written.Store(int64(i))
					break
				}
			}
		}
	}()
	require.Eventually(t, func() bool { return written.Load() > 2000 }, 60*time.Second, 50*time.Millisecond)
	var seen uint64
	for range 50 {
		if r, err := readAt(c.Nodes[f].URL(), "clock", "stale"); err == nil && r.status == 200 {
			seen = max(seen, r.version)
		}
	}
	require.Positive(t, seen)
	require.NoError(t, c.Kill(f))
	restart(t, c, f)
	served, refused := 0, 0
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		r, err := readAt(c.Nodes[f].URL(), "clock", "stale")
		if err != nil {
			continue // not listening yet
		}
		switch r.status {
		case 200:
			require.GreaterOrEqual(t, r.version, seen, "the restarted replica went back in time")
			seen = r.version
			served++
		case 404:
			t.Fatalf("the restarted replica answered 404 for a key it held")
		default:
			refused++
		}
	}
	cancel()
	wg.Wait()
	require.Positive(t, served, "it serves again once caught up")
	t.Logf("%d stale reads served after the restart, %d refused while it caught up", served, refused)
}

// A value whose bytes rot in a follower's state file is never served:
// stale and follower reads on that node refuse until it has repaired its
// state from a peer, then serve the right value.
func TestKvd_DamagedValueInAFollowersStateIsNeverServed(t *testing.T) {
	c := startClusterWith(t, 3, 1)
	f := followerOf(t, c)
	const val = "value-whose-bytes-rot-on-disk-0123456789abcdef"
	_, status, err := put(c.Nodes[(f+1)%3].URL(), "victim", val)
	require.NoError(t, err)
	require.Equal(t, 200, status)
	waitHolds(t, c, f, "victim", val)
	require.NoError(t, c.Terminate(f, 10*time.Second))
	require.Positive(t, damage.Flip(t, filepath.Join(c.Nodes[f].DataDir, "groups", "1", "state.db"), val))
	restart(t, c, f)
	good := 0
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && good < 20 {
		for _, cons := range []string{"stale", "follower"} {
			r, err := readAt(c.Nodes[f].URL(), "victim", cons)
			if err != nil || r.status != 200 {
				continue
			}
			require.Equal(t, val, r.body, "a damaged value was served (%s read)", cons)
			good++
		}
	}
	require.Positive(t, good, "the node serves the right value once repaired")
	require.Positive(t, testcluster.Metric(t, c.Nodes[f].URL(), "kvd_corruption_detected_total", `group="1"`))
	require.Positive(t, testcluster.Metric(t, c.Nodes[f].URL(), "kvd_repairs_total", `group="1"`, `result="ok"`))
}

// A log entry damaged on disk is found when a restarted node replays it
// and is repaired from a peer (raft-boltdb here, whose file the damage
// finds by the value; replication's tests cover raft-wal's segments).
func TestKvd_DamagedLogEntryIsRepairedFromAPeer(t *testing.T) {
	c := startClusterWith(t, 3, 1, "--raft-log", "boltdb")
	f := followerOf(t, c)
	const val = "value-in-a-log-entry-whose-bytes-rot-0123456789"
	_, status, err := put(c.Nodes[(f+1)%3].URL(), "victim", val)
	require.NoError(t, err)
	require.Equal(t, 200, status)
	waitHolds(t, c, f, "victim", val)
	require.NoError(t, c.Kill(f)) // the state is rebuilt from the log at the next start
	require.Positive(t, damage.Flip(t, filepath.Join(c.Nodes[f].DataDir, "groups", "1", "raft.db"), val))
	restart(t, c, f)
	waitHolds(t, c, f, "victim", val)
	require.Positive(t, testcluster.Metric(t, c.Nodes[f].URL(), "kvd_corruption_detected_total", `group="1"`))
	require.Contains(t, c.Logs(f, 1<<20), "repaired a damaged raft log entry from a peer")
}

// A state file whose meta pages are both damaged will not open: the node
// moves it aside and rebuilds the state from its snapshot and log, by
// itself.
func TestKvd_StateFileThatWillNotOpenIsRebuilt(t *testing.T) {
	c := startClusterWith(t, 1, 1)
	for i := range 20 {
		_, status, err := put(c.Nodes[0].URL(), fmt.Sprintf("k%d", i), "v"+strconv.Itoa(i))
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	require.NoError(t, c.Terminate(0, 10*time.Second))
	path := filepath.Join(c.Nodes[0].DataDir, "groups", "1", "state.db")
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	page := int64(os.Getpagesize())
	for _, off := range []int64{16, page + 16} {
		_, err := fh.WriteAt(bytes.Repeat([]byte{0xAB}, 64), off)
		require.NoError(t, err)
	}
	require.NoError(t, fh.Close())
	restart(t, c, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx, 0))
	for i := range 20 {
		v, _, status, err := get(c.Nodes[0].URL(), fmt.Sprintf("k%d", i), "linearizable")
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.Equal(t, "v"+strconv.Itoa(i), v)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	require.Len(t, aside, 1, "the damaged file is kept aside")
}

// smallDisk mounts a tmpfs of size bytes for the test, or skips it.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root; skipped")
	}
	dir := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s); skipped", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillUntil writes 256 KiB values until one answers a status in stop, or
// the writes run out, and returns the statuses seen.
func fillUntil(t *testing.T, url string, from int, stop ...int) (map[int]int, int) {
	t.Helper()
	val := strings.Repeat("f", 256<<10)
	seen := map[int]int{}
	i := from
	for ; i < from+2000; i++ {
		_, status, err := put(url, fmt.Sprintf("fill%04d", i), val)
		if err != nil {
			seen[-1]++
			continue
		}
		seen[status]++
		for _, s := range stop {
			if status == s {
				return seen, i
			}
		}
	}
	return seen, i
}

// With the disk nearly full, writes are refused (507, JSON) before it is
// full, reads go on, and once space is freed writes are taken again
// without a restart.
func TestKvd_FullDiskRefusesWritesAndResumes(t *testing.T) {
	disk := smallDisk(t, "64m")
	ballast := filepath.Join(disk, "ballast")
	require.NoError(t, os.WriteFile(ballast, make([]byte, 12<<20), 0o600))
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 1, 1, 1)
	require.NoError(t, err)
	c.Nodes[0].DataDir = filepath.Join(disk, "n1")
	c.Args = []string{"--min-free-bytes", strconv.Itoa(16 << 20), "--log-level", "debug"}
	launch(t, c)
	url := c.Nodes[0].URL()
	seen, last := fillUntil(t, url, 0, 507)
	require.Positive(t, seen[507], "writes are refused before the disk fills: %v", seen)
	require.Zero(t, seen[500], "no internal errors: %v", seen)
	for i := range 5 {
		resp, err := hc.Do(mustReq(t, "PUT", url+fmt.Sprintf("/v1/kv/one-more-%d", i), strings.Repeat("o", 256<<10)))
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 507, resp.StatusCode, "%s", b)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		require.Contains(t, string(b), api.CodeInsufficientStorage)
	}
	v, _, status, err := get(url, "fill0000", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status, "reads go on")
	require.Len(t, v, 256<<10)
	require.True(t, c.Nodes[0].Running())

	require.NoError(t, os.Remove(ballast))
	require.Eventually(t, func() bool {
		_, status, err := put(url, "after-space-returned", "x")
		return err == nil && status == 200
	}, 20*time.Second, 100*time.Millisecond, "writes resume without a restart")
	t.Logf("refused after %d writes: %v", last, seen)
}

// A leader whose own disk is short of space hands its groups to a member
// with room: the leader decides on writes by its own disk, and the group
// would otherwise refuse every write although a majority of it could take
// them.
func TestKvd_ALeaderShortOfDiskHandsOverItsGroups(t *testing.T) {
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 3, 1, 3)
	require.NoError(t, err)
	var disks []string
	for i := range c.Nodes {
		disk := smallDisk(t, "64m")
		disks = append(disks, disk)
		c.Nodes[i].DataDir = filepath.Join(disk, c.Nodes[i].ID)
	}
	c.Args = []string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms", "--min-free-bytes", strconv.Itoa(16 << 20), "--log-level", "debug"}
	launch(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The group's preferred leader leads it (the balancer hands it back
	// there): nothing but its disk may move leadership away.
	cl, err := c.ClusterMap(0)
	require.NoError(t, err)
	preferred := slices.IndexFunc(c.Nodes, func(n *kvdproc.Node) bool { return n.ID == cl.Groups[0].Members[0] })
	var leader int
	require.Eventually(t, func() bool {
		leader, err = c.Leader(ctx, 1)
		return err == nil && leader == preferred
	}, 30*time.Second, 100*time.Millisecond, "the preferred leader leads")
	other := c.Nodes[(leader+1)%3].URL()
	_, status, err := put(other, "before", "x")
	require.NoError(t, err)
	require.Equal(t, 200, status)

	// The leader's disk, and only its, is left with less than the free
	// space to keep.
	var free syscall.Statfs_t
	require.NoError(t, syscall.Statfs(disks[leader], &free))
	ballast := make([]byte, int64(free.Bavail)*int64(free.Bsize)-8<<20)
	require.NoError(t, os.WriteFile(filepath.Join(disks[leader], "ballast"), ballast, 0o600))
	require.Eventually(t, func() bool {
		var st api.Status
		resp, err := hc.Get(c.Nodes[leader].URL() + "/v1/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Storage != nil && !st.Storage.Writable
	}, 10*time.Second, 50*time.Millisecond, "the leader's disk guard saw the disk short")
	require.Eventually(t, func() bool {
		_, status, err := put(other, "after", "y")
		return err == nil && status == 200
	}, 30*time.Second, 200*time.Millisecond, "the group takes writes again under a leader with room")
	now, err := c.Leader(ctx, 1)
	require.NoError(t, err)
	require.NotEqual(t, leader, now, "leadership moved off the node short of space")
	// It stays off it: the preferred-leader balancer does not hand it back.
	time.Sleep(3 * time.Second)
	for i := range 10 {
		_, status, err := put(other, fmt.Sprintf("later%d", i), "z")
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	v, _, status, err := get(c.Nodes[now].URL(), "before", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "x", v)
}

// With the guard off, the disk really fills: a write that reaches Raft or
// the state hits ENOSPC. The node must not exit: it waits for space, and
// once space is freed it takes writes again, without a restart.
func TestKvd_ENOSPCWhileWritingDoesNotStopTheNode(t *testing.T) {
	disk := smallDisk(t, "64m")
	ballast := filepath.Join(disk, "ballast")
	require.NoError(t, os.WriteFile(ballast, make([]byte, 16<<20), 0o600))
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 1, 1, 1)
	require.NoError(t, err)
	c.Nodes[0].DataDir = filepath.Join(disk, "n1")
	c.Args = []string{"--min-free-bytes", "0", "--request-timeout", "2s", "--log-level", "debug"}
	launch(t, c)
	url := c.Nodes[0].URL()
	seen, _ := fillUntil(t, url, 0, 503, 504, 507, 500)
	t.Logf("statuses until the disk filled: %v", seen)
	// Keep pushing for a while, then check the process is alive.
	for i, until := 0, time.Now().Add(3*time.Second); time.Now().Before(until); i++ {
		put(url, fmt.Sprintf("more%d", i), strings.Repeat("m", 256<<10))
	}
	time.Sleep(time.Second)
	require.True(t, c.Nodes[0].Running(), "the node must not exit on a full disk")
	resp, err := hc.Get(url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	// A replica whose applies wait for the disk is not ready.
	var st struct {
		Groups []struct {
			Health struct{ State string } `json:"health"`
		} `json:"groups"`
	}
	resp, err = hc.Get(url + "/v1/status")
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	resp.Body.Close()
	resp, err = hc.Get(url + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	for _, g := range st.Groups {
		if g.Health.State == "stalled" {
			t.Log("the replica stalled on the full disk")
			require.Equal(t, 503, resp.StatusCode, "a stalled replica is not ready")
		}
	}

	require.NoError(t, os.Remove(ballast))
	require.Eventually(t, func() bool {
		_, status, err := put(url, "after-space-returned", "x")
		return err == nil && status == 200
	}, 60*time.Second, 200*time.Millisecond, "writes resume without a restart")
	v, _, status, err := get(url, "after-space-returned", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.Equal(t, "x", v)
}

func mustReq(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	return req
}

// peakRSS reads a process's peak resident memory (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// A flood of 1 MiB values keeps every node's memory bounded: past its
// caps a node sheds requests (429) at once instead of queueing them.
func TestKvd_MemoryStaysBoundedUnderAFloodOfLargeValues(t *testing.T) {
	if testing.Short() {
		t.Skip("a flood: skipped in -short")
	}
	c := startClusterWith(t, 3, 3, "--request-timeout", "5s")
	val := strings.Repeat("m", 1<<20)
	var statuses sync.Map
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 128}}
	for w := range 96 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := c.Nodes[w%3].URL()
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "PUT", fmt.Sprintf("%s/v1/kv/flood-%d-%d", url, w, i%20), strings.NewReader(val))
				resp, err := cl.Do(req)
				code := -1
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				n, _ := statuses.LoadOrStore(code, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}()
	}
	wg.Wait()
	counts := map[int]int64{}
	statuses.Range(func(k, v any) bool {
		counts[k.(int)] = v.(*atomic.Int64).Load()
		return true
	})
	t.Logf("answers: %v", counts)
	require.Positive(t, counts[200])
	require.Zero(t, counts[500], "no internal errors")
	for i, n := range c.Nodes {
		require.True(t, n.Running(), "node %d is alive", i)
		rss := peakRSS(t, n.Pid())
		t.Logf("%s peak RSS %d MiB", n.ID, rss>>20)
		require.Less(t, rss, int64(1<<30), "node %s peaked at %d MiB", n.ID, rss>>20)
	}
}

// The members of a cluster started from one file share a random secret,
// kept private; a node started with another secret (here, an impostor on
// a dead member's addresses) cannot join or disturb the cluster.
func TestKvd_MembersShareASecretAndOutsidersAreRefused(t *testing.T) {
	c := startClusterWith(t, 3, 1)
	shared, err := os.ReadFile(c.SpecPath() + ".secret")
	require.NoError(t, err, "the bootstrap creates the cluster's secret next to its file")
	fi, err := os.Stat(c.SpecPath() + ".secret")
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	for _, n := range c.Nodes {
		own, err := os.ReadFile(filepath.Join(n.DataDir, "peer.secret"))
		require.NoError(t, err)
		require.Equal(t, strings.TrimSpace(string(shared)), strings.TrimSpace(string(own)))
	}
	f := followerOf(t, c)
	require.NoError(t, c.Kill(f))
	// The impostor: same id, addresses and cluster file, its own data and
	// its own secret.
	c.Nodes[f].DataDir = filepath.Join(t.TempDir(), "impostor")
	other := filepath.Join(t.TempDir(), "other.secret")
	require.NoError(t, os.WriteFile(other, []byte(strings.Repeat("x", 64)), 0o600))
	c.NodeArgs[c.Nodes[f].ID] = []string{"--peer-secret-file", other}
	require.NoError(t, c.Start(f))
	time.Sleep(3 * time.Second)
	resp, err := hc.Get(c.Nodes[f].URL() + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 503, resp.StatusCode, "the impostor joins nothing")
	for i := range c.Nodes {
		if i == f {
			continue
		}
		require.Positive(t, testcluster.Metric(t, c.Nodes[i].URL(), "kvd_raft_connections_refused_total"), "node %d refused the impostor", i)
		_, status, err := put(c.Nodes[i].URL(), fmt.Sprintf("still-%d", i), "v")
		require.NoError(t, err)
		require.Equal(t, 200, status, "the cluster keeps serving")
	}
}
