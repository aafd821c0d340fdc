package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// takeBackup takes a backup through node i's HTTP API and checks it.
func takeBackup(t *testing.T, c *testcluster.Cluster, i int) []byte {
	t.Helper()
	r := testcluster.Do(t, "GET", c.URL(i)+"/v1/admin/backup", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	_, _, err := backup.Verify(bytes.NewReader(r.Body))
	require.NoError(t, err)
	return r.Body
}

// backupRecords reads every record of a backup file.
func backupRecords(t *testing.T, file []byte) map[string]backup.Record {
	t.Helper()
	br, err := backup.NewReader(bytes.NewReader(file))
	require.NoError(t, err)
	out := map[string]backup.Record{}
	for {
		rec, err := br.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		rec.Value = bytes.Clone(rec.Value)
		out[rec.Key] = rec
	}
}

// The cut is consistent: transfers between accounts of every group run
// while backups are taken, and every backup holds the total; restored
// into a cluster of another shape, every account is there.
func TestBackup_CutKeepsTransfersWholeAndRestoresElsewhere(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	c.WaitReady()
	ctx := context.Background()
	kv := c.Node(0)
	m := kv.Map()
	byGroup := testcluster.KeysInGroups(m, "acct/", 4)
	var accounts []string
	for _, ks := range byGroup {
		accounts = append(accounts, ks...)
	}
	require.Len(t, accounts, 12)
	const each = 100
	for _, a := range accounts {
		_, err := kv.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(a, []byte(strconv.Itoa(each)))}}, kvd.WriteOptions{})
		require.NoError(t, err)
	}
	ttlKey := "ttl/key"
	_, err := kv.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPutTTL(ttlKey, []byte("soon"), time.Hour)}}, kvd.WriteOptions{})
	require.NoError(t, err)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var committed atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := accounts[(w*5+i)%len(accounts)], accounts[(w*7+i*3+1)%len(accounts)]
				if from == to {
					continue
				}
				if transfer(ctx, c.Node(w%3), from, to, 1) {
					committed.Add(1)
				}
			}
		}()
	}
	var files [][]byte
	for b := 0; b < 3; b++ {
		time.Sleep(300 * time.Millisecond)
		files = append(files, takeBackup(t, c, b%3))
	}
	close(stop)
	wg.Wait()
	require.Greater(t, committed.Load(), int64(10), "transfers ran during the backups")
	for i, f := range files {
		recs := backupRecords(t, f)
		sum := 0
		for _, a := range accounts {
			rec, ok := recs[a]
			require.True(t, ok, "backup %d lacks %s", i, a)
			n, err := strconv.Atoi(string(rec.Value))
			require.NoError(t, err)
			sum += n
		}
		require.Equal(t, each*len(accounts), sum, "backup %d holds the total", i)
		require.NotZero(t, recs[ttlKey].Expires, "the TTL is in the backup")
	}
	require.Equal(t, float64(3), testcluster.Metric(t, c.URL(0), "kvd_backups_total", `result="done"`)+
		testcluster.Metric(t, c.URL(1), "kvd_backups_total", `result="done"`)+
		testcluster.Metric(t, c.URL(2), "kvd_backups_total", `result="done"`))
	require.Greater(t, testcluster.Metric(t, c.URL(0), "kvd_backup_last_size_bytes"), float64(100))

	// Another shape: one node, two groups.
	d := testcluster.New(t, 1, 2)
	d.WaitReady()
	r := testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", files[len(files)-1])
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var res api.RestoreResult
	require.NoError(t, json.Unmarshal(r.Body, &res))
	require.Equal(t, uint64(len(accounts)+1), res.Keys)
	require.Equal(t, 2, res.Groups)
	want := backupRecords(t, files[len(files)-1])
	sum := 0
	for _, a := range accounts {
		it, err := d.Node(0).Get(ctx, a, kvd.Linearizable, kvd.Route{})
		require.NoError(t, err)
		require.Equal(t, string(want[a].Value), string(it.Value))
		n, _ := strconv.Atoi(string(it.Value))
		sum += n
	}
	require.Equal(t, each*len(accounts), sum)
	_, err = d.Node(0).Get(ctx, ttlKey, kvd.Linearizable, kvd.Route{})
	require.NoError(t, err)

	// A cluster that holds keys is refused unless forced.
	r = testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", files[0])
	require.Equal(t, 409, r.Status, "%s", r.Body)
	require.Contains(t, string(r.Body), "force")
	_, err = d.Node(0).Put(ctx, "extra", []byte("x"), kvd.WriteOptions{}, kvd.Route{})
	require.NoError(t, err)
	r = testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore?force=true", files[0])
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.NoError(t, json.Unmarshal(r.Body, &res))
	require.True(t, res.Replaced)
	_, err = d.Node(0).Get(ctx, "extra", kvd.Linearizable, kvd.Route{})
	require.ErrorIs(t, err, kvd.ErrNotFound, "force replaces the keys held")
	require.Nil(t, d.Node(0).Map().Restore, "the map forgets the restore")
}

// transfer moves n from one account to another in a transaction,
// reporting whether it committed.
func transfer(ctx context.Context, kv interface {
	Txn(context.Context, kvd.Txn, kvd.WriteOptions) (kvd.TxnResponse, error)
}, from, to string, n int) bool {
	t := kvd.Txn{Ops: []kvd.Op{kvd.OpGet(from), kvd.OpGet(to)}}
	resp, err := kv.Txn(ctx, t, kvd.WriteOptions{})
	if err != nil || len(resp.Results) != 2 {
		return false
	}
	a, _ := strconv.Atoi(string(resp.Results[0].Value))
	b, _ := strconv.Atoi(string(resp.Results[1].Value))
	w := kvd.Txn{
		Compares: []kvd.Compare{kvd.VersionIs(from, resp.Results[0].Version), kvd.VersionIs(to, resp.Results[1].Version)},
		Ops:      []kvd.Op{kvd.OpPut(from, []byte(strconv.Itoa(a-n))), kvd.OpPut(to, []byte(strconv.Itoa(b+n)))},
	}
	resp, err = kv.Txn(ctx, w, kvd.WriteOptions{})
	return err == nil && resp.Committed
}

// Damaged, cut, foreign and empty files are refused before anything is
// written.
func TestRestore_RefusesBadFilesWithNothingWritten(t *testing.T) {
	c := testcluster.New(t, 1, 2)
	c.WaitReady()
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		_, err := c.Node(0).Put(ctx, fmt.Sprintf("k%02d", i), []byte("v"), kvd.WriteOptions{}, kvd.Route{})
		require.NoError(t, err)
	}
	good := takeBackup(t, c, 0)
	d := testcluster.New(t, 1, 1)
	d.WaitReady()
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	wrongVersion := bytes.Clone(good)
	wrongVersion[len(backup.Magic)+1] = 9
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", "", "empty"},
		{"truncated", string(good[:len(good)-10]), "truncated"},
		{"corrupt", string(flipped), "corrupt"},
		{"wrong version", string(wrongVersion), "version 9"},
		{"not a backup", `{"hello":1}`, "not a kvd backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", []byte(tc.body))
			require.Equal(t, 400, r.Status, "%s", r.Body)
			require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
			require.Contains(t, string(r.Body), tc.want)
			items, _, err := d.Node(0).Scan(ctx, kvd.ScanOptions{Limit: 10, MaxBytes: 1 << 20}, kvd.Linearizable, kvd.Route{})
			require.NoError(t, err)
			require.Empty(t, items, "nothing restored")
			require.Nil(t, d.Node(0).Map().Restore)
		})
	}
	r := testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore?force=maybe", good)
	require.Equal(t, 400, r.Status)
	r = testcluster.Do(t, "GET", d.URL(0)+"/v1/admin/backup?x=1", nil)
	require.Equal(t, 400, r.Status)
}

// Scheduled backups: the map's leader alone writes them, whole, and the
// oldest past --backup-keep go.
func TestBackup_ScheduledKeepsTheNewest(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	c := testcluster.New(t, 3, 2, func(cfg *server.Config) {
		// Nodes start at once: each picks its directory by its id (n1..n3).
		cfg.BackupDir, cfg.BackupEvery, cfg.BackupKeep = dirs[int(cfg.NodeID[1]-'1')%3], 150*time.Millisecond, 2
	})
	c.WaitReady()
	_, err := c.Node(0).Txn(context.Background(), kvd.Txn{Ops: []kvd.Op{kvd.OpPut("k", []byte("v"))}}, kvd.WriteOptions{})
	require.NoError(t, err)
	var files []string
	require.Eventually(t, func() bool {
		files = nil
		for _, d := range dirs {
			matches, _ := filepath.Glob(filepath.Join(d, "kvd-backup-*.kvdb"))
			files = append(files, matches...)
		}
		return len(files) == 2 && testcluster.Metric(t, c.URL(c.Leader(c.Node(0).Map().SystemGroup())), "kvd_backups_total", `result="done"`) >= 4
	}, 20*time.Second, 50*time.Millisecond, "two backups kept, more taken")
	require.Equal(t, filepath.Dir(files[0]), filepath.Dir(files[1]), "one node writes them")
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		_, sum, err := backup.Verify(bytes.NewReader(data))
		require.NoError(t, err)
		require.Equal(t, uint64(1), sum.Keys)
	}
	require.Greater(t, testcluster.Metric(t, c.URL(c.Leader(c.Node(0).Map().SystemGroup())), "kvd_backup_last_timestamp_seconds"), float64(time.Now().Add(-time.Minute).Unix()))
}

// Forced restores while transfers run: a transaction in flight finishes
// before the groups seal, or is refused and runs again after: none is
// half applied over the restored keys.
func TestRestore_ForcedUnderTransfersKeepsTransactionsWhole(t *testing.T) {
	c := testcluster.New(t, 1, 3)
	c.WaitReady()
	ctx := context.Background()
	kv := c.Node(0)
	var accounts []string
	for _, ks := range testcluster.KeysInGroups(kv.Map(), "acct/", 3) {
		accounts = append(accounts, ks...)
	}
	const each = 100
	for _, a := range accounts {
		_, err := kv.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut(a, []byte(strconv.Itoa(each)))}}, kvd.WriteOptions{})
		require.NoError(t, err)
	}
	file := takeBackup(t, c, 0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var committed atomic.Int64
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := accounts[(w+i)%len(accounts)], accounts[(w*4+i*5+1)%len(accounts)]
				t := kvd.Txn{Ops: []kvd.Op{kvd.OpAdd(from, -7), kvd.OpAdd(to, 7)}}
				if _, err := kv.Txn(ctx, t, kvd.WriteOptions{}); from != to && err == nil {
					committed.Add(1)
				}
			}
		}()
	}
	for r := 0; r < 8; r++ {
		time.Sleep(50 * time.Millisecond)
		resp := testcluster.Do(t, "POST", c.URL(0)+"/v1/admin/restore?force=true", file)
		require.Equal(t, 200, resp.Status, "%s", resp.Body)
	}
	close(stop)
	wg.Wait()
	require.Greater(t, committed.Load(), int64(4))
	sum := 0
	for _, a := range accounts {
		it, err := kv.Get(ctx, a, kvd.Linearizable, kvd.Route{})
		require.NoError(t, err)
		n, _ := strconv.Atoi(string(it.Value))
		sum += n
	}
	require.Equal(t, each*len(accounts), sum)
}

// Values of the largest size restore through a node that leads nothing:
// each staged page goes to the group's leader within the size of an
// internal request, holding at most one largest value past its bound.
func TestRestore_LargestValuesThroughAFollower(t *testing.T) {
	c := testcluster.New(t, 1, 1)
	c.WaitReady()
	ctx := context.Background()
	want := map[string][]byte{}
	for i := range 6 {
		k := fmt.Sprintf("big-%d", i)
		v := bytes.Repeat([]byte{byte('a' + i)}, kvd.DefaultLimits().MaxValueBytes-(i%2)*(300<<10))
		_, err := c.Node(0).Put(ctx, k, v, kvd.WriteOptions{}, kvd.Route{})
		require.NoError(t, err)
		want[k] = v
	}
	file := takeBackup(t, c, 0)

	d := testcluster.New(t, 3, 1)
	d.WaitReady()
	follower := (d.Leader(1) + 1) % 3
	r := testcluster.Do(t, "POST", d.URL(follower)+"/v1/admin/restore", file)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	for k, v := range want {
		r := testcluster.Do(t, "GET", d.URL(follower)+"/v1/kv/"+k, nil)
		require.Equal(t, 200, r.Status, k)
		require.Equal(t, v, r.Body, k)
	}
}
