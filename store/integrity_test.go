package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testkit/damage"
)

func TestStore_Seal_DamagedValueIsReportedNotServed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := Open(path, DefaultOptions())
	require.NoError(t, err)
	secret := "value-that-will-be-damaged-on-disk-0123456789"
	applyOne(t, db, 1, put("victim", secret), put("bystander", "fine"))
	require.NoError(t, db.Close())
	require.Positive(t, damage.Flip(t, path, secret))

	var reported []error
	opts := DefaultOptions()
	opts.OnCorrupt = func(err error) { reported = append(reported, err) }
	db, err = Open(path, opts)
	require.NoError(t, err)
	defer db.Close()

	_, err = db.Get("victim")
	require.ErrorIs(t, err, ErrCorrupt, "a damaged value must not be served")
	require.ErrorIs(t, err, kvd.ErrUnavailable, "corruption is served as unavailable: another replica can answer")
	require.NotEmpty(t, reported, "the damage is reported")
	it, err := db.Get("bystander")
	require.NoError(t, err)
	require.Equal(t, "fine", string(it.Value))
	_, _, err = db.Scan(kvd.ScanOptions{})
	require.ErrorIs(t, err, ErrCorrupt, "a scan over the damaged value fails too")
	_, err = db.Verify()
	require.ErrorIs(t, err, ErrCorrupt)

	// Applying a command that reads the damaged value fails as a whole:
	// nothing of the batch is applied, and the index does not move.
	_, err = db.Apply([]Entry{{Index: 2, Term: 1, Batch: &Batch{Cmds: []Cmd{put("other", "x"), {Kind: CmdPut, Key: "victim", Value: []byte("y"), Cond: kvd.Cond{Kind: kvd.CondVersionEq, Version: 1}}}}}})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Equal(t, uint64(1), db.AppliedIndex())
	_, err = db.Get("other")
	require.ErrorIs(t, err, kvd.ErrNotFound)
}

func TestStore_Verify_FindsALostEntry(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("a", "1"), put("b", "2"))
	r, err := db.Verify()
	require.NoError(t, err)
	require.Equal(t, uint64(1), r.Applied)
	require.Equal(t, r.Stored, r.Hash)

	// Remove an entry behind the store's back: every remaining value is
	// intact, only the sum tells.
	db.handleMu.RLock()
	require.NoError(t, db.h.bdb.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketKV).Delete([]byte("b")) }))
	db.handleMu.RUnlock()
	_, err = db.Verify()
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), "state hash")
}

func TestStore_StateHash_SameForEveryBatching(t *testing.T) {
	// Two replicas apply the same entries, batched differently, with a
	// transaction, a delete, an expiry and an idempotent write among
	// them: their hashes agree at every index both stop at.
	entries := []Entry{
		{Index: 1, Term: 1, Batch: &Batch{Time: 1, Cmds: []Cmd{put("a", "1"), put("b", "2")}}},
		{Index: 2, Term: 1, Batch: &Batch{Time: 2, Cmds: []Cmd{{Kind: CmdPut, Key: "t", Value: []byte("x"), TTL: 5, Idem: &kvd.Idem{Key: "tok", FP: []byte("fp")}}}}},
		{Index: 3, Term: 1, Batch: &Batch{Time: 10, Cmds: []Cmd{{Kind: CmdExpire, Key: "t", Cond: ExpireCond(2)}, {Kind: CmdDelete, Key: "a"}}}},
		{Index: 4, Term: 2, Batch: &Batch{Time: 11, Cmds: []Cmd{doc(t, CmdTxnPrepare, TxnPrepare{ID: "tx1", RecordGroup: 1, Deadline: 1 << 40,
			Participants: []kvd.GroupID{1}, Ops: []TxnOp{{Op: "put", Key: "b", Value: []byte("3")}}})}}},
		{Index: 5, Term: 2, Batch: &Batch{Time: 12, Cmds: []Cmd{doc(t, CmdTxnDecide, TxnDecide{ID: "tx1", Commit: true, ResolveHere: true}), {Kind: CmdHashCheck}}}},
	}
	one, many := openTest(t), openTest(t)
	_, err := one.Apply(entries)
	require.NoError(t, err)
	for _, e := range entries {
		_, err := many.Apply([]Entry{e})
		require.NoError(t, err)
	}
	require.Equal(t, one.StateHash(), many.StateHash())
	i1, h1, err := one.HashCheck()
	require.NoError(t, err)
	i2, h2, err := many.HashCheck()
	require.NoError(t, err)
	require.Equal(t, uint64(5), i1)
	require.Equal(t, [2]uint64{i1, h1}, [2]uint64{i2, h2})
	for _, db := range []*DB{one, many} {
		r, err := db.Verify()
		require.NoError(t, err)
		require.Equal(t, db.StateHash(), r.Hash)
	}

	// A state that differs by one value has another hash.
	other := openTest(t)
	changed := append([]Entry(nil), entries...)
	changed[0] = Entry{Index: 1, Term: 1, Batch: &Batch{Time: 1, Cmds: []Cmd{put("a", "1"), put("b", "2!")}}}
	_, err = other.Apply(changed)
	require.NoError(t, err)
	require.NotEqual(t, one.StateHash(), other.StateHash())
}

func doc(t *testing.T, kind CmdKind, v any) Cmd {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return Cmd{Kind: kind, Data: b}
}

func TestStore_Apply_InvalidCommandsFailAlikeAndWriteNothing(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	m := (&kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: "h", Raft: "r"}}, Groups: 2, Replicas: 1}).Map()
	mapData, err := json.Marshal(m)
	require.NoError(t, err)
	// A key of group 1 and one of group 2 (slots 0..511 and 512..1023).
	var mine, theirs string
	for i := 0; mine == "" || theirs == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		if kvd.Slot(k) < 512 {
			mine = k
		} else {
			theirs = k
		}
	}
	tests := []struct {
		name string
		cmd  Cmd
		want error
	}{
		{"empty key", Cmd{Kind: CmdPut, Key: ""}, kvd.ErrInvalid},
		{"key over bbolt's limit", Cmd{Kind: CmdPut, Key: string(bytes.Repeat([]byte("k"), kvd.MaxKeyBytesLimit+1))}, kvd.ErrTooLarge},
		{"key of another group", Cmd{Kind: CmdPut, Key: theirs, Value: []byte("x")}, kvd.ErrWrongGroup},
		{"delete of another group's key", Cmd{Kind: CmdDelete, Key: theirs}, kvd.ErrWrongGroup},
		{"negative ttl", Cmd{Kind: CmdPut, Key: mine, TTL: -1}, kvd.ErrInvalid},
		{"ttl past the clock", Cmd{Kind: CmdPut, Key: mine, TTL: math.MaxInt64}, kvd.ErrInvalid},
		{"empty idempotency key", Cmd{Kind: CmdPut, Key: mine, Idem: &kvd.Idem{}}, kvd.ErrInvalid},
		{"prepare far in the future", doc(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: now + int64(100*365*24*time.Hour),
			Ops: []TxnOp{{Op: "put", Key: mine}}}), kvd.ErrInvalid},
		{"prepare without id", doc(t, CmdTxnPrepare, TxnPrepare{RecordGroup: 1, Deadline: now + 1, Ops: []TxnOp{{Op: "put", Key: mine}}}), kvd.ErrInvalid},
		{"prepare of an empty key", doc(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: now + 1, Ops: []TxnOp{{Op: "put", Key: ""}}}), kvd.ErrInvalid},
		{"prepare of another group's key", doc(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: now + 1, Ops: []TxnOp{{Op: "put", Key: theirs}}}), kvd.ErrWrongGroup},
		{"prepare naming a record group the map lacks", doc(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 5, Deadline: now + 1, Ops: []TxnOp{{Op: "put", Key: mine}}}), kvd.ErrInvalid},
		{"prepare naming a participant the map lacks", doc(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: now + 1,
			Participants: []kvd.GroupID{1, 5}, Ops: []TxnOp{{Op: "put", Key: mine}}}), kvd.ErrInvalid},
		{"one-phase writing a key twice", doc(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "put", Key: mine}, {Op: "add", Key: mine, Delta: 1}}}), kvd.ErrInvalid},
		{"one-phase with an unknown op", doc(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "rename", Key: mine}}}), kvd.ErrInvalid},
		{"one-phase of an empty key", doc(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "put", Key: ""}}}), kvd.ErrInvalid},
		{"undecodable document", Cmd{Kind: CmdTxnResolve, Data: []byte("{")}, kvd.ErrInvalid},
		{"resolve without id", doc(t, CmdTxnResolve, TxnResolve{Commit: true}), kvd.ErrInvalid},
		{"registration in the wrong group", doc(t, CmdDedupRegister, DedupRegister{Idem: kvd.Idem{Key: theirs, FP: []byte("f")}}), kvd.ErrWrongGroup},
		{"unknown kind", Cmd{Kind: 99}, kvd.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.Group = 1
			db, err := Open(filepath.Join(t.TempDir(), "state.db"), opts)
			require.NoError(t, err)
			defer db.Close()
			_, err = db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{{Kind: CmdSetMap, Data: mapData}}}}})
			require.NoError(t, err)
			hash := db.StateHash()
			res, err := db.Apply([]Entry{{Index: 2, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{tc.cmd, put(mine, "after")}}}})
			require.NoError(t, err, "an invalid command must never stop the replica")
			require.ErrorIs(t, res[0][0].Err, tc.want)
			require.NoError(t, res[0][1].Err, "the rest of the entry applies")
			items, _, err := db.Scan(kvd.ScanOptions{})
			require.NoError(t, err)
			require.Len(t, items, 1, "only the valid put wrote: %v", items)
			locks, err := db.Locks()
			require.NoError(t, err)
			require.Empty(t, locks)
			require.NotEqual(t, hash, db.StateHash())
		})
	}
}

func TestStore_Apply_TTLPastTheClockNeverExpiresEarly(t *testing.T) {
	// A deadline past the end of int64 nanoseconds must not wrap around
	// into the past (the key would vanish at once).
	db := openTest(t)
	now := int64(math.MaxInt64 - int64(time.Minute))
	res, err := db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{{Kind: CmdPut, Key: "k", Value: []byte("v"), TTL: int64(time.Hour)}}}}})
	require.NoError(t, err)
	require.NoError(t, res[0][0].Err)
	due, err := db.Expired(now, 10)
	require.NoError(t, err)
	require.Empty(t, due)
}

func TestStore_Recover_ForceAbortsAPendingTransaction(t *testing.T) {
	db := openTest(t)
	now := time.Now().UnixNano()
	prep := doc(t, CmdTxnPrepare, TxnPrepare{ID: "stuck", RecordGroup: 1, Deadline: now + int64(time.Minute), Participants: []kvd.GroupID{1},
		Ops: []TxnOp{{Op: "put", Key: "a", Value: []byte("v")}}})
	res, err := db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{prep}}}})
	require.NoError(t, err)
	require.True(t, res[0][0].Txn.Vote)
	res, err = db.Apply([]Entry{{Index: 2, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{doc(t, CmdTxnRecover, TxnRecover{ID: "stuck"})}}}})
	require.NoError(t, err)
	require.Equal(t, TxnPending, res[0][0].Txn.State, "before its deadline a plain recovery leaves it")
	res, err = db.Apply([]Entry{{Index: 3, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{doc(t, CmdTxnRecover, TxnRecover{ID: "stuck", Force: true})}}}})
	require.NoError(t, err)
	require.Equal(t, TxnAborted, res[0][0].Txn.State)
}

func TestStore_DecodeBatch_DamagedEntryIsCorrupt(t *testing.T) {
	b := Batch{Time: 1, Cmds: []Cmd{put("k", "the-value-in-the-log")}}
	enc := b.AppendEncode(nil)
	_, err := DecodeBatch(enc)
	require.NoError(t, err)
	i := bytes.Index(enc, []byte("the-value"))
	enc[i] ^= 1
	_, err = DecodeBatch(enc)
	require.ErrorIs(t, err, ErrCorrupt)
	require.ErrorIs(t, err, ErrBadBatch)
	_, err = DecodeBatch([]byte{0x7f, 1, 2})
	require.ErrorIs(t, err, ErrBadBatch)
	require.NotErrorIs(t, err, ErrCorrupt, "an unknown format is not a checksum failure")
}

func TestStore_Open_DamagedMetaPagesAreMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	db, err := Open(path, DefaultOptions())
	require.NoError(t, err)
	applyOne(t, db, 1, put("a", "1"))
	require.NoError(t, db.Close())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	st, err := f.Stat()
	require.NoError(t, err)
	page := int64(os.Getpagesize())
	require.Greater(t, st.Size(), 2*page)
	junk := bytes.Repeat([]byte{0xAB}, 64)
	for _, off := range []int64{16, page + 16} { // both meta pages
		_, err := f.WriteAt(junk, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())

	db, err = Open(path, DefaultOptions())
	require.NoError(t, err, "a state that will not open is replaced, not fatal")
	defer db.Close()
	require.Equal(t, uint64(0), db.AppliedIndex(), "the new state starts empty, to be rebuilt")
	aside, err := filepath.Glob(path + ".corrupt-*")
	require.NoError(t, err)
	require.Len(t, aside, 1, "the damaged file is kept for inspection")
}

func TestStore_Restore_RefusesADamagedSnapshot(t *testing.T) {
	src := openTest(t)
	applyOne(t, src, 1, put("k", "a-value-we-will-damage-in-flight"))
	snap, err := src.Snapshot()
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = snap.WriteTo(&buf)
	require.NoError(t, err)
	require.NoError(t, snap.Close())
	b := buf.Bytes()
	i := bytes.Index(b, []byte("a-value-we-will-damage"))
	require.Positive(t, i)
	b[i+3] ^= 0x40

	dst := openTest(t)
	applyOne(t, dst, 1, put("mine", "kept"))
	err = dst.Restore(bytes.NewReader(b))
	require.ErrorIs(t, err, ErrCorrupt)
	it, err := dst.Get("mine")
	require.NoError(t, err, "a refused snapshot leaves the state as it was")
	require.Equal(t, "kept", string(it.Value))
}

// An operator's abort ahead of the deadline keeps the aborted record until
// then: a prepare still on its way must find it and vote no, or the
// coordinator could commit after the other groups' locks were dropped.
func TestStore_ForcedAbortRecordOutlivesLatePrepares(t *testing.T) {
	db := openTest(t)
	now := time.Now().UnixNano()
	dl := now + int64(10*time.Second)
	apply := func(i uint64, c Cmd) Result {
		t.Helper()
		r, err := db.Apply([]Entry{{Index: i, Term: 1, Batch: &Batch{Time: now + int64(i), Cmds: []Cmd{c}}}})
		require.NoError(t, err)
		return r[0][0]
	}
	apply(1, doc(t, CmdTxnRecover, TxnRecover{ID: "T", Force: true})) // no record yet, no deadline known
	require.Equal(t, TxnAborted, apply(2, doc(t, CmdTxnForget, TxnForget{ID: "T"})).Txn.State, "not forgotten before any prepare's deadline")
	r := apply(3, doc(t, CmdTxnPrepare, TxnPrepare{ID: "T", RecordGroup: 1, Deadline: dl, Participants: []kvd.GroupID{1, 2},
		Ops: []TxnOp{{Op: "put", Key: "a", Value: []byte("v")}}}))
	require.False(t, r.Txn.Vote, "the late prepare finds the abort")
	d := apply(4, doc(t, CmdTxnDecide, TxnDecide{ID: "T", Commit: true, ResolveHere: true}))
	require.Equal(t, TxnAborted, d.Txn.State)
}

// A one-phase transaction that meets an idempotency key held by a
// transaction over several groups is answered (a conflict), never left
// failing on every replica.
func TestStore_OnePhaseMeetingAClaimedKeyIsAConflict(t *testing.T) {
	db := openTest(t)
	idem := kvd.Idem{Key: "idem-1", FP: []byte("fp")}
	_, err := db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: 1, Cmds: []Cmd{doc(t, CmdDedupClaim, DedupClaim{Idem: idem, Txn: "t1"})}}}})
	require.NoError(t, err)
	op := doc(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "put", Key: "a", Value: []byte("v")}}, Idem: &idem})
	other := kvd.Idem{Key: "idem-1", FP: []byte("another request")}
	res, err := db.Apply([]Entry{{Index: 2, Term: 1, Batch: &Batch{Time: 2, Cmds: []Cmd{op, {Kind: CmdPut, Key: "b", Idem: &idem}, {Kind: CmdPut, Key: "c", Idem: &other}}}}})
	require.NoError(t, err)
	require.Equal(t, CodeConflict, res[0][0].Txn.Code)
	require.ErrorIs(t, res[0][1].Err, kvd.ErrConflict, "a plain write under the claimed key: nothing applied")
	require.ErrorIs(t, res[0][2].Err, kvd.ErrIdempotencyMismatch, "a different request under the key")
	_, err = db.Get("a")
	require.ErrorIs(t, err, kvd.ErrNotFound)
}

// The longest key CheckCmd accepts, with a time to live (its expiry index
// key is 8 bytes longer), is one bbolt stores.
func TestStore_LongestKeyWithATTLApplies(t *testing.T) {
	db := openTest(t)
	c := Cmd{Kind: CmdPut, Key: strings.Repeat("k", kvd.MaxKeyBytesLimit), Value: []byte("v"), TTL: int64(time.Hour)}
	_, err := db.CheckCmd(&c, 1, nil)
	require.NoError(t, err)
	res, err := db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: 1, Cmds: []Cmd{c}}}})
	require.NoError(t, err)
	require.NoError(t, res[0][0].Err)
	c.Key += "k"
	_, err = db.CheckCmd(&c, 1, nil)
	require.ErrorIs(t, err, kvd.ErrTooLarge)
}

// A state replaced by raft with a snapshot older than it (a repair took it
// further) is kept.
func TestStore_RestoreIfNewerKeepsANewerState(t *testing.T) {
	src := openTest(t)
	applyOne(t, src, 5, put("k", "old"))
	snap, err := src.Snapshot()
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = snap.WriteTo(&buf)
	require.NoError(t, err)
	require.NoError(t, snap.Close())

	dst := openTest(t)
	applyOne(t, dst, 9, put("k", "new"))
	restored, err := dst.RestoreIfNewer(bytes.NewReader(buf.Bytes()))
	require.NoError(t, err)
	require.False(t, restored)
	it, err := dst.Get("k")
	require.NoError(t, err)
	require.Equal(t, "new", string(it.Value))
	require.Equal(t, uint64(9), dst.AppliedIndex())
}
