package replication

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
)

// A group on raft-wal: segments rotate, snapshots truncate the log, a
// follower whose log is gone catches up through a snapshot (raft drops a
// monotonic log whole and the WAL starts again after the snapshot), every
// replica restarts with everything, and with encryption no segment holds
// a value in the clear.
func TestWAL_GroupRestartsTruncatesAndCatchesUp(t *testing.T) {
	r, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	tg := newTestGroup(t, 3, func(c *Config) {
		c.LogStore = LogStoreWAL
		c.WALSegmentBytes = 256 << 10 // several segments
		c.SnapshotThreshold = 32
		c.TrailingLogs = 8
		c.SnapshotInterval = 50 * time.Millisecond
		c.Keys = atrest.StaticKeys(r)
	})
	for i := range 3 {
		require.Equal(t, LogStoreWAL, StoredLogStore(tg.dirs[i]))
		_, err := os.Stat(filepath.Join(tg.dirs[i], boltLogFile))
		require.ErrorIs(t, err, os.ErrNotExist)
	}
	li, lg := tg.leader()
	f := (li + 1) % 3
	tg.stop(f)
	val := strings.Repeat("w", 4<<10)
	for i := range 200 { // 800 KiB: segments rotate
		_, err := tg.put(fmt.Sprintf("k%03d", i), fmt.Sprintf("%s-%s-%d", secretMarker, val, i))
		require.NoError(t, err)
	}
	require.NoError(t, lg.Snapshot())
	first, err := lg.logs.FirstIndex()
	require.NoError(t, err)
	require.Greater(t, first, uint64(10), "the snapshot truncated the log's head")

	tg.start(f, nil)
	tg.waitValue(f, "k199", fmt.Sprintf("%s-%s-%d", secretMarker, val, 199))
	_, err = tg.put("after", "x")
	require.NoError(t, err)
	for i := range 3 {
		tg.waitValue(i, "after", "x")
	}
	for i := range 3 {
		tg.restart(i)
	}
	for i := range 3 {
		tg.waitValue(i, "k000", fmt.Sprintf("%s-%s-%d", secretMarker, val, 0))
		items, _, err := tg.reps[i].Store().Scan(kvd.ScanOptions{})
		require.NoError(t, err)
		require.Len(t, items, 201)
	}
	_, err = tg.put("after-restart", "y")
	require.NoError(t, err)
	tg.waitValue(f, "after-restart", "y")
	require.Empty(t, holding(t, secretMarker, tg.dirs...), "plaintext on disk")
}

// A replica made with raft-boltdb keeps it when the configuration asks
// for the WAL, and the other way round.
func TestWAL_AReplicaKeepsTheStoreItWasMadeWith(t *testing.T) {
	for _, c := range []struct{ made, asked, other string }{
		{LogStoreBolt, LogStoreWAL, walLogDir},
		{LogStoreWAL, LogStoreBolt, boltLogFile},
	} {
		t.Run(c.made, func(t *testing.T) {
			kind := c.made
			tg := newTestGroup(t, 1, func(cfg *Config) { cfg.LogStore = kind })
			dir := tg.dirs[0]
			_, err := tg.put("a", "1")
			require.NoError(t, err)
			require.Equal(t, c.made, StoredLogStore(dir))
			kind = c.asked
			tg.restart(0)
			tg.waitValue(0, "a", "1")
			require.Equal(t, c.made, StoredLogStore(dir))
			_, err = os.Stat(filepath.Join(dir, c.other))
			require.ErrorIs(t, err, os.ErrNotExist)
			_, err = tg.put("b", "2")
			require.NoError(t, err)
		})
	}
}

// A crash in the middle of an append leaves a torn tail in the last
// segment: the WAL opens without it and the replica goes on.
func TestWAL_TornTailIsDropped(t *testing.T) {
	tg := newTestGroup(t, 1, func(c *Config) {
		c.LogStore = LogStoreWAL
		c.WALSegmentBytes = 1 << 20
	})
	for i := range 50 {
		_, err := tg.put(fmt.Sprintf("k%02d", i), "v")
		require.NoError(t, err)
	}
	tg.stop(0)
	segs, err := filepath.Glob(filepath.Join(tg.dirs[0], walLogDir, "*.wal"))
	require.NoError(t, err)
	require.NotEmpty(t, segs)
	last := segs[len(segs)-1]
	b, err := os.ReadFile(last)
	require.NoError(t, err)
	end := len(b)
	for end > 0 && b[end-1] == 0 {
		end-- // the preallocated, unwritten rest
	}
	require.Greater(t, end, 64)
	// Half of the last frame is garbage, as a torn write leaves it.
	for i := end - 12; i < end; i++ {
		b[i] ^= 0xA5
	}
	require.NoError(t, os.WriteFile(last, b, 0o644))
	tg.start(0, nil)
	tg.waitValue(0, "k48", "v") // applied to the state before the crash
	_, err = tg.put("after", "x")
	require.NoError(t, err)
	tg.waitValue(0, "after", "x")
}

// raft-wal keeps a writer for every segment still in the log; the copy kvd
// builds (third_party/raft-wal) lets a writer drop its commit buffer once
// its segment is sealed. Unpatched, each of these 40 sealed segments kept
// a buffer of 8 MiB.
func TestWAL_SealedSegmentsKeepNoBuffers(t *testing.T) {
	s, err := openRaftStore(LogStoreWAL, t.TempDir(), 1<<20, hclog.NewNullLogger())
	require.NoError(t, err)
	defer s.Close()
	val := make([]byte, 256<<10)
	idx := uint64(1)
	for range 40 { // batches of 4 MiB, each past a segment's 1 MiB
		var batch []*raft.Log
		for range 16 {
			batch = append(batch, &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: val})
			idx++
		}
		require.NoError(t, s.StoreLogs(batch))
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap in use after 160 MiB in 40 segments: %d MiB", ms.HeapInuse>>20)
	require.Less(t, ms.HeapInuse, uint64(64<<20), "sealed segments hold their buffers")
	var l raft.Log
	require.NoError(t, s.GetLog(idx-1, &l), "the log still reads")
	require.Len(t, l.Data, len(val))
}
