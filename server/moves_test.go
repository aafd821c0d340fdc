package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

// startMove asks node i to move slots to group to and returns the ids.
func startMove(t *testing.T, c *testcluster.Cluster, i int, slots [][2]int, to kvd.GroupID) []string {
	t.Helper()
	body, _ := json.Marshal(api.MoveRequest{Slots: slots, To: uint64(to)})
	r := testcluster.Do(t, "POST", c.URL(i)+"/v1/admin/moves", body)
	require.Equal(t, 202, r.Status, "%s", r.Body)
	var ms api.MoveStarted
	require.NoError(t, json.Unmarshal(r.Body, &ms))
	return ms.IDs
}

// waitMoves waits until the moves ids are finished and returns them.
func waitMoves(t *testing.T, c *testcluster.Cluster, ids ...string) map[string]api.MoveInfo {
	t.Helper()
	out := map[string]api.MoveInfo{}
	require.Eventually(t, func() bool {
		r := testcluster.Do(t, "GET", c.URL(0)+"/v1/admin/moves", nil)
		if r.Status != 200 {
			return false
		}
		var ml api.MoveList
		require.NoError(t, json.Unmarshal(r.Body, &ml))
		for _, id := range ids {
			found := false
			for _, mi := range ml.Moves {
				if mi.ID == id {
					found = true
					out[id] = mi
					if mi.State != kvd.MoveDone && mi.State != kvd.MoveFailed {
						return false
					}
				}
			}
			if !found {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond)
	return out
}

// slotOf returns the single-slot range of key.
func slotOf(key string) [][2]int { s := kvd.Slot(key); return [][2]int{{s, s}} }

func etag(t *testing.T, h map[string][]string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.Trim(h["Etag"][0], `"`), 10, 64)
	require.NoError(t, err)
	return v
}

func TestMoves_CarryValuesVersionsTTLsAndIdempotencyRecords(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	m := c.Node(0).Map()
	keys := testcluster.KeysInGroups(m, "mv-", 20)[1]
	versions := map[string]uint64{}
	var slots [][2]int
	for i, k := range keys {
		r := testcluster.Do(t, "PUT", c.URL(i%3)+"/v1/kv/"+k, []byte("v-"+k))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		versions[k] = etag(t, r.Header)
		slots = append(slots, slotOf(k)...)
	}
	ttlKey := keys[0]
	r := testcluster.Do(t, "PUT", c.URL(0)+"/v1/kv/"+ttlKey+"?ttl=3s", []byte("short-lived"))
	require.Equal(t, 200, r.Status)
	ttlSet := time.Now()
	idemKey := keys[1]
	first := testcluster.Do(t, "PUT", c.URL(0)+"/v1/kv/"+idemKey, []byte("once"), "Idempotency-Key", "token-1")
	require.Equal(t, 200, first.Status)
	versions[idemKey] = etag(t, first.Header)

	ids := startMove(t, c, 1, slots, 2)
	for id, mi := range waitMoves(t, c, ids...) {
		require.Equal(t, kvd.MoveDone, mi.State, "move %s: %s", id, mi.Error)
	}
	m = c.Node(0).Map()
	for _, k := range keys {
		g, _ := m.GroupOf(kvd.Slot(k))
		require.Equal(t, kvd.GroupID(2), g, "%s's slot is group 2's now", k)
	}
	for i, k := range keys[2:] {
		r := testcluster.Do(t, "GET", c.URL(i%3)+"/v1/kv/"+k, nil)
		require.Equal(t, 200, r.Status, "%s: %s", k, r.Body)
		require.Equal(t, "v-"+k, string(r.Body))
		require.Equal(t, versions[k], etag(t, r.Header), "%s keeps its version across the move", k)
		// A new write's version is above every version the key had.
		w := testcluster.Do(t, "PUT", c.URL(i%3)+"/v1/kv/"+k, []byte("after"))
		require.Equal(t, 200, w.Status, "%s", w.Body)
		require.Greater(t, etag(t, w.Header), versions[k], "%s's version went back after the move", k)
	}
	// The retry of an idempotent write made before the move returns its
	// first outcome and applies nothing; a different request under the
	// same token is refused.
	again := testcluster.Do(t, "PUT", c.URL(2)+"/v1/kv/"+idemKey, []byte("once"), "Idempotency-Key", "token-1")
	require.Equal(t, 200, again.Status, "%s", again.Body)
	require.Equal(t, versions[idemKey], etag(t, again.Header))
	got := testcluster.Do(t, "GET", c.URL(0)+"/v1/kv/"+idemKey, nil)
	require.Equal(t, versions[idemKey], etag(t, got.Header), "the retry applied nothing")
	other := testcluster.Do(t, "PUT", c.URL(2)+"/v1/kv/"+idemKey, []byte("different"), "Idempotency-Key", "token-1")
	require.Equal(t, 422, other.Status, "%s", other.Body)
	// The TTL still runs out on time, in the new group.
	require.Eventually(t, func() bool {
		return testcluster.Do(t, "GET", c.URL(1)+"/v1/kv/"+ttlKey, nil).Status == 404
	}, 10*time.Second, 50*time.Millisecond)
	require.Less(t, time.Since(ttlSet), 8*time.Second, "the key expired late")
	// The source drops its leftovers; the target holds the keys.
	for n := range 3 {
		src, _ := c.Node(n).Group(1)
		dst, _ := c.Node(n).Group(2)
		require.Eventually(t, func() bool {
			keys, err := src.Store().StrayKeys(10)
			return err == nil && len(keys) == 0
		}, 10*time.Second, 50*time.Millisecond, "node %d's replica of group 1 keeps moved keys", n)
		_, err := dst.Store().Get(keys[5])
		require.NoError(t, err)
	}
	// A routed request with the map from before the move is refused, so
	// the router refreshes.
	old := testcluster.Do(t, "GET", c.URL(0)+"/v1/kv/"+keys[3], nil, api.HeaderGroup, "1", api.HeaderEpoch, "1")
	require.Equal(t, 421, old.Status, "%s", old.Body)
}

func TestMoves_TransfersAcrossAMovingSlotStayAtomic(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	m := c.Node(0).Map()
	a := testcluster.KeysInGroups(m, "acct-a-", 1)[1][0]
	b := testcluster.KeysInGroups(m, "acct-b-", 1)[2][0]
	body := []byte(fmt.Sprintf(`{"ops":[{"op":"add","key":%q,"delta":-1},{"op":"add","key":%q,"delta":1}]}`, a, b))
	var committed, unknown atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 2000; i++ {
				r := testcluster.Do(t, "POST", c.URL((w+i)%3)+"/v1/txn", body)
				switch r.Status {
				case 200:
					committed.Add(1)
				case 504, 500:
					unknown.Add(1)
				case 409, 503, 421:
				default:
					t.Errorf("transfer: %d %s", r.Status, r.Body)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	// Move a's slot to group 3 and back to group 1, under the transfers.
	for _, to := range []kvd.GroupID{3, 1} {
		ids := startMove(t, c, 0, slotOf(a), to)
		for _, mi := range waitMoves(t, c, ids...) {
			require.Equal(t, kvd.MoveDone, mi.State, mi.Error)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	read := func(k string) int64 {
		r := testcluster.Do(t, "GET", c.URL(0)+"/v1/kv/"+k, nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		n, err := strconv.ParseInt(string(r.Body), 10, 64)
		require.NoError(t, err)
		return n
	}
	va, vb := read(a), read(b)
	require.Equal(t, int64(0), va+vb, "money was created or lost: a=%d b=%d", va, vb)
	require.GreaterOrEqual(t, vb, committed.Load())
	require.LessOrEqual(t, vb, committed.Load()+unknown.Load())
	require.Positive(t, committed.Load())
	t.Logf("%d transfers committed, %d unknown, across two moves", committed.Load(), unknown.Load())
}

func TestMoves_AWatchMissesNothingAndKeepsEachKeysOrder(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := c.Node(1).KV().Watch(ctx, "w/", "")
	require.NoError(t, err)
	defer w.Close()
	// A group created after the watch started takes half the slots while
	// a writer changes keys of every slot.
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/groups", []byte(`{}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	type put struct {
		key string
		ver uint64
	}
	var acked []put
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 400; i++ {
			k := fmt.Sprintf("w/%d", i%40)
			r := testcluster.Do(t, "PUT", c.URL(i%3)+"/v1/kv/"+k, []byte(strconv.Itoa(i)))
			if r.Status == 200 {
				acked = append(acked, put{k, etag(t, r.Header)})
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	ids := startMove(t, c, 2, [][2]int{{512, 1023}}, 2)
	for _, mi := range waitMoves(t, c, ids...) {
		require.Equal(t, kvd.MoveDone, mi.State, mi.Error)
	}
	<-done
	require.NotEmpty(t, acked)
	last := map[string]uint64{}
	seen := map[put]bool{}
	for len(seen) < len(acked) {
		ev, err := w.Next(ctx)
		require.NoError(t, err, "the watch saw %d of %d acknowledged writes", len(seen), len(acked))
		if ev.Type == "" {
			continue
		}
		require.Greater(t, ev.Version, last[ev.Key], "%s's events out of order: %d after %d", ev.Key, ev.Version, last[ev.Key])
		last[ev.Key] = ev.Version
		seen[put{ev.Key, ev.Version}] = true
	}
	for _, p := range acked {
		require.True(t, seen[p], "the watch missed %s at version %d", p.key, p.ver)
	}
}

func TestMoves_GroupsAreCreatedAndRemoved(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	st := testcluster.Do(t, "GET", c.URL(2)+"/v1/status", nil)
	var status api.Status
	require.NoError(t, json.Unmarshal(st.Body, &status))
	require.Contains(t, status.Features, api.FeatureSlotMoves, "a node says it takes part in slot moves")
	r := testcluster.Do(t, "POST", c.URL(1)+"/v1/admin/groups", []byte(`{"members":["n3","n1","n2"]}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var gc api.GroupChange
	require.NoError(t, json.Unmarshal(r.Body, &gc))
	require.Equal(t, uint64(2), gc.Group)
	require.NotEmpty(t, gc.Leader)
	for n := range 3 {
		require.Eventually(t, func() bool { _, ok := c.Node(n).Group(2); return ok }, 10*time.Second, 20*time.Millisecond)
	}
	// Owning slots, it cannot be removed; nor can the group that holds
	// the map.
	ids := startMove(t, c, 0, [][2]int{{0, 9}}, 2)
	waitMoves(t, c, ids...)
	r = testcluster.Do(t, "DELETE", c.URL(0)+"/v1/admin/groups/2", nil)
	require.Equal(t, 409, r.Status, "%s", r.Body)
	r = testcluster.Do(t, "DELETE", c.URL(0)+"/v1/admin/groups/1", nil)
	require.Equal(t, 409, r.Status, "%s", r.Body)
	ids = startMove(t, c, 0, [][2]int{{0, 9}}, 1)
	waitMoves(t, c, ids...)
	r = testcluster.Do(t, "DELETE", c.URL(2)+"/v1/admin/groups/2", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	for n := range 3 {
		require.Eventually(t, func() bool { _, ok := c.Node(n).Group(2); return !ok }, 15*time.Second, 50*time.Millisecond, "node %d keeps the removed group's replica", n)
	}
	r = testcluster.Do(t, "DELETE", c.URL(2)+"/v1/admin/groups/2", nil)
	require.Equal(t, 404, r.Status, "%s", r.Body)
	// A new group never takes a removed one's id.
	r = testcluster.Do(t, "POST", c.URL(1)+"/v1/admin/groups", []byte(`{}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.NoError(t, json.Unmarshal(r.Body, &gc))
	require.Equal(t, uint64(3), gc.Group)
}

func TestMoves_BadRequestsAreRefused(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	for _, tc := range []struct {
		name, path, body string
		status           int
	}{
		{"unknown group", "/v1/admin/moves", `{"slots":[[0,1]],"to":9}`, 404},
		{"no slots", "/v1/admin/moves", `{"slots":[],"to":2}`, 400},
		{"slot past the end", "/v1/admin/moves", `{"slots":[[1000,1024]],"to":2}`, 400},
		{"negative slot", "/v1/admin/moves", `{"slots":[[-1,3]],"to":2}`, 400},
		{"reversed range", "/v1/admin/moves", `{"slots":[[9,3]],"to":2}`, 400},
		{"unknown field", "/v1/admin/moves", `{"slots":[[0,1]],"to":2,"from":1}`, 400},
		{"not JSON", "/v1/admin/moves", `slots`, 400},
		{"already the target's", "/v1/admin/moves", `{"slots":[[1000,1001]],"to":2}`, 409},
		{"group with unknown node", "/v1/admin/groups", `{"members":["n9"]}`, 404},
		{"group with a node twice", "/v1/admin/groups", `{"members":["n1","n1"]}`, 400},
		{"a move id with a dot", "/v1/admin/moves", `{"slots":[[0,1]],"to":2,"id":"a.2"}`, 400},
		{"a slot range of three", "/v1/admin/moves", `{"slots":[[0,9,12]],"to":2}`, 400},
	} {
		r := testcluster.Do(t, "POST", c.URL(0)+tc.path, []byte(tc.body))
		require.Equal(t, tc.status, r.Status, "%s: %s", tc.name, r.Body)
		require.NotEmpty(t, r.ErrCode(t), tc.name)
	}
	// A move id names one request: its repeat is answered as the first
	// time; another request under it is refused.
	first := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/moves", []byte(`{"slots":[[0,3]],"to":2,"id":"once"}`))
	require.Equal(t, 202, first.Status, "%s", first.Body)
	again := testcluster.Do(t, "POST", c.URL(1)+"/v1/admin/moves", []byte(`{"slots":[[0,3]],"to":2,"id":"once"}`))
	require.Equal(t, 202, again.Status, "%s", again.Body)
	var ms1, ms2 api.MoveStarted
	require.NoError(t, json.Unmarshal(first.Body, &ms1))
	require.NoError(t, json.Unmarshal(again.Body, &ms2))
	require.Equal(t, ms1.IDs, ms2.IDs)
	other := testcluster.Do(t, "POST", c.URL(2)+"/v1/admin/moves", []byte(`{"slots":[[400,410]],"to":2,"id":"once"}`))
	require.Equal(t, 409, other.Status, "%s", other.Body)
	waitMoves(t, c, "once")
	again = testcluster.Do(t, "POST", c.URL(1)+"/v1/admin/moves", []byte(`{"slots":[[0,3]],"to":2,"id":"once"}`))
	require.Equal(t, 202, again.Status, "a repeat after the move is done: %s", again.Body)
}

// A plain HTTP client sends no routing: its writes and reads of a moving
// slot wait out the hand-off on the node instead of failing.
func TestMoves_UnroutedRequestsWaitOutTheHandOff(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	keys := testcluster.KeysInGroups(c.Node(0).Map(), "u-", 8)[1]
	var slots [][2]int
	for _, k := range keys {
		slots = append(slots, slotOf(k)...)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[(w+i)%len(keys)]
				r := testcluster.Do(t, "PUT", c.URL(w)+"/v1/kv/"+k, []byte(strconv.Itoa(i)))
				if r.Status != 200 {
					t.Errorf("put %s during a move: %d %s", k, r.Status, r.Body)
					return
				}
				if g := testcluster.Do(t, "GET", c.URL((w+1)%3)+"/v1/kv/"+k, nil); g.Status != 200 {
					t.Errorf("get %s during a move: %d %s", k, g.Status, g.Body)
					return
				}
				ok.Add(1)
			}
		}()
	}
	for _, to := range []kvd.GroupID{2, 1, 2} {
		ids := startMove(t, c, 0, slots, to)
		for _, mi := range waitMoves(t, c, ids...) {
			require.Equal(t, kvd.MoveDone, mi.State, mi.Error)
		}
	}
	close(stop)
	wg.Wait()
	require.Positive(t, ok.Load())
}

// prepareOrphan locks key in group g for a transaction whose coordinator
// is gone: prepared, with its record pending until deadline.
func prepareOrphan(t *testing.T, c *testcluster.Cluster, g kvd.GroupID, id, key string, deadline time.Time) {
	t.Helper()
	p := store.TxnPrepare{ID: id, RecordGroup: g, Deadline: deadline.UnixNano(), Participants: []kvd.GroupID{g},
		Ops: []store.TxnOp{{Index: 0, Op: "put", Key: key, Value: []byte("never")}}}
	b, err := json.Marshal(p)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Node(0).Propose(ctx, g, store.Cmd{Kind: store.CmdTxnPrepare, Data: b})
	require.NoError(t, err)
	require.NoError(t, res.Err)
	require.True(t, res.Txn.Vote, "prepared: %+v", res.Txn)
}

// The hand-off waits for the transactions that hold locks in the moving
// slots; one that would hold them past the wait fails the move, which
// leaves the slots where they were.
func TestMoves_HandOffWaitsForLocksOrRollsBack(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	keys := testcluster.KeysInGroups(c.Node(0).Map(), "lk-", 2)[1]
	// An abandoned transaction whose deadline comes soon: the janitor
	// aborts it, and the move goes on.
	prepareOrphan(t, c, 1, "orphan-soon", keys[0], time.Now().Add(2*time.Second))
	start := time.Now()
	ids := startMove(t, c, 0, slotOf(keys[0]), 2)
	mi := waitMoves(t, c, ids...)[ids[0]]
	require.Equal(t, kvd.MoveDone, mi.State, mi.Error)
	require.Greater(t, time.Since(start), time.Second, "the move did not wait for the lock")
	r := testcluster.Do(t, "GET", c.URL(1)+"/v1/kv/"+keys[0], nil)
	require.Equal(t, 404, r.Status, "the abandoned transaction's write must not appear: %s", r.Body)

	// One whose deadline is far: the move fails at once, and the key's
	// slot stays with group 1, which still serves it.
	prepareOrphan(t, c, 1, "orphan-late", keys[1], time.Now().Add(5*time.Minute))
	ids = startMove(t, c, 0, slotOf(keys[1]), 2)
	mi = waitMoves(t, c, ids...)[ids[0]]
	require.Equal(t, kvd.MoveFailed, mi.State)
	require.Contains(t, mi.Error, "orphan-late")
	g, _ := c.Node(0).Map().GroupOf(kvd.Slot(keys[1]))
	require.Equal(t, kvd.GroupID(1), g)
	require.Equal(t, 200, testcluster.Do(t, "PUT", c.URL(2)+"/v1/kv/"+keys[1]+"x", []byte("ok")).Status)
	// Once the transaction is aborted, the move goes through.
	r = testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/txns/orphan-late/abort", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	ids = startMove(t, c, 0, slotOf(keys[1]), 2)
	mi = waitMoves(t, c, ids...)[ids[0]]
	require.Equal(t, kvd.MoveDone, mi.State, mi.Error)
}

// A group that keeps a transaction's record is not removed while the
// record is there, though it owns no slot: the transaction's locks in
// other groups name it.
func TestMoves_AGroupKeepingATransactionRecordStays(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/groups", []byte(`{}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	waitMoves(t, c, startMove(t, c, 0, [][2]int{{0, 511}}, 2)...)
	key := testcluster.KeysInGroups(c.Node(0).Map(), "rec-", 1)[2][0]
	prepareOrphan(t, c, 2, "kept", key, time.Now().Add(5*time.Minute))
	r = testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/txns/kept/abort", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	mi := waitMoves(t, c, startMove(t, c, 0, [][2]int{{0, 511}}, 1)...)
	for _, m := range mi {
		require.Equal(t, kvd.MoveDone, m.State, m.Error)
	}
	r = testcluster.Do(t, "GET", c.URL(0)+"/v1/admin/txns", nil)
	require.Equal(t, 200, r.Status)
	require.Contains(t, string(r.Body), "kept", "the aborted transaction's record is kept until its deadline")
	r = testcluster.Do(t, "DELETE", c.URL(1)+"/v1/admin/groups/2", nil)
	require.Equal(t, 409, r.Status, "%s", r.Body)
	require.Contains(t, string(r.Body), "transaction records")
}

// nextPut reads the watch's next put event, skipping progress marks.
func nextPut(t *testing.T, ctx context.Context, w kvd.Watcher) kvd.Event {
	t.Helper()
	for {
		ev, err := w.Next(ctx)
		require.NoError(t, err)
		if ev.Type != "" {
			return ev
		}
	}
}

// putVersion writes key through node i and returns its version.
func putVersion(t *testing.T, c *testcluster.Cluster, i int, key, val string) uint64 {
	t.Helper()
	r := testcluster.Do(t, "PUT", c.URL(i)+"/v1/kv/"+key, []byte(val))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	return etag(t, r.Header)
}

// A watch of keys that all live in one slot gets the changes made after
// the slot moved, though the source has no change to send meanwhile;
// a cursor from before the slot moved away and back resumes with every
// change, in order; and a watch served by a node without a replica of the
// target reports the versions the writes got.
func TestMoves_WatchesAcrossMovesOfOneSlot(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	for i := range 100 { // group 1's versions run well ahead of a new group's log
		putVersion(t, c, i%3, fmt.Sprintf("warm/%d", i), "x")
	}
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/groups", []byte(`{"members":["n1"]}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var gc api.GroupChange
	require.NoError(t, json.Unmarshal(r.Body, &gc))
	to := kvd.GroupID(gc.Group)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const prefix = "{tag8}/"
	live, err := c.Node(2).KV().Watch(ctx, prefix, "") // n3 hosts no replica of the new group
	require.NoError(t, err)
	defer live.Close()
	v0 := putVersion(t, c, 0, prefix+"a", "a0")
	first := nextPut(t, ctx, live)
	require.Equal(t, v0, first.Version)
	cursor := first.Cursor
	v1 := putVersion(t, c, 0, prefix+"a", "a1")
	require.Equal(t, v1, nextPut(t, ctx, live).Version)

	waitMoves(t, c, startMove(t, c, 0, slotOf(prefix+"a"), to)...)
	v2 := putVersion(t, c, 1, prefix+"a", "b1")
	ev := nextPut(t, ctx, live)
	require.Equal(t, "b1", string(ev.Value), "the change after the move")
	require.Equal(t, v2, ev.Version, "the watch's version is the write's")

	waitMoves(t, c, startMove(t, c, 0, slotOf(prefix+"a"), 1)...)
	v3 := putVersion(t, c, 2, prefix+"a", "c1")
	ev = nextPut(t, ctx, live)
	require.Equal(t, v3, ev.Version)

	// Resumed from before both moves: a1, b1 and c1, in order.
	resumed, err := c.Node(1).KV().Watch(ctx, prefix, cursor)
	require.NoError(t, err)
	defer resumed.Close()
	require.Equal(t, v1, nextPut(t, ctx, resumed).Version)
	require.Equal(t, v2, nextPut(t, ctx, resumed).Version)
	require.Equal(t, v3, nextPut(t, ctx, resumed).Version)
}

// A key deleted in the source before a move is not copied, but its next
// version in the target is above its deletion's.
func TestMoves_AKeyDeletedBeforeTheMoveKeepsGrowingVersions(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	for i := range 100 { // group 1's versions run well ahead of a new group's log
		putVersion(t, c, i%3, fmt.Sprintf("warm/%d", i), "x")
	}
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/groups", []byte(`{}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	putVersion(t, c, 0, "gone", "v")
	del := testcluster.Do(t, "DELETE", c.URL(0)+"/v1/kv/gone", nil)
	require.Equal(t, 200, del.Status, "%s", del.Body)
	var dr api.DeleteResponse
	require.NoError(t, json.Unmarshal(del.Body, &dr))
	require.True(t, dr.Deleted)
	deleted := dr.Version
	waitMoves(t, c, startMove(t, c, 1, slotOf("gone"), 2)...)
	v := putVersion(t, c, 2, "gone", "again")
	require.Greater(t, v, deleted, "the key's version went back across the move")
}

// A move into a group whose replica's disk is short is refused: the copy
// would fill it.
func TestMoves_RefusedWhenATargetReplicasDiskIsShort(t *testing.T) {
	c := testcluster.New(t, 3, 2, func(cfg *server.Config) {
		if cfg.NodeID == "n3" {
			cfg.QuotaBytes = 1 // its data directory is past its quota at once
		}
	})
	require.Eventually(t, func() bool {
		var st api.Status
		r := testcluster.Do(t, "GET", c.URL(2)+"/v1/status", nil)
		return json.Unmarshal(r.Body, &st) == nil && st.Storage != nil && !st.Storage.Writable
	}, 10*time.Second, 50*time.Millisecond, "n3 refuses writes")
	time.Sleep(2500 * time.Millisecond) // the nodes' status round (every second) tells the others
	body, _ := json.Marshal(api.MoveRequest{Slots: [][2]int{{0, 3}}, To: 2})
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/moves", body)
	require.Equal(t, 409, r.Status, "%s", r.Body)
	require.Contains(t, string(r.Body), "short of disk")
	moves := testcluster.Do(t, "GET", c.URL(0)+"/v1/admin/moves", nil)
	require.NotContains(t, string(moves.Body), `"from"`, "no move was recorded")
}
