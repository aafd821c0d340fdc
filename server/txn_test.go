package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
	"github.com/kvd-project/kvd/store"
)

func postTxn(t *testing.T, url, body string) (int, api.TxnResponse) {
	t.Helper()
	resp, err := http.Post(url+"/v1/txn", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var tr api.TxnResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tr))
	return resp.StatusCode, tr
}

func TestTxn_HTTPContract(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "k", 1)
	a, b, d := ks[1][0], ks[2][0], ks[3][0]
	status, tr := postTxn(t, c.URL(0), fmt.Sprintf(`{"ops":[{"op":"put","key":%q,"value":"MQ=="},{"op":"put","key":%q,"value":"Mg=="},{"op":"put","key":%q,"value":"Mw=="}]}`, a, b, d))
	require.Equal(t, 200, status)
	require.True(t, tr.Committed)
	require.Len(t, tr.Results, 3)
	va := tr.Results[0].Version
	require.NotZero(t, va)

	status, tr = postTxn(t, c.URL(1), fmt.Sprintf(`{"compare":[{"key":%q,"version":%d},{"key":%q,"value":"Mg=="},{"key":"nope","exists":false}],
		"ops":[{"op":"get","key":%q},{"op":"delete","key":%q},{"op":"get","key":"nope"}]}`, a, va, b, a, d))
	require.Equal(t, 200, status)
	require.Equal(t, "get", tr.Results[0].Op)
	require.True(t, *tr.Results[0].Found)
	require.Equal(t, "1", string(tr.Results[0].Value))
	require.Equal(t, va, tr.Results[0].Version)
	require.True(t, *tr.Results[1].Deleted)
	require.False(t, *tr.Results[2].Found)

	status, tr = postTxn(t, c.URL(2), fmt.Sprintf(`{"compare":[{"key":%q,"version":1},{"key":%q,"exists":true}],"ops":[{"op":"put","key":%q,"value":"eA=="}]}`, a, b, b))
	require.Equal(t, 409, status)
	require.False(t, tr.Committed)
	require.Equal(t, []int{0}, tr.Failed)
	require.Equal(t, api.CodeCompareFailed, tr.Error.Code)

	for _, bad := range []string{`{}`, `{"ops":[{"op":"incr","key":"x"}]}`, `{"ops":[{"op":"put","key":"x"},{"op":"put","key":"x"}]}`,
		`{"compare":[{"key":"x"}]}`, `not json`, `{"ops":[],"extra":1}`} {
		resp, err := http.Post(c.URL(0)+"/v1/txn", "application/json", strings.NewReader(bad))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 400, resp.StatusCode, bad)
	}
	var many []string
	for i := range 129 {
		many = append(many, fmt.Sprintf(`{"op":"get","key":"m%d"}`, i))
	}
	resp, err := http.Post(c.URL(0)+"/v1/txn", "application/json", strings.NewReader(`{"ops":[`+strings.Join(many, ",")+`]}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 413, resp.StatusCode, "more than 128 keys")
}

// bank runs concurrent transfers between accounts spread over every
// group, and readers that read every account in one transaction. Every
// read must total the same, and no balance may go negative.
type bank struct {
	cl       *client.Client
	accounts []string
	total    int
}

func newBank(t *testing.T, cl *client.Client, m *kvd.Map, perGroup, initial int) *bank {
	b := &bank{cl: cl}
	for _, ks := range testcluster.KeysInGroups(m, "acct/", perGroup) {
		b.accounts = append(b.accounts, ks...)
	}
	var ops []kvd.Op
	for _, a := range b.accounts {
		ops = append(ops, kvd.OpPut(a, []byte(strconv.Itoa(initial))))
	}
	_, err := cl.Txn(context.Background(), kvd.Txn{Ops: ops})
	require.NoError(t, err)
	b.total = initial * len(b.accounts)
	return b
}

func (b *bank) transfer(ctx context.Context, from, to string, amount int) error {
	return b.cl.Update(ctx, func(ctx context.Context, tx *client.Tx) error {
		fi, err := tx.Get(ctx, from)
		if err != nil {
			return err
		}
		ti, err := tx.Get(ctx, to)
		if err != nil {
			return err
		}
		f, _ := strconv.Atoi(string(fi.Value))
		tv, _ := strconv.Atoi(string(ti.Value))
		if f < amount {
			return nil // nothing to move: commits as a no-op
		}
		tx.Put(from, []byte(strconv.Itoa(f-amount)))
		tx.Put(to, []byte(strconv.Itoa(tv+amount)))
		return nil
	})
}

// read reads every account in one transaction and returns the total.
func (b *bank) read(ctx context.Context) (int, error) {
	var ops []kvd.Op
	for _, a := range b.accounts {
		ops = append(ops, kvd.OpGet(a))
	}
	resp, err := b.cl.Txn(ctx, kvd.Txn{Ops: ops})
	if err != nil {
		return 0, err
	}
	sum := 0
	for _, r := range resp.Results {
		v, err := strconv.Atoi(string(r.Value))
		if err != nil || v < 0 {
			return 0, fmt.Errorf("account %s holds %q", r.Key, r.Value)
		}
		sum += v
	}
	return sum, nil
}

// run drives transfers and reads until stop, checking every read.
func (b *bank) run(t *testing.T, stop *atomic.Bool) (transfers, reads int64) {
	var wg sync.WaitGroup
	var nt, nr atomic.Int64
	var bad atomic.Value
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				from := b.accounts[(w+i)%len(b.accounts)]
				to := b.accounts[(w*7+i*3+1)%len(b.accounts)]
				if from == to {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := b.transfer(ctx, from, to, 1+i%5); err == nil {
					nt.Add(1)
				}
				cancel()
			}
		}()
	}
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				sum, err := b.read(ctx)
				cancel()
				if err == nil {
					nr.Add(1)
					if sum != b.total {
						bad.CompareAndSwap(nil, fmt.Sprintf("a transactional read totals %d, not %d", sum, b.total))
					}
				} else if !errors.Is(err, kvd.ErrConflict) && !errors.Is(err, kvd.ErrUnavailable) && !errors.Is(err, kvd.ErrUnknownOutcome) && !errors.Is(err, context.DeadlineExceeded) {
					bad.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	return nt.Load(), nr.Load()
}

func (b *bank) finalTotal(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		sum, err := b.read(context.Background())
		if err != nil {
			return false
		}
		require.Equal(t, b.total, sum)
		return true
	}, 20*time.Second, 100*time.Millisecond)
}

func newBankClient(t *testing.T, c *testcluster.Cluster) *client.Client {
	cl, err := client.New(context.Background(), client.DefaultConfig(c.URLs()...))
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestTxn_ConcurrentTransfersKeepTheTotal(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	b := newBank(t, newBankClient(t, c), c.Node(0).Map(), 3, 100)
	var stop atomic.Bool
	time.AfterFunc(4*time.Second, func() { stop.Store(true) })
	nt, nr := b.run(t, &stop)
	t.Logf("%d transfers, %d transactional reads of %d accounts", nt, nr, len(b.accounts))
	require.Positive(t, nt)
	require.Positive(t, nr)
	b.finalTotal(t)
	assertNoLocks(t, c)
}

// assertNoLocks waits until no replica holds a transaction lock.
func assertNoLocks(t *testing.T, c *testcluster.Cluster) {
	t.Helper()
	require.Eventually(t, func() bool {
		for i := range c.Size() {
			n := c.Node(i)
			if n == nil {
				continue
			}
			for _, grp := range n.Map().Groups {
				g, ok := n.Group(grp.ID)
				if !ok {
					continue
				}
				locks, err := g.Store().ExpiredLocks(time.Now().Add(time.Hour).UnixNano())
				if err != nil || len(locks) > 0 {
					return false
				}
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "transaction locks left behind")
}

func TestTxn_ParticipantLeaderKilledMidway(t *testing.T) {
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) {
		cfg.TxnTimeout = 2 * time.Second
		cfg.LeaderBalanceInterval = 0
	})
	b := newBank(t, newBankClient(t, c), c.Node(0).Map(), 2, 100)
	var stop atomic.Bool
	victim := c.Leader(2)
	time.AfterFunc(1500*time.Millisecond, func() { c.Stop(victim) })
	time.AfterFunc(5*time.Second, func() { stop.Store(true) })
	nt, nr := b.run(t, &stop)
	t.Logf("%d transfers, %d reads across the loss of group 2's leader", nt, nr)
	c.Restart(victim)
	b.finalTotal(t)
	assertNoLocks(t, c)
}

func TestTxn_ConflictingTransactionsNeverBothCommit(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	cl := newBankClient(t, c)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "race", 1)
	x, y := ks[1][0], ks[2][0]
	ctx := context.Background()
	resp, err := cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(x, []byte("0")), kvd.OpPut(y, []byte("0"))}})
	require.NoError(t, err)
	v := resp.Results[0].Version
	for round := range 5 {
		var wins atomic.Int64
		var winner atomic.Value
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := []byte(fmt.Sprintf("r%d-w%d", round, w))
				_, err := cl.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{kvd.VersionIs(x, v)}, Ops: []kvd.Op{kvd.OpPut(x, id), kvd.OpPut(y, id)}})
				if err == nil {
					wins.Add(1)
					winner.Store(string(id))
				} else {
					require.True(t, errors.Is(err, kvd.ErrConflict) || errors.Is(err, kvd.ErrCompareFailed), "%v", err)
				}
			}()
		}
		wg.Wait()
		require.LessOrEqual(t, wins.Load(), int64(1), "two transactions on one version both committed")
		xi, err := cl.Get(ctx, x)
		require.NoError(t, err)
		yi, err := cl.Get(ctx, y)
		require.NoError(t, err)
		require.Equal(t, string(xi.Value), string(yi.Value), "all or nothing")
		if wins.Load() == 1 {
			require.Equal(t, winner.Load(), string(xi.Value))
		}
		v = xi.Version
	}
}

// stoppableCoordinators starts a 3-node, 3-group cluster whose
// coordinators stop after the prepares while the returned switch is on
// (their transactions then wait for recovery past timeout).
func stoppableCoordinators(t *testing.T, timeout time.Duration) (*testcluster.Cluster, *atomic.Bool) {
	var block atomic.Bool
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) {
		cfg.TxnTimeout = timeout
		cfg.TxnAfterPrepare = func(string) error {
			if block.Load() {
				return errors.New("coordinator stopped")
			}
			return nil
		}
	})
	return c, &block
}

func TestTxn_CoordinatorStoppedAfterPrepare(t *testing.T) {
	c, block := stoppableCoordinators(t, 2*time.Second)
	cl := newBankClient(t, c)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "dead", 1)
	x, y := ks[1][0], ks[3][0]
	ctx := context.Background()
	_, err := cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(x, []byte("old")), kvd.OpPut(y, []byte("old"))}})
	require.NoError(t, err)

	block.Store(true)
	_, err = cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(x, []byte("new")), kvd.OpPut(y, []byte("new"))}})
	require.Error(t, err, "the coordinator stopped before deciding")
	block.Store(false)

	// While the transaction is pending, reads see the committed values and
	// plain writes are refused with a conflict after a short wait.
	it, err := cl.Get(ctx, y)
	require.NoError(t, err)
	require.Equal(t, "old", string(it.Value))
	_, err = cl.Put(ctx, x, []byte("plain"))
	require.ErrorIs(t, err, kvd.ErrConflict)

	// Past the deadline the janitors abort it and release every lock.
	assertNoLocks(t, c)
	for _, k := range []string{x, y} {
		it, err := cl.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, "old", string(it.Value), "all or nothing: nothing")
	}
	_, err = cl.Put(ctx, x, []byte("plain"))
	require.NoError(t, err)
	for i := range 3 {
		for gid := kvd.GroupID(1); gid <= 3; gid++ {
			if g, ok := c.Node(i).Group(gid); ok {
				recs, err := g.Store().Records()
				require.NoError(t, err)
				for id, r := range recs {
					require.NotEqual(t, store.TxnPending, r.State, "record %s still pending", id)
				}
			}
		}
	}
}

// A plain write and a cross-group transaction's write of the same key
// never get the same version for different values: a prepare shares no
// log entry with another write of its keys, and fixes its version there.
func TestTxn_APlainWriteAndATransactionNeverShareAVersion(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	cl := newBankClient(t, c)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "vk/", 3)
	hot, other := ks[1], ks[2]
	var mu sync.Mutex
	seen := map[string]map[uint64]string{}
	record := func(k string, v uint64, val string) {
		mu.Lock()
		defer mu.Unlock()
		if seen[k] == nil {
			seen[k] = map[uint64]string{}
		}
		if prev, dup := seen[k][v]; dup && prev != val {
			t.Errorf("key %s: version %d given to %q and to %q", k, v, prev, val)
		}
		seen[k][v] = val
	}
	ctx := context.Background()
	var stop atomic.Bool
	time.AfterFunc(3*time.Second, func() { stop.Store(true) })
	var wg sync.WaitGroup
	var puts, txns atomic.Int64
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k, val := hot[(w+i)%len(hot)], fmt.Sprintf("p%d-%d", w, i)
				if v, err := cl.Put(ctx, k, []byte(val)); err == nil {
					record(k, v, val)
					puts.Add(1)
				}
			}
		}()
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k, o, val := hot[(w+i)%len(hot)], other[(w+i)%len(other)], fmt.Sprintf("t%d-%d", w, i)
				resp, err := cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(k, []byte(val)), kvd.OpPut(o, []byte(val))}})
				if err == nil && resp.Committed {
					record(k, resp.Results[0].Version, val)
					txns.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d puts and %d transactions on %d keys", puts.Load(), txns.Load(), len(hot))
	require.Positive(t, puts.Load())
	require.Positive(t, txns.Load())
	for _, k := range hot {
		it, err := cl.Get(ctx, k)
		require.NoError(t, err)
		mu.Lock()
		val, ok := seen[k][it.Version]
		mu.Unlock()
		require.True(t, ok, "key %s: version %d was never answered", k, it.Version)
		require.Equal(t, val, string(it.Value), "key %s at version %d", k, it.Version)
	}
}

// One client's cross-group transactions one after the other on the same
// keys do not refuse each other: the next one meets the previous one's
// locks before their resolution (which follows the answer), and resolves
// them rather than fail with a conflict.
func TestTxn_OneClientsTransactionsInARowDoNotConflict(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	cl := newBankClient(t, c)
	ks := testcluster.KeysInGroups(c.Node(0).Map(), "seq/", 1)
	a, b := ks[1][0], ks[2][0]
	ctx := context.Background()
	var ver kvd.Version
	exists := false
	for i := range 100 {
		cmp := kvd.Compare{Key: b, Exists: &exists}
		if ver != 0 {
			v := ver
			cmp = kvd.Compare{Key: b, Version: &v}
		}
		val := []byte(strconv.Itoa(i))
		resp, err := cl.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{cmp}, Ops: []kvd.Op{kvd.OpPut(a, val), kvd.OpPut(b, val)}})
		require.NoError(t, err, "transaction %d", i)
		require.True(t, resp.Committed)
		ver = resp.Results[1].Version
		require.NotZero(t, ver)
	}
	it, err := cl.Get(ctx, b)
	require.NoError(t, err)
	require.Equal(t, "99", string(it.Value))
	require.Equal(t, ver, it.Version)
}
