package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/backup"
)

// getBackup takes a backup from url and checks it whole.
func getBackup(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := hc.Get(url + "/v1/admin/backup")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode, "%s", body)
	_, _, err = backup.Verify(bytes.NewReader(body))
	require.NoError(t, err)
	return body
}

// postRestore posts a backup to url and returns the status and body.
func postRestore(t *testing.T, url string, file []byte, query string) (int, string) {
	t.Helper()
	resp, err := hc.Post(url+"/v1/admin/restore"+query, "application/octet-stream", bytes.NewReader(file))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// A backup taken after N acknowledged writes holds all N, with their
// TTLs as deadlines, and restores them into a cluster of another shape;
// the restored TTLs still fire.
func TestKvd_BackupAfterNWritesRestoresAllN(t *testing.T) {
	src := startClusterWith(t, 3, 3)
	const n = 300
	want := map[string]string{}
	var ttlKeys []string
	var mu sync.Mutex // protects want and ttlKeys
	var wg sync.WaitGroup
	var failed atomic.Int32
	putAt := time.Now()
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 6 {
				key, val := fmt.Sprintf("key-%04d", i), fmt.Sprintf("value-%d-%s", i, strings.Repeat("x", i%50))
				path := key
				if i%10 == 0 {
					path += "?ttl=8s"
				}
				_, status, err := put(src.Nodes[i%3].URL(), path, val)
				if err != nil || status != 200 {
					failed.Add(1)
					continue
				}
				mu.Lock()
				want[key] = val
				if i%10 == 0 {
					ttlKeys = append(ttlKeys, key)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Zero(t, failed.Load())
	file := getBackup(t, src.Nodes[1].URL())
	br, err := backup.NewReader(bytes.NewReader(file))
	require.NoError(t, err)
	require.Len(t, br.Header().Groups, 3)
	got := map[string]backup.Record{}
	for {
		rec, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		rec.Value = bytes.Clone(rec.Value)
		got[rec.Key] = rec
	}
	require.Len(t, got, n)
	for k, v := range want {
		require.Equal(t, v, string(got[k].Value), k)
	}
	for _, k := range ttlKeys {
		exp := time.Unix(0, got[k].Expires)
		require.WithinDuration(t, putAt.Add(8*time.Second), exp, 5*time.Second, "%s keeps its deadline", k)
	}

	dst := startClusterWith(t, 1, 2, "--ttl-interval", "50ms")
	status, body := postRestore(t, dst.Nodes[0].URL(), file, "")
	require.Equal(t, 200, status, body)
	require.Contains(t, body, fmt.Sprintf(`"keys":%d`, n))
	for k, v := range want {
		val, _, status, err := get(dst.Nodes[0].URL(), k, "linearizable")
		require.NoError(t, err)
		if status == 404 && slicesContains(ttlKeys, k) && time.Since(putAt) > 7*time.Second {
			continue // its TTL ran out meanwhile, as it should
		}
		require.Equal(t, 200, status, k)
		require.Equal(t, v, val, k)
	}
	// The restored TTLs fire at their deadline.
	require.Eventually(t, func() bool {
		for _, k := range ttlKeys {
			if _, _, status, _ := get(dst.Nodes[0].URL(), k, "linearizable"); status != 404 {
				return false
			}
		}
		return true
	}, 60*time.Second, 250*time.Millisecond)
	_, _, status, _ = get(dst.Nodes[0].URL(), "key-0001", "linearizable")
	require.Equal(t, 200, status, "keys without a TTL stay")
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// rssAnon reads a process's anonymous resident memory (heap, stacks:
// not the state file's pages it maps), in bytes.
func rssAnon(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no RssAnon in /proc status")
}

// A backup of a state much larger than the node's memory limit streams:
// the node's anonymous memory grows by a few MiB, not by the data's size.
func TestKvd_BackupOfALargeStateRunsInBoundedMemory(t *testing.T) {
	c := startClusterWith(t, 1, 1, "--memory-limit", "64MiB")
	pid := c.Nodes[0].Pid()
	if _, err := rssAnon(pid); err != nil {
		t.Skipf("cannot read the process's memory: %v", err)
	}
	const values, size = 384, 256 << 10 // 96 MiB
	val := strings.Repeat("v", size)
	var wg sync.WaitGroup
	var failed atomic.Int32
	var firstFailure atomic.Value
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < values; i += 4 {
				if _, status, err := put(c.Nodes[0].URL(), fmt.Sprintf("big/%04d", i), val); err != nil || status != 200 {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("status %d, err %v", status, err))
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, failed.Load(), "first failure: %v", firstFailure.Load())
	before, err := rssAnon(pid)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			if v, err := rssAnon(pid); err == nil && v > peak.Load() {
				peak.Store(v)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	resp, err := hc.Get(c.Nodes[0].URL() + "/v1/admin/backup")
	require.NoError(t, err)
	r, err := backup.NewReader(resp.Body)
	require.NoError(t, err)
	var keys int
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.Len(t, rec.Value, size)
		keys++
		time.Sleep(time.Millisecond) // a slow reader: the node must not buffer ahead
	}
	resp.Body.Close()
	cancel()
	<-sampled
	require.Equal(t, values, keys)
	grew := peak.Load() - before
	t.Logf("anonymous memory %d MiB before the backup, peak %d MiB during it (+%d MiB) for %d MiB of values",
		before>>20, peak.Load()>>20, grew>>20, values*size>>20)
	require.Less(t, grew, int64(32<<20), "the backup streams")
}
