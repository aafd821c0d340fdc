package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// Process-level tests of slot moves: groups created on a running
// cluster and slots rebalanced onto them under writes, the leaders of a
// move's groups killed in each of its phases, and the calls that must be
// refused. Each runs real kvd processes.

var (
	fpBuildOnce sync.Once
	fpBinPath   string
	fpBuildErr  error
)

// kvdFailpointsBinary builds kvd with failpoints once, next to the plain
// binary (TestMain removes that folder).
func kvdFailpointsBinary(t *testing.T) string {
	t.Helper()
	dir := filepath.Dir(kvdBinary(t))
	fpBuildOnce.Do(func() { fpBinPath, fpBuildErr = kvdproc.BuildWith(dir, "kvd-failpoints", "failpoints", "") })
	require.NoError(t, fpBuildErr)
	return fpBinPath
}

// startMovesCluster starts nodes processes of bin hosting groups groups,
// with quick elections, and waits until every node is ready.
func startMovesCluster(t *testing.T, bin string, nodes, groups int) *kvdproc.Cluster {
	t.Helper()
	c, err := kvdproc.NewCluster(bin, t.TempDir(), nodes, groups, min(3, nodes))
	require.NoError(t, err)
	c.Args = []string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms", "--log-level", "debug"}
	launch(t, c)
	return c
}

// ackedWrite is a write a client was told succeeded: a put of value, or
// a delete (value absent).
type ackedWrite struct {
	value   string
	version uint64
}

// absent stands for "no value" where the writes are recorded: a delete
// writes it, a 404 reads it.
const absent = "\x00absent"

// moveLog records what the writers of a move test were told, key by key:
// the last acknowledged write, every value written whose outcome is
// unknown (it may take effect at any later time), and any version that
// went down between two acknowledged writes. Each key has one writer at
// a time, so that the order of its acknowledgements is the order of its
// writes.
type moveLog struct {
	// mu protects acked, maybe and wrong.
	mu    sync.Mutex
	acked map[string]ackedWrite
	maybe map[string][]string
	wrong []string

	ok, refused, unknown atomic.Int64
}

func newMoveLog() *moveLog {
	return &moveLog{acked: map[string]ackedWrite{}, maybe: map[string][]string{}}
}

// putAnswer is what a write was answered.
type putAnswer struct {
	status     int // 0: no answer
	code       string
	message    string
	retryAfter string
	leader     string // X-Kvd-Leader
	acked      bool
}

// put writes key=val at the node url and records the outcome: a 200 is
// acknowledged, a refused connection, a 4xx or a 503 changed nothing,
// anything else may have. It says whether the write was acknowledged.
func (l *moveLog) put(url, key, val string) (acked bool) { return l.write(url, key, val).acked }

// del deletes key at the node url and records the outcome as put does.
func (l *moveLog) del(url, key string) (acked bool) { return l.write(url, key, absent).acked }

// write is put (del when val is absent), returning the answer; hdr are
// extra headers (a router's, say).
func (l *moveLog) write(url, key, val string, hdr ...string) putAnswer {
	method, body := http.MethodPut, io.Reader(strings.NewReader(val))
	if val == absent {
		method, body = http.MethodDelete, nil
	}
	req, _ := http.NewRequest(method, url+"/v1/kv/"+key, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	var a putAnswer
	var b []byte
	if err == nil {
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		a.status, a.retryAfter, a.leader = resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(api.HeaderLeader)
		var e api.Error
		if json.Unmarshal(b, &e) == nil {
			a.code, a.message = e.Error.Code, e.Error.Message
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var op *net.OpError
	switch {
	case err != nil && errors.As(err, &op) && op.Op == "dial":
		l.refused.Add(1)
	case err != nil:
		l.maybe[key] = append(l.maybe[key], val)
		l.unknown.Add(1)
	case a.status == http.StatusOK:
		prev, had := l.acked[key]
		version := uint64(0)
		if val == absent {
			var dr api.DeleteResponse
			if json.Unmarshal(b, &dr) != nil || (dr.Deleted && dr.Version == 0) {
				l.maybe[key] = append(l.maybe[key], val)
				l.unknown.Add(1)
				l.wrong = append(l.wrong, fmt.Sprintf("delete %s: 200 with an undecodable answer %q", key, b))
				return a
			}
			version = dr.Version
			if !dr.Deleted {
				// Nothing to delete: the key must have been absent.
				if had && prev.value != absent && !slices.Contains(l.maybe[key], absent) {
					l.wrong = append(l.wrong, fmt.Sprintf("delete %s found nothing to delete, after %q was acknowledged at version %d", key, prev.value, prev.version))
				}
				version = prev.version
			}
		} else {
			var pr api.PutResponse
			if json.Unmarshal(b, &pr) != nil || pr.Version == 0 {
				l.maybe[key] = append(l.maybe[key], val)
				l.unknown.Add(1)
				l.wrong = append(l.wrong, fmt.Sprintf("put %s: 200 with an undecodable answer %q", key, b))
				return a
			}
			version = pr.Version
		}
		if had && version < prev.version || had && version == prev.version && version != 0 && (val != absent || prev.value != absent) {
			l.wrong = append(l.wrong, fmt.Sprintf("%s %s=%q acknowledged with version %d, after %q at version %d", method, key, val, version, prev.value, prev.version))
		}
		l.acked[key] = ackedWrite{val, version}
		l.ok.Add(1)
		a.acked = true
	case a.status < 500 || a.status == http.StatusServiceUnavailable:
		l.refused.Add(1)
	default:
		l.maybe[key] = append(l.maybe[key], val)
		l.unknown.Add(1)
	}
	return a
}

// readVersioned reads key at the node url linearizably, with its version
// (from the ETag).
func readVersioned(nodeURL, key string) (readResult, error) {
	resp, err := hc.Get(nodeURL + "/v1/kv/" + key + "?consistency=linearizable")
	if err != nil {
		return readResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := readResult{status: resp.StatusCode, body: string(b), node: resp.Header.Get(api.HeaderNode)}
	if et := strings.Trim(resp.Header.Get("ETag"), `"`); et != "" {
		r.version, _ = strconv.ParseUint(et, 10, 64)
	}
	if r.status == http.StatusOK && r.version == 0 {
		return r, fmt.Errorf("read %s: 200 without a version (ETag %q)", key, resp.Header.Get("ETag"))
	}
	return r, nil
}

// allowed says whether a read of key that returned val at version v
// (absent for a 404) is one the writes allow, now that they have
// stopped; why not if not.
func (l *moveLog) allowed(key, val string, v uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.acked[key]
	if ok && val != absent && v < a.version {
		return fmt.Errorf("%s read at version %d (%q), below its acknowledged version %d (%q)", key, v, val, a.version, a.value)
	}
	if (ok && val == a.value) || slices.Contains(l.maybe[key], val) {
		return nil
	}
	if !ok {
		return fmt.Errorf("%s read as %q (version %d): no write of it was acknowledged or left unknown", key, val, v)
	}
	return fmt.Errorf("%s read as %q (version %d): not its last acknowledged value %q (version %d) nor a write of unknown outcome", key, val, v, a.value, a.version)
}

// attempted says whether key was written at all (acknowledged or not).
func (l *moveLog) attempted(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.acked[key]
	return ok || len(l.maybe[key]) > 0
}

// ackedKeys returns the keys with an acknowledged write (a put or a
// delete), sorted.
func (l *moveLog) ackedKeys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.acked))
	for k := range l.acked {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (l *moveLog) summary() string {
	return fmt.Sprintf("%d writes acknowledged, %d refused (nothing applied), %d of unknown outcome", l.ok.Load(), l.refused.Load(), l.unknown.Load())
}

// requireNoVersionWentDown fails the test if a writer saw a key's
// version go down (or stay) between two acknowledged writes.
func (l *moveLog) requireNoVersionWentDown(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	wrong := slices.Clone(l.wrong)
	l.mu.Unlock()
	require.Empty(t, wrong, "acknowledged versions of a key must grow")
}

// runWriters starts n writers that call write(w, i) with i = 0, 1, ...
// and a pause of think in between, until stop is called (or max has
// passed); stop waits for them.
func runWriters(t *testing.T, n int, think, maxTime time.Duration, write func(w, i int)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), maxTime)
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				write(w, i)
				select {
				case <-ctx.Done():
				case <-time.After(think):
				}
			}
		}()
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// readAllBack reads every key with an acknowledged write back, with
// linearizable reads at random nodes (8 at a time; each retried while
// refused), and fails the test with the first reads the writes do not
// allow.
func readAllBack(t *testing.T, c *kvdproc.Cluster, l *moveLog) {
	t.Helper()
	keys := l.ackedKeys()
	require.NotEmpty(t, keys)
	var mu sync.Mutex
	var bad []string
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				j := int(next.Add(1)) - 1
				if j >= len(keys) {
					return
				}
				k := keys[j]
				var r readResult
				var err error
				for attempt := 0; attempt < 50; attempt++ {
					r, err = readVersioned(c.Nodes[rng.IntN(len(c.Nodes))].URL(), k)
					if err == nil && r.status != http.StatusServiceUnavailable && r.status != http.StatusMisdirectedRequest {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				var why error
				switch {
				case err != nil:
					why = fmt.Errorf("read %s: %v", k, err)
				case r.status == http.StatusNotFound:
					why = l.allowed(k, absent, 0)
				case r.status != http.StatusOK:
					why = fmt.Errorf("read of acknowledged key %s: %d %s", k, r.status, r.body)
				default:
					why = l.allowed(k, r.body, r.version)
				}
				if why != nil {
					mu.Lock()
					bad = append(bad, why.Error())
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 20 {
		bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
	}
	require.Empty(t, bad, "every acknowledged write reads back (%d keys)", len(keys))
	t.Logf("read back: all %d keys written, each with its last acknowledged value (or absent after a delete) or a later one, at its version or above", len(keys))
}

// scanItems scans every key with prefix at the node url, page by page
// (retrying a page while it is refused), with extra headers; it returns
// the items in the order served.
func scanItems(nodeURL, prefix string, hdr map[string]string) ([]api.Item, error) {
	var all []api.Item
	start := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"prefix": {prefix}, "limit": {"10000"}, "consistency": {"linearizable"}}
		if start != "" {
			q.Set("start", start)
		}
		var sr api.ScanResponse
		var last error
		for attempt := 0; ; attempt++ {
			req, _ := http.NewRequest(http.MethodGet, nodeURL+"/v1/kv?"+q.Encode(), nil)
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := hc.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					if err := json.Unmarshal(b, &sr); err != nil {
						return nil, fmt.Errorf("scan page %d: %v", page, err)
					}
					break
				}
				last = fmt.Errorf("scan page %d: %d %s", page, resp.StatusCode, b)
				if resp.StatusCode != http.StatusServiceUnavailable || len(hdr) > 0 {
					return nil, last // a routed scan is the caller's to retry
				}
			} else {
				last = err
			}
			if attempt >= 30 {
				return nil, last
			}
			time.Sleep(200 * time.Millisecond)
		}
		all = append(all, sr.Items...)
		if !sr.More {
			return all, nil
		}
		start = sr.Next
	}
	return nil, errors.New("scan: more than 1000 pages")
}

// checkScans scans prefix through the whole cluster and through each
// group's leader alone (routed), and fails the test if a key comes twice,
// out of order, in two groups or in a group that does not own its slot,
// if an acknowledged write is missing or not the last one, or if a key
// was never written. It returns the number of keys.
func checkScans(t *testing.T, c *kvdproc.Cluster, l *moveLog, prefix string) int {
	t.Helper()
	items, err := scanItems(c.Nodes[0].URL(), prefix, nil)
	require.NoError(t, err, "full scan")
	seen := map[string]bool{}
	var bad []string
	for i, it := range items {
		if seen[it.Key] {
			bad = append(bad, fmt.Sprintf("%s comes twice in the full scan", it.Key))
		}
		seen[it.Key] = true
		if i > 0 && items[i-1].Key >= it.Key {
			bad = append(bad, fmt.Sprintf("full scan out of order: %s after %s", it.Key, items[i-1].Key))
		}
		if !l.attempted(it.Key) {
			bad = append(bad, fmt.Sprintf("%s is in the scan but was never written", it.Key))
		} else if err := l.allowed(it.Key, string(it.Value), it.Version); err != nil {
			bad = append(bad, "full scan: "+err.Error())
		}
	}
	for _, k := range l.ackedKeys() {
		if !seen[k] && l.allowed(k, absent, 0) != nil {
			bad = append(bad, fmt.Sprintf("acknowledged key %s is missing from the full scan", k))
		}
	}
	if len(bad) > 20 {
		bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
	}
	require.Empty(t, bad, "full scan of %q (%d items)", prefix, len(items))

	// Each group alone: routed scans at its leader, at the map's epoch.
	inGroup := map[string]uint64{}
	var cl api.Cluster
	for attempt := 0; ; attempt++ {
		cl = currentMap(t, c)
		clear(inGroup)
		bad = nil
		var retry error
		for _, g := range cl.Groups {
			li := c.NodeIndex(g.Leader)
			if li < 0 || !c.Nodes[li].Running() {
				retry = fmt.Errorf("group %d has no running leader (%q)", g.ID, g.Leader)
				break
			}
			gi, err := scanItems(c.Nodes[li].URL(), prefix, map[string]string{
				api.HeaderGroup: strconv.FormatUint(g.ID, 10), api.HeaderEpoch: strconv.FormatUint(cl.Epoch, 10)})
			if err != nil {
				retry = fmt.Errorf("routed scan of group %d at %s: %w", g.ID, g.Leader, err)
				break
			}
			for _, it := range gi {
				if other, ok := inGroup[it.Key]; ok {
					bad = append(bad, fmt.Sprintf("%s is served by groups %d and %d", it.Key, other, g.ID))
				}
				inGroup[it.Key] = g.ID
				if owner, _ := cl.GroupOf(kvd.Slot(it.Key)); owner != g.ID {
					bad = append(bad, fmt.Sprintf("group %d serves %s, of slot %d, which group %d owns", g.ID, it.Key, kvd.Slot(it.Key), owner))
				}
			}
		}
		if retry == nil {
			break
		}
		require.Less(t, attempt, 30, "scan each group alone: %v", retry)
		time.Sleep(200 * time.Millisecond)
	}
	for k := range seen {
		if _, ok := inGroup[k]; !ok {
			bad = append(bad, fmt.Sprintf("%s is in the full scan and in no group's", k))
		}
	}
	if len(bad) > 20 {
		bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
	}
	require.Empty(t, bad, "scans of each group (epoch %d)", cl.Epoch)
	require.Len(t, inGroup, len(seen), "the groups' scans hold the full scan's keys")
	t.Logf("scans: %d keys of %q, each once, each in the one group that owns its slot", len(items), prefix)
	return len(items)
}

// requireSlotsOwnedOnce fails the test unless cl gives every slot to
// exactly one group.
func requireSlotsOwnedOnce(t *testing.T, cl api.Cluster) {
	t.Helper()
	require.NoError(t, kvdproc.SlotOwnership(cl), "map: %+v", cl.Groups)
}

// waitMovesDone waits up to d until each move of ids is done or failed
// and returns the moves as last seen.
func waitMovesDone(t *testing.T, c *kvdproc.Cluster, d time.Duration, ids []string) api.MoveList {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	l, err := c.WaitMoves(ctx, func(l api.MoveList) error {
		for _, id := range ids {
			mv, ok := kvdproc.FindMove(l, id)
			if !ok {
				return fmt.Errorf("move %s is not in the list", id)
			}
			if !kvdproc.MoveFinished(mv.State) {
				return fmt.Errorf("move %s (slots %v, %d to %d) is %s, attempt %d, progress %+v", id, mv.Slots, mv.From, mv.To, mv.State, mv.Attempt, mv.Progress)
			}
		}
		return nil
	})
	if err != nil {
		b, _ := json.Marshal(l)
		t.Fatalf("moves %v not finished within %v: %v\nmoves: %s\nmaps:\n%s", ids, d, err, b, mapJSON(c))
	}
	t.Logf("moves %v finished after %v", ids, time.Since(start).Round(10*time.Millisecond))
	return l
}

// startMoveRetrying starts the move req (which names its id, so that a
// repeat starts nothing twice) through each node in turn, again while it
// is answered 5xx or not at all (the system group may be electing a
// leader), for 30 s at most.
func startMoveRetrying(t *testing.T, c *kvdproc.Cluster, req api.MoveRequest) api.MoveStarted {
	t.Helper()
	require.NotEmpty(t, req.ID)
	last := ""
	for try := 0; try < 60; try++ {
		i := try % len(c.Nodes)
		if c.Nodes[i].Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			status, body, err := c.Call(ctx, i, http.MethodPost, "/v1/admin/moves", req)
			cancel()
			if err == nil && status == http.StatusAccepted {
				var ms api.MoveStarted
				require.NoError(t, json.Unmarshal(body, &ms), "%s", body)
				return ms
			}
			last = fmt.Sprintf("%d %s %v", status, body, err)
			require.True(t, err != nil || status >= 500, "start move %s: %s", req.ID, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("start move %s: not taken within 30 s: %s", req.ID, last)
	return api.MoveStarted{}
}

// keysInSlots returns n keys named prefix-<i> whose slots are in [a,b].
func keysInSlots(t *testing.T, prefix string, a, b, n int) []string {
	t.Helper()
	var out []string
	for i := 0; len(out) < n && i < 1_000_000; i++ {
		k := fmt.Sprintf("%s-%d", prefix, i)
		if s := kvd.Slot(k); s >= a && s <= b {
			out = append(out, k)
		}
	}
	require.Len(t, out, n, "keys of slots %d-%d", a, b)
	return out
}

// Two groups are created on a one-group cluster while writes go on, and
// a rebalance spreads the slots over the three: every acknowledged write
// is still there with its last value, no version went down, each slot
// has one owner, and each key is served once, by that owner.
func TestMoves_ScaleOutUnderWrites(t *testing.T) {
	skipShort(t)
	c := startClusterWith(t, 3, 1)
	l := newMoveLog()
	// Four writers, each on its own 400 keys in turn, so that most keys
	// are written several times (one write in eight a delete); they
	// write for 8 s at least.
	writing := time.Now()
	stop := runWriters(t, 4, 2*time.Millisecond, 2*time.Minute, func(w, i int) {
		node, key := c.Nodes[(w+i)%len(c.Nodes)].URL(), fmt.Sprintf("scale-w%d-%03d", w, i%400)
		if i >= 400 && rand.IntN(8) == 0 {
			l.del(node, key)
			return
		}
		l.put(node, key, fmt.Sprintf("v%d-%d", w, i))
	})
	require.Eventually(t, func() bool { return l.ok.Load() >= 1500 }, 60*time.Second, 20*time.Millisecond,
		"writers had %d writes acknowledged", l.ok.Load())

	start := time.Now()
	var created []uint64
	for range 2 {
		status, body := adminCall(t, c, 1, http.MethodPost, "/v1/admin/groups", api.GroupRequest{})
		require.Contains(t, []int{http.StatusOK, http.StatusAccepted}, status, "create a group: %d %s", status, body)
		var gc api.GroupChange
		require.NoError(t, json.Unmarshal(body, &gc), "%s", body)
		require.NotZero(t, gc.Group, "%s", body)
		t.Logf("create a group: %d %s", status, body)
		created = append(created, gc.Group)
	}
	waitMap(t, c, 30*time.Second, fmt.Sprintf("groups %v have leaders", created), func(cl api.Cluster) error {
		for _, g := range created {
			grp := groupIn(t, cl, g)
			if grp.Leader == "" || len(grp.Members) != 3 {
				return fmt.Errorf("group %d: members %v, leader %q", g, grp.Members, grp.Leader)
			}
			if len(grp.Slots) != 0 {
				return fmt.Errorf("new group %d owns slots %v", g, grp.Slots)
			}
		}
		return nil
	})

	status, body := adminCall(t, c, 2, http.MethodPost, "/v1/admin/rebalance", api.RebalanceRequest{DryRun: false})
	require.Equal(t, http.StatusOK, status, "rebalance: %s", body)
	var plan api.RebalancePlan
	require.NoError(t, json.Unmarshal(body, &plan), "%s", body)
	t.Logf("rebalance: %s", body)
	require.NotEmpty(t, plan.Moves, "a rebalance onto two empty groups moves slots")
	var ids []string
	for _, mv := range plan.Moves {
		require.NotEmpty(t, mv.ID, "a started move has an id: %s", body)
		ids = append(ids, mv.ID)
	}
	moves := waitMovesDone(t, c, 90*time.Second, ids)
	for _, id := range ids {
		mv, _ := kvdproc.FindMove(moves, id)
		require.Equal(t, kvd.MoveDone, mv.State, "move %s (slots %v, %d to %d) with no fault: %s", id, mv.Slots, mv.From, mv.To, mv.Error)
	}
	t.Logf("rebalanced in %v under writes", time.Since(start).Round(100*time.Millisecond))
	// A little more writing on the new owners, then stop.
	before := l.ok.Load()
	require.Eventually(t, func() bool { return l.ok.Load() >= before+200 && time.Since(writing) >= 8*time.Second }, 30*time.Second, 20*time.Millisecond,
		"writes go on after the moves")
	stop()
	t.Logf("writers: %s", l.summary())
	l.requireNoVersionWentDown(t)

	cl := currentMap(t, c)
	requireSlotsOwnedOnce(t, cl)
	require.Len(t, cl.Groups, 3, "map: %+v", cl.Groups)
	for _, g := range cl.Groups {
		require.NotEmpty(t, g.Slots, "group %d owns slots after the rebalance: %+v", g.ID, cl.Groups)
	}
	for i, n := range c.Nodes {
		require.True(t, n.Running(), "node %s is still running:\n%s", n.ID, c.Logs(i, 4000))
	}
	readAllBack(t, c, l)
	checkScans(t, c, l, "scale-")

	// A router with the map from before the moves sends a key that
	// moved to group 1 at the old epoch: 421, and nothing applied.
	var moved string
	for _, k := range l.ackedKeys() {
		if g, _ := cl.GroupOf(kvd.Slot(k)); g != 1 {
			moved = k
			break
		}
	}
	require.NotEmpty(t, moved)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	li, err := c.Leader(ctx, 1)
	require.NoError(t, err)
	r, err := readRouted(c.Nodes[li].URL(), moved, "linearizable", 1, plan.Epoch-1)
	require.NoError(t, err)
	require.Equal(t, http.StatusMisdirectedRequest, r.status, "a routed read of %s (moved away from group 1) at the epoch before the moves: %s", moved, r.body)
	req, _ := http.NewRequest(http.MethodPut, c.Nodes[li].URL()+"/v1/kv/"+moved, strings.NewReader("stale-route"))
	req.Header.Set(api.HeaderGroup, "1")
	req.Header.Set(api.HeaderEpoch, strconv.FormatUint(plan.Epoch-1, 10))
	resp, err := hc.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode, "a routed write of %s to group 1 at the old epoch: %s", moved, b)
	require.Contains(t, string(b), api.CodeWrongGroup)
	got, err := readVersioned(c.Nodes[0].URL(), moved)
	require.NoError(t, err)
	val := got.body
	if got.status == http.StatusNotFound {
		val = absent // deleted last
	}
	require.NoError(t, l.allowed(moved, val, got.version), "the misrouted write applied nothing")
}

// movePhases are the phases of a move with the failpoint that holds the
// move's driver in each.
var movePhases = map[string]string{
	kvd.MoveCopying:    failpoint.MoveCopying,
	kvd.MoveCatchingUp: failpoint.MoveCatchingUp,
	kvd.MoveHandingOff: failpoint.MoveHandingOff,
}

// In each phase of a move (copying, catching up, handing off) the
// leader of the source group, then of the target group, is killed
// (SIGKILL) and restarted while a writer keeps writing keys of the moving
// slots: each move ends, done or failed, within a bound, the slots go
// with it (to the target if done, back to the source if failed), each
// slot has one owner, and no acknowledged write is lost or goes back to
// an older version.
//
// The driver of every move runs on group 1's leader. Each phase is run
// once with the victim also hosting the driver and once without: copying
// moves from group 1 to 2 (the source's leader dies with the driver,
// then the target's dies alone); catching up and handing off move from
// group 2 to 1 (the source's leader dies alone, then the target's dies
// with the driver). Leadership moves with the kills, so the log says
// which node died, which groups it led and whether it drove the move.
func TestMoves_KillLeadersInEachPhase(t *testing.T) {
	skipShort(t)
	c := startMovesCluster(t, kvdFailpointsBinary(t), 3, 2)
	cases := []struct {
		phase    string
		victim   string // "source" or "target": whose leader dies
		from, to uint64
		slots    [2]int
	}{
		{kvd.MoveCopying, "source", 1, 2, [2]int{0, 31}},
		{kvd.MoveCopying, "target", 1, 2, [2]int{64, 95}},
		{kvd.MoveCatchingUp, "source", 2, 1, [2]int{512, 543}},
		{kvd.MoveCatchingUp, "target", 2, 1, [2]int{576, 607}},
		{kvd.MoveHandingOff, "source", 2, 1, [2]int{640, 671}},
		{kvd.MoveHandingOff, "target", 2, 1, [2]int{704, 735}},
	}
	cl := currentMap(t, c)
	for _, tc := range cases {
		for _, s := range []int{tc.slots[0], tc.slots[1]} {
			owner, _ := cl.GroupOf(s)
			require.Equal(t, tc.from, owner, "slot %d starts in group %d", s, tc.from)
		}
	}

	// A few thousand small keys everywhere.
	l := newMoveLog()
	const loaded = 3000
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < loaded; i = int(next.Add(1)) - 1 {
				for try := 0; try < 20 && !l.put(c.Nodes[(w+i+try)%3].URL(), fmt.Sprintf("load-%05d", i), fmt.Sprintf("l%d", i)); try++ {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	require.Len(t, l.ackedKeys(), loaded, "the load is acknowledged: %s", l.summary())

	// Two writers on keys of every moving range, all along (one write in
	// six a delete); each key has one writer, so that its acknowledged
	// versions must grow in the order they were acknowledged.
	var hot [2][]string
	for i, tc := range cases {
		for j, k := range keysInSlots(t, fmt.Sprintf("load-hot%d", i), tc.slots[0], tc.slots[1], 6) {
			hot[j%2] = append(hot[j%2], k)
		}
	}
	stop := runWriters(t, 2, 10*time.Millisecond, 5*time.Minute, func(w, i int) {
		rng := rand.New(rand.NewPCG(uint64(w), uint64(i)))
		node, key := c.Nodes[rng.IntN(3)].URL(), hot[w][rng.IntN(len(hot[w]))]
		if rng.IntN(6) == 0 {
			l.del(node, key)
			return
		}
		l.put(node, key, fmt.Sprintf("h%d-%d", w, i))
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	outcomes := map[string]int{}
	for i, tc := range cases {
		name := fmt.Sprintf("%s/%s-leader", tc.phase, tc.victim)
		caseStart := time.Now()
		fp := movePhases[tc.phase]
		require.NoError(t, c.SetFailpointEverywhere(ctx, fp, "pause=3s"), name)
		ms := startMoveRetrying(t, c, api.MoveRequest{Slots: [][2]int{tc.slots}, To: tc.to, ID: fmt.Sprintf("kill-%d", i)})
		require.Equal(t, []string{ms.ID}, ms.IDs, "%s: one source group, one move", name)

		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		seen, err := c.WaitMoves(wctx, func(l api.MoveList) error {
			mv, ok := kvdproc.FindMove(l, ms.ID)
			switch {
			case !ok:
				return fmt.Errorf("move %s is not listed", ms.ID)
			case mv.State == tc.phase:
				return nil
			case kvdproc.MoveFinished(mv.State):
				return fmt.Errorf("move %s ended %s (%s) before it was seen %s", ms.ID, mv.State, mv.Error, tc.phase)
			}
			return fmt.Errorf("move %s is %s", ms.ID, mv.State)
		})
		wcancel()
		require.NoError(t, err, "%s: the move reaches %s (held there by %s): %+v", name, tc.phase, fp, seen)

		// Handing off, the source's leader refuses a routed write of the
		// slots (once its log has fenced them): 503 unavailable, nothing
		// applied. (A request no router placed waits for the hand-off,
		// up to a bound, and is placed again.)
		fenceKey, fenced := "", ""
		if tc.phase == kvd.MoveHandingOff {
			fenceKey = keysInSlots(t, fmt.Sprintf("load-fence%d", i), tc.slots[0], tc.slots[1], 1)[0]
			var last putAnswer
			for n := 0; n < 100 && fenced == ""; n++ {
				lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
				li, err := c.Leader(lctx, tc.from)
				lcancel()
				require.NoError(t, err, name)
				cl, err := c.ClusterMap(li)
				if err == nil {
					val := fmt.Sprintf("fence-%d", n)
					last = l.write(c.Nodes[li].URL(), fenceKey, val,
						api.HeaderGroup, strconv.FormatUint(tc.from, 10), api.HeaderEpoch, strconv.FormatUint(cl.Epoch, 10))
					if last.status == http.StatusServiceUnavailable && (last.leader == "" || last.leader == c.Nodes[li].ID) {
						fenced = val
						break
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			require.NotEmpty(t, fenced, "%s: a routed write of %s (slot %d) to group %d's leader while the move hands off: last answered %+v", name, fenceKey, kvd.Slot(fenceKey), tc.from, last)
			require.Equal(t, api.CodeUnavailable, last.code, "%s: %+v", name, last)
			require.NotEmpty(t, last.retryAfter, "%s: a 503 says when to retry", name)
			t.Logf("%s: a routed write of %s while handing off: 503 %s (%s), Retry-After %s", name, fenceKey, last.code, last.message, last.retryAfter)
		}

		g := tc.from
		if tc.victim == "target" {
			g = tc.to
		}
		lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := c.Leader(lctx, g)
		lcancel()
		require.NoError(t, err, name)
		now := currentMap(t, c)
		var led []uint64
		for _, grp := range now.Groups {
			if grp.Leader == c.Nodes[v].ID {
				led = append(led, grp.ID)
			}
		}
		require.NoError(t, c.Kill(v), name)
		t.Logf("%s: move %s (slots %v, group %d to %d) is %s: SIGKILL %s, which leads groups %v (driver there: %v)",
			name, ms.ID, tc.slots, tc.from, tc.to, tc.phase, c.Nodes[v].ID, led, slices.Contains(led, 1))
		time.Sleep(time.Second) // the others notice
		require.NoError(t, c.Start(v), name)
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		require.NoError(t, c.WaitReady(rctx, v), "%s: %s restarts", name, c.Nodes[v].ID)
		rcancel()
		require.NoError(t, c.SetFailpointEverywhere(ctx, fp, ""), name)

		moves := waitMovesDone(t, c, 90*time.Second, []string{ms.ID})
		mv, _ := kvdproc.FindMove(moves, ms.ID)
		outcomes[mv.State]++
		t.Logf("%s: move %s ended %s at attempt %d %s(%v in all)", name, ms.ID, mv.State, mv.Attempt,
			map[bool]string{true: "(" + mv.Error + ") ", false: ""}[mv.Error != ""], time.Since(caseStart).Round(100*time.Millisecond))
		after := currentMap(t, c)
		requireSlotsOwnedOnce(t, after)
		want := tc.to
		if mv.State == kvd.MoveFailed {
			want = tc.from
		}
		for s := tc.slots[0]; s <= tc.slots[1]; s++ {
			owner, _ := after.GroupOf(s)
			require.Equal(t, want, owner, "%s: the move ended %s: slot %d belongs to group %d", name, mv.State, s, want)
		}
		if fenceKey != "" {
			r, err := readVersioned(c.Nodes[0].URL(), fenceKey)
			require.NoError(t, err)
			require.NotEqual(t, fenced, r.body, "%s: the write refused with 503 while handing off was applied", name)
		}
	}
	stop()
	t.Logf("moves: %v; writers: %s", outcomes, l.summary())
	l.requireNoVersionWentDown(t)
	require.NoError(t, c.WaitAllReady(ctx))
	readAllBack(t, c, l)
	checkScans(t, c, l, "load-")
}

// Calls of the moves API that cannot be carried out are refused with the
// right 4xx and a JSON error, and leave the map's epoch as it was: a move
// to an unknown group, slots that are missing, out of range or reversed,
// an unknown field, slots already moving or already the target's, a
// rebalance while a move is under way, and the removal of a group that
// owns slots, takes part in a move, is the lowest-numbered one, or does
// not exist.
func TestMoves_BadInput(t *testing.T) {
	skipShort(t)
	c := startMovesCluster(t, kvdFailpointsBinary(t), 3, 2)
	epoch := func() uint64 { return currentMap(t, c).Epoch }
	// While a move runs, its steps change the map: the epoch is checked
	// only when no move runs.
	movesRun := false
	refused := func(what string, i int, method, path string, body any, wantStatus int, wantCode string) {
		t.Helper()
		before := epoch()
		status, b := adminCall(t, c, i, method, path, body)
		requireRefused(t, what, status, b, wantStatus, wantCode)
		if !movesRun {
			require.Equal(t, before, epoch(), "%s changed the map:\n%s", what, mapJSON(c))
		}
	}
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }

	refused("move to an unknown group", 0, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{0, 9}}, To: 9}, http.StatusNotFound, api.CodeNotFound)
	refused("move no slots", 1, http.MethodPost, "/v1/admin/moves", raw(`{"slots":[],"to":2}`), http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move without slots", 2, http.MethodPost, "/v1/admin/moves", raw(`{"to":2}`), http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move slots past 1023", 0, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{1000, 1024}}, To: 1}, http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move a negative slot", 1, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{-1, 5}}, To: 2}, http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move a range of one number", 1, http.MethodPost, "/v1/admin/moves", raw(`{"slots":[[5]],"to":2}`), http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move a reversed range", 2, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{20, 10}}, To: 2}, http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move with an unknown field", 0, http.MethodPost, "/v1/admin/moves", raw(`{"slots":[[0,9]],"to":2,"force":true}`), http.StatusBadRequest, api.CodeInvalidRequest)
	refused("move slots the target owns", 2, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{600, 610}}, To: 2}, http.StatusConflict, api.CodeConflict)
	refused("delete a group that owns slots", 0, http.MethodDelete, "/v1/admin/groups/2", nil, http.StatusConflict, api.CodeConflict)
	refused("delete group 1", 1, http.MethodDelete, "/v1/admin/groups/1", nil, http.StatusConflict, api.CodeConflict)
	refused("delete an unknown group", 2, http.MethodDelete, "/v1/admin/groups/42", nil, http.StatusNotFound, api.CodeNotFound)

	// A third group, then a move to it held in its copy.
	status, body := adminCall(t, c, 0, http.MethodPost, "/v1/admin/groups", api.GroupRequest{Members: []string{"n3", "n1", "n2"}})
	require.Contains(t, []int{http.StatusOK, http.StatusAccepted}, status, "create a group: %s", body)
	var gc api.GroupChange
	require.NoError(t, json.Unmarshal(body, &gc), "%s", body)
	g3 := gc.Group
	require.Equal(t, uint64(3), g3, "%s", body)
	waitMap(t, c, 30*time.Second, "group 3 has a leader", func(cl api.Cluster) error {
		if grp := groupIn(t, cl, g3); grp.Leader == "" {
			return fmt.Errorf("group 3: members %v, no leader", grp.Members)
		}
		return nil
	})
	for i := range 200 { // something to copy
		_, st, err := put(c.Nodes[i%3].URL(), fmt.Sprintf("bad-%03d", i), "x")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, c.SetFailpointEverywhere(ctx, failpoint.MoveCopying, "pause=8s"))
	movesRun = true
	status, body = adminCall(t, c, 1, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{0, 15}, {500, 520}}, To: g3, ID: "held"})
	require.Equal(t, http.StatusAccepted, status, "%s", body)
	var ms api.MoveStarted
	require.NoError(t, json.Unmarshal(body, &ms), "%s", body)
	t.Logf("a move from two groups: %s", body)
	require.ElementsMatch(t, []string{"held.1", "held.2"}, ms.IDs, "one move per source group")
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := c.WaitMoves(wctx, func(l api.MoveList) error {
		for _, id := range ms.IDs {
			if mv, ok := kvdproc.FindMove(l, id); !ok || (mv.State != kvd.MoveCopying && mv.State != kvd.MovePending) {
				return fmt.Errorf("move %s: %+v", id, mv)
			}
		}
		return nil
	})
	wcancel()
	require.NoError(t, err, "the moves are held in their copy (or wait for it)")

	refused("move slots already moving", 2, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{10, 30}}, To: 2}, http.StatusConflict, api.CodeConflict)
	refused("move a slot already moving, alone", 0, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{520, 520}}, To: 1}, http.StatusConflict, api.CodeConflict)
	refused("rebalance while moves are under way", 1, http.MethodPost, "/v1/admin/rebalance", api.RebalanceRequest{DryRun: false}, http.StatusConflict, api.CodeConflict)
	refused("delete the target of a move", 2, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d", g3), nil, http.StatusConflict, api.CodeConflict)
	// The same request again (same id) starts nothing twice.
	status, body = adminCall(t, c, 0, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{0, 15}, {500, 520}}, To: g3, ID: "held"})
	require.Equal(t, http.StatusAccepted, status, "a retry of a recorded move: %s", body)
	require.NoError(t, json.Unmarshal(body, &ms), "%s", body)
	require.ElementsMatch(t, []string{"held.1", "held.2"}, ms.IDs, "a retry names the same moves: %s", body)
	list, err := c.Moves(ctx, 1)
	require.NoError(t, err)
	require.Len(t, list.Moves, 2, "a retry records no move: %+v", list.Moves)

	require.NoError(t, c.SetFailpointEverywhere(ctx, failpoint.MoveCopying, ""))
	moves := waitMovesDone(t, c, 60*time.Second, ms.IDs)
	for _, id := range ms.IDs {
		mv, _ := kvdproc.FindMove(moves, id)
		require.Equal(t, kvd.MoveDone, mv.State, "move %s: %s", id, mv.Error)
	}
	movesRun = false
	cl := currentMap(t, c)
	requireSlotsOwnedOnce(t, cl)
	require.Equal(t, [][2]int{{0, 15}, {500, 520}}, groupIn(t, cl, g3).Slots)
	refused("delete a group that was given slots", 0, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d", g3), nil, http.StatusConflict, api.CodeConflict)

	// Group 1 gives every slot away: still not removable (the lowest
	// group holds the cluster map); group 3, emptied, is.
	status, body = adminCall(t, c, 1, http.MethodPost, "/v1/admin/moves", api.MoveRequest{Slots: [][2]int{{0, 1023}}, To: 2})
	require.Equal(t, http.StatusAccepted, status, "%s", body)
	require.NoError(t, json.Unmarshal(body, &ms), "%s", body)
	require.Len(t, ms.IDs, 2, "from groups 1 and 3: %s", body)
	waitMovesDone(t, c, 60*time.Second, ms.IDs)
	cl = currentMap(t, c)
	requireSlotsOwnedOnce(t, cl)
	require.Empty(t, groupIn(t, cl, 1).Slots)
	require.Empty(t, groupIn(t, cl, g3).Slots)
	refused("delete group 1, owning no slot", 2, http.MethodDelete, "/v1/admin/groups/1", nil, http.StatusConflict, api.CodeConflict)
	status, body = adminCall(t, c, 0, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d", g3), nil)
	require.Equal(t, http.StatusOK, status, "delete the emptied group 3: %s", body)
	waitMap(t, c, 10*time.Second, "group 3 is gone", func(cl api.Cluster) error {
		for _, g := range cl.Groups {
			if g.ID == g3 {
				return fmt.Errorf("group %d is still in the map", g3)
			}
		}
		return nil
	})
	refused("delete a deleted group", 1, http.MethodDelete, fmt.Sprintf("/v1/admin/groups/%d", g3), nil, http.StatusNotFound, api.CodeNotFound)
	for i := range 200 {
		v, _, st, err := get(c.Nodes[i%3].URL(), fmt.Sprintf("bad-%03d", i), "linearizable")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, st, "bad-%03d after three moves", i)
		require.Equal(t, "x", v)
	}

	// A range of three numbers is not a range: it must be refused, not
	// read as its first two.
	refused("move a range that is not a pair", 1, http.MethodPost, "/v1/admin/moves", raw(`{"slots":[[0,9,12]],"to":1}`), http.StatusBadRequest, api.CodeInvalidRequest)
}
