package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"), DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func put(key, val string) Cmd { return Cmd{Kind: CmdPut, Key: key, Value: []byte(val)} }

// applyOne applies one entry holding cmds at index and returns its results.
func applyOne(t *testing.T, db *DB, index uint64, cmds ...Cmd) []Result {
	t.Helper()
	res, err := db.Apply([]Entry{{Index: index, Term: 1, Batch: &Batch{Cmds: cmds}}})
	require.NoError(t, err)
	return res[0]
}

func TestStore_PutGetDelete(t *testing.T) {
	db := openTest(t)
	r := applyOne(t, db, 5, put("a", "1"))
	require.NoError(t, r[0].Err)
	require.Equal(t, uint64(5), r[0].Version)

	it, err := db.Get("a")
	require.NoError(t, err)
	require.Equal(t, "1", string(it.Value))
	require.Equal(t, uint64(5), it.Version)

	r = applyOne(t, db, 6, Cmd{Kind: CmdDelete, Key: "a"})
	require.True(t, r[0].Deleted)
	_, err = db.Get("a")
	require.ErrorIs(t, err, kvd.ErrNotFound)

	r = applyOne(t, db, 7, Cmd{Kind: CmdDelete, Key: "a"})
	require.False(t, r[0].Deleted, "deleting an absent key deletes nothing")
	require.Equal(t, uint64(7), db.AppliedIndex())
}

func TestStore_Conditions(t *testing.T) {
	tests := []struct {
		name    string
		cond    kvd.Cond
		present bool
		ok      bool
	}{
		{"create-only on absent", kvd.Cond{Kind: kvd.CondVersionEq, Version: 0}, false, true},
		{"create-only on present", kvd.Cond{Kind: kvd.CondVersionEq, Version: 0}, true, false},
		{"if-match right version", kvd.Cond{Kind: kvd.CondVersionEq, Version: 1}, true, true},
		{"if-match wrong version", kvd.Cond{Kind: kvd.CondVersionEq, Version: 2}, true, false},
		{"if-match on absent", kvd.Cond{Kind: kvd.CondVersionEq, Version: 1}, false, false},
		{"if-none-match version differs", kvd.Cond{Kind: kvd.CondVersionNe, Version: 9}, true, true},
		{"if-none-match version equal", kvd.Cond{Kind: kvd.CondVersionNe, Version: 1}, true, false},
		{"exists on present", kvd.Cond{Kind: kvd.CondExists}, true, true},
		{"exists on absent", kvd.Cond{Kind: kvd.CondExists}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := openTest(t)
			if tc.present {
				applyOne(t, db, 1, put("k", "old"))
			}
			c := put("k", "new")
			c.Cond = tc.cond
			r := applyOne(t, db, 2, c)
			if tc.ok {
				require.NoError(t, r[0].Err)
				require.Equal(t, uint64(2), r[0].Version)
				return
			}
			require.ErrorIs(t, r[0].Err, kvd.ErrPreconditionFailed)
			it, err := db.Get("k")
			if tc.present {
				require.NoError(t, err)
				require.Equal(t, "old", string(it.Value), "a failed condition must not write")
				require.Equal(t, uint64(1), r[0].Version, "a failed condition reports the current version")
			} else {
				require.ErrorIs(t, err, kvd.ErrNotFound)
			}
		})
	}
}

func TestStore_Scan(t *testing.T) {
	db := openTest(t)
	var cmds []Cmd
	for _, k := range []string{"a", "b/1", "b/2", "b/3", "c", "d"} {
		cmds = append(cmds, put(k, "v"+k))
	}
	applyOne(t, db, 1, cmds...)
	keys := func(items []kvd.Item) []string {
		var ks []string
		for _, it := range items {
			ks = append(ks, it.Key)
		}
		return ks
	}
	tests := []struct {
		o    kvd.ScanOptions
		want []string
		next string
	}{
		{kvd.ScanOptions{}, []string{"a", "b/1", "b/2", "b/3", "c", "d"}, ""},
		{kvd.ScanOptions{Prefix: "b/"}, []string{"b/1", "b/2", "b/3"}, ""},
		{kvd.ScanOptions{Prefix: "b/", Limit: 2}, []string{"b/1", "b/2"}, "b/3"},
		{kvd.ScanOptions{Prefix: "b/", Start: "b/2"}, []string{"b/2", "b/3"}, ""},
		{kvd.ScanOptions{Start: "b", End: "c"}, []string{"b/1", "b/2", "b/3"}, ""},
		{kvd.ScanOptions{Start: "b/3", Limit: 1}, []string{"b/3"}, "c"},
		{kvd.ScanOptions{Start: "c", Limit: 2}, []string{"c", "d"}, ""},
		{kvd.ScanOptions{Prefix: "zz"}, nil, ""},
		{kvd.ScanOptions{Prefix: "b/", End: "b/2"}, []string{"b/1"}, ""},
		// Each of b/1..b/3 is 7 bytes of key and value: a page keeps
		// within MaxBytes, but holds at least one item.
		{kvd.ScanOptions{Prefix: "b/", MaxBytes: 1}, []string{"b/1"}, "b/2"},
		{kvd.ScanOptions{Prefix: "b/", MaxBytes: 13}, []string{"b/1"}, "b/2"},
		{kvd.ScanOptions{Prefix: "b/", MaxBytes: 14}, []string{"b/1", "b/2"}, "b/3"},
		{kvd.ScanOptions{Prefix: "b/", MaxBytes: 21}, []string{"b/1", "b/2", "b/3"}, ""},
	}
	for _, tc := range tests {
		items, next, err := db.Scan(tc.o)
		require.NoError(t, err)
		require.Equal(t, tc.want, keys(items), "%+v", tc.o)
		require.Equal(t, tc.next, next, "%+v", tc.o)
	}
}

func TestStore_Apply_IdempotentAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := Open(path, DefaultOptions())
	require.NoError(t, err)
	entries := []Entry{
		{Index: 1, Term: 1, Batch: &Batch{Cmds: []Cmd{put("x", "1")}}},
		{Index: 2, Term: 1}, // a configuration entry
		{Index: 3, Term: 2, Batch: &Batch{Cmds: []Cmd{{Kind: CmdPut, Key: "x", Value: []byte("2"), Cond: kvd.Cond{Kind: kvd.CondVersionEq, Version: 1}}}}},
	}
	_, err = db.Apply(entries)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	// Raft replays the log after a restart: the same entries come again,
	// followed by a new one. The CAS at index 3 must not apply twice (it
	// would fail against version 3 if it did, but more to the point the
	// version must stay 3), and index 4 must apply.
	db, err = Open(path, DefaultOptions())
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, uint64(3), db.AppliedIndex())
	require.Equal(t, uint64(2), db.AppliedTerm())
	replay := append(entries, Entry{Index: 4, Term: 2, Batch: &Batch{Cmds: []Cmd{{Kind: CmdPut, Key: "y", Value: []byte("new")}}}})
	res, err := db.Apply(replay)
	require.NoError(t, err)
	require.Nil(t, res[0], "an entry at or below the applied index is skipped")
	require.Nil(t, res[2])
	require.Equal(t, uint64(4), res[3][0].Version)

	it, err := db.Get("x")
	require.NoError(t, err)
	require.Equal(t, "2", string(it.Value))
	require.Equal(t, uint64(3), it.Version)
	require.Equal(t, uint64(4), db.AppliedIndex())
}

func TestStore_SnapshotRestore_RoundTrip(t *testing.T) {
	src := openTest(t)
	for i := 1; i <= 100; i++ {
		applyOne(t, src, uint64(i), put(fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i)))
	}
	snap, err := src.Snapshot()
	require.NoError(t, err)
	// Applies after the snapshot was taken must not leak into it.
	applyOne(t, src, 101, put("late", "x"), Cmd{Kind: CmdDelete, Key: "k001"})
	var buf bytes.Buffer
	_, err = snap.WriteTo(&buf)
	require.NoError(t, err)
	require.NoError(t, snap.Close())
	require.Equal(t, uint64(100), snap.AppliedIndex())

	dst := openTest(t)
	applyOne(t, dst, 1, put("stale", "must vanish"))
	require.NoError(t, dst.Restore(bytes.NewReader(buf.Bytes())))
	require.Equal(t, uint64(100), dst.AppliedIndex())
	_, err = dst.Get("stale")
	require.ErrorIs(t, err, kvd.ErrNotFound, "restore discards the old state")
	_, err = dst.Get("late")
	require.ErrorIs(t, err, kvd.ErrNotFound, "snapshot must not contain later applies")
	items, _, err := dst.Scan(kvd.ScanOptions{})
	require.NoError(t, err)
	require.Len(t, items, 100)
	it, err := dst.Get("k001")
	require.NoError(t, err)
	require.Equal(t, "v1", string(it.Value))
	require.Equal(t, uint64(1), it.Version)

	// The restored store keeps applying from the snapshot's index.
	r := applyOne(t, dst, 101, put("k001", "new"))
	require.Equal(t, uint64(101), r[0].Version)
}

func TestStore_Restore_RejectsGarbageAndKeepsState(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("keep", "me"))
	for _, bad := range [][]byte{nil, []byte("nonsense"), append([]byte(snapshotMagic), make([]byte, 16+100)...)} {
		err := db.Restore(bytes.NewReader(bad))
		require.Error(t, err)
		require.True(t, errors.Is(err, errBadSnapshot), "got %v", err)
	}
	it, err := db.Get("keep")
	require.NoError(t, err)
	require.Equal(t, "me", string(it.Value))
	_, err = os.Stat(db.Path() + ".restore")
	require.True(t, os.IsNotExist(err), "temporary restore file must be removed")
}

func TestStore_SetMap_KeepsNewestEpoch(t *testing.T) {
	db := openTest(t)
	m := kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: "h", Raft: "r"}}, Groups: 1, Replicas: 1}.Map()
	m.Epoch = 2
	b2, _ := json.Marshal(m)
	m.Epoch = 1
	b1, _ := json.Marshal(m)
	applyOne(t, db, 1, Cmd{Kind: CmdSetMap, Data: b2})
	applyOne(t, db, 2, Cmd{Kind: CmdSetMap, Data: b1})
	require.Equal(t, uint64(2), db.Map().Epoch)
}

func TestBatch_EncodeDecode(t *testing.T) {
	b := &Batch{Time: -42, Origin: 1 << 60, Seq: 7, Cmds: []Cmd{
		{Kind: CmdNoop},
		{Kind: CmdPut, Key: "k/ü", Value: []byte{0, 1, 2}, Cond: kvd.Cond{Kind: kvd.CondVersionEq, Version: 7}},
		{Kind: CmdPut, Key: "e", Value: []byte{}},
		{Kind: CmdDelete, Key: "d", Cond: kvd.Cond{Kind: kvd.CondExists}},
		{Kind: CmdSetMap, Data: []byte(`{"epoch":1}`)},
	}}
	got, err := DecodeBatch(b.AppendEncode(nil))
	require.NoError(t, err)
	require.Equal(t, b.Time, got.Time)
	require.Equal(t, b.Origin, got.Origin)
	require.Equal(t, b.Seq, got.Seq)
	require.Len(t, got.Cmds, len(b.Cmds))
	for i := range b.Cmds {
		require.Equal(t, b.Cmds[i].Kind, got.Cmds[i].Kind)
		require.Equal(t, b.Cmds[i].Key, got.Cmds[i].Key)
		require.Equal(t, b.Cmds[i].Cond, got.Cmds[i].Cond)
		require.Equal(t, string(b.Cmds[i].Value), string(got.Cmds[i].Value))
		require.Equal(t, string(b.Cmds[i].Data), string(got.Cmds[i].Data))
	}
	enc := b.AppendEncode(nil)
	for n := 0; n < len(enc); n++ {
		_, err := DecodeBatch(enc[:n])
		require.Error(t, err, "truncated at %d", n)
	}
}

func TestStore_Restore_WhileASnapshotIsOpen(t *testing.T) {
	// raft may still stream a snapshot of this replica while the FSM
	// restores one from the leader: Restore must not wait for it (that
	// wait is a deadlock inside raft), and the open snapshot must still
	// stream the old state.
	src := openTest(t)
	applyOne(t, src, 10, put("new", "state"))
	var buf bytes.Buffer
	snap, err := src.Snapshot()
	require.NoError(t, err)
	_, err = snap.WriteTo(&buf)
	require.NoError(t, err)
	snap.Close()

	db := openTest(t)
	applyOne(t, db, 1, put("old", "state"))
	open, err := db.Snapshot()
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- db.Restore(bytes.NewReader(buf.Bytes())) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("restore waited for an open snapshot")
	}
	_, err = db.Get("new")
	require.NoError(t, err)
	var old bytes.Buffer
	_, err = open.WriteTo(&old)
	require.NoError(t, err, "the open snapshot still streams the old state")
	require.NoError(t, open.Close())
	restored := openTest(t)
	require.NoError(t, restored.Restore(bytes.NewReader(old.Bytes())))
	_, err = restored.Get("old")
	require.NoError(t, err)
	require.Equal(t, uint64(1), restored.AppliedIndex())
}

func TestStore_LazySync_CleanCloseKeepsStateACrashDiscardsIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	opts := DefaultOptions()
	opts.NoSync = true
	db, err := Open(path, opts)
	require.NoError(t, err)
	require.FileExists(t, path+".dirty", "marked dirty while open")
	applyOne(t, db, 1, put("x", "1"))
	require.NoError(t, db.Close())
	require.NoFileExists(t, path+".dirty", "a clean close syncs and unmarks")

	db, err = Open(path, opts)
	require.NoError(t, err)
	require.Equal(t, uint64(1), db.AppliedIndex(), "kept across a clean restart")
	applyOne(t, db, 2, put("y", "2"))
	// A crash: the process ends without Close (the file handle is closed
	// under it here, so the test can reopen the file).
	db.handleMu.Lock()
	require.NoError(t, db.h.bdb.Close())
	db.h = nil
	db.handleMu.Unlock()

	db, err = Open(path, opts)
	require.NoError(t, err)
	defer db.Close()
	require.Zero(t, db.AppliedIndex(), "a dirty state is discarded, to be rebuilt from the snapshot and the log")
	_, err = db.Get("x")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	// Replaying the log rebuilds it.
	applyOne(t, db, 1, put("x", "1"))
	applyOne(t, db, 2, put("y", "2"))
	it, err := db.Get("y")
	require.NoError(t, err)
	require.Equal(t, uint64(2), it.Version)
}

// Replicas group log entries into Apply calls differently (the leader and
// a follower get different batches); the retained history and its floor
// must not depend on that.
func TestStore_HistoryPruningIsTheSameWhateverTheBatching(t *testing.T) {
	opts := DefaultOptions()
	opts.HistoryMax, opts.HistoryMaxBytes = 40, 3000
	var entries []Entry
	for i := range 300 {
		var cmds []Cmd
		for j := range 1 + i%4 {
			cmds = append(cmds, put(fmt.Sprintf("k%d-%d", i%17, j), strings.Repeat("v", (i*7+j)%90)))
		}
		entries = append(entries, Entry{Index: uint64(i + 1), Term: 1, Batch: &Batch{Time: int64(i), Cmds: cmds}})
	}
	histories := map[int]string{}
	for _, batch := range []int{1, 7, 64, 300} {
		db, err := Open(filepath.Join(t.TempDir(), "state.db"), opts)
		require.NoError(t, err)
		for i := 0; i < len(entries); i += batch {
			_, err := db.Apply(entries[i:min(i+batch, len(entries))])
			require.NoError(t, err)
		}
		evs, upto, floor, err := db.History(Pos{}, "", 1000, 0)
		require.NoError(t, err)
		var b strings.Builder
		fmt.Fprintf(&b, "floor %s upto %s:", floor, upto)
		for _, e := range evs {
			fmt.Fprintf(&b, " %s=%s", e.Pos, e.Key)
		}
		histories[batch] = b.String()
		count, size := db.HistorySize()
		require.Equal(t, uint64(len(evs)), count, "the history's own count")
		require.LessOrEqual(t, size, uint64(3000), "within the byte bound")
		require.Positive(t, size)
		require.NoError(t, db.Close())
		require.LessOrEqual(t, len(evs), 40)
	}
	for _, batch := range []int{7, 64, 300} {
		require.Equal(t, histories[1], histories[batch], "batches of %d", batch)
	}
}
