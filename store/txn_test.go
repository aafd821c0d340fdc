package store

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

// txnCmd builds a transaction command.
func txnCmd(t *testing.T, kind CmdKind, payload any) Cmd {
	t.Helper()
	b, err := json.Marshal(payload)
	require.NoError(t, err)
	return Cmd{Kind: kind, Data: b}
}

// applyAt applies one command at index with the leader clock at now.
func applyAt(t *testing.T, db *DB, index uint64, now int64, c Cmd) Result {
	t.Helper()
	res, err := db.Apply([]Entry{{Index: index, Term: 1, Batch: &Batch{Time: now, Cmds: []Cmd{c}}}})
	require.NoError(t, err)
	return res[0][0]
}

func ver(v uint64) *uint64 { return &v }
func boolp(b bool) *bool   { return &b }

func TestTxn_PrepareLocksAndVotes(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("a", "1"))
	r := applyAt(t, db, 2, 100, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t1", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1, 2},
		Compares: []TxnCompare{{Index: 0, Key: "a", Version: ver(1)}},
		Ops:      []TxnOp{{Index: 0, Op: "get", Key: "a"}, {Index: 1, Op: "put", Key: "b", Value: []byte("x")}}}))
	require.True(t, r.Txn.Vote, "%+v", r.Txn)
	require.Equal(t, TxnPending, r.Txn.State)
	require.Equal(t, []TxnRead{{Index: 0, Found: true, Value: []byte("1"), Version: 1}}, r.Txn.Reads)

	// b carries t1's intent; its committed value is still absent.
	_, found, lock, err := db.GetLocked("b")
	require.NoError(t, err)
	require.False(t, found)
	require.Equal(t, "t1", lock.Txn)
	require.Equal(t, "x", string(lock.Value))
	rec, ok, err := db.Record("t1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, TxnPending, rec.State)

	// Plain writes to locked keys wait: conflict, nothing written.
	r = applyAt(t, db, 3, 100, put("b", "plain"))
	require.ErrorIs(t, r.Err, kvd.ErrConflict)
	r = applyAt(t, db, 4, 100, put("a", "plain")) // a is read-locked
	require.ErrorIs(t, r.Err, kvd.ErrConflict)

	// Preparing the same transaction again is harmless.
	r = applyAt(t, db, 5, 100, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t1", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1, 2},
		Ops: []TxnOp{{Index: 1, Op: "put", Key: "b", Value: []byte("x")}}}))
	require.True(t, r.Txn.Vote)
}

func TestTxn_LockConflicts(t *testing.T) {
	prep := func(id string, ops ...TxnOp) Cmd {
		b, _ := json.Marshal(TxnPrepare{ID: id, RecordGroup: 9, Deadline: 1000, Ops: ops})
		return Cmd{Kind: CmdTxnPrepare, Data: b}
	}
	get := TxnOp{Op: "get", Key: "k"}
	wr := TxnOp{Op: "put", Key: "k", Value: []byte("v")}
	tests := []struct {
		name          string
		first, second TxnOp
		ok            bool
	}{
		{"read/read share", get, get, true},
		{"read then write", get, wr, false},
		{"write then read", wr, get, false},
		{"write then write", wr, wr, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := openTest(t)
			require.True(t, applyAt(t, db, 1, 1, prep("t1", tc.first)).Txn.Vote)
			r := applyAt(t, db, 2, 1, prep("t2", tc.second))
			require.Equal(t, tc.ok, r.Txn.Vote, "%+v", r.Txn)
			if !tc.ok {
				require.Equal(t, CodeConflict, r.Txn.Code)
				require.Equal(t, "t1", r.Txn.Conflicts[0].Txn, "fails fast naming the holder")
			}
		})
	}
}

func TestTxn_CompareFailureAbortsTheRecordAndLocksNothing(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("a", "1"))
	r := applyAt(t, db, 2, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1, 2},
		Compares: []TxnCompare{
			{Index: 0, Key: "a", Value: []byte("1")},
			{Index: 1, Key: "a", Version: ver(7)},
			{Index: 2, Key: "z", Exists: boolp(true)},
			{Index: 3, Key: "z", Exists: boolp(false)},
		},
		Ops: []TxnOp{{Index: 0, Op: "put", Key: "a", Value: []byte("2")}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeCompareFailed, r.Txn.Code)
	require.Equal(t, []int{1, 2}, r.Txn.Failed)
	rec, _, _ := db.Record("t")
	require.Equal(t, TxnAborted, rec.State, "a no vote in the record group aborts the record")
	_, _, lock, _ := db.GetLocked("a")
	require.Nil(t, lock)
	require.NoError(t, applyAt(t, db, 3, 1, put("a", "free")).Err)
}

func TestTxn_DecideCommitResolvesInTheSameEntry(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("gone", "x"))
	p := applyAt(t, db, 2, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1}, VersionAtPrepare: true,
		Ops: []TxnOp{{Index: 0, Op: "put", Key: "a", Value: []byte("new")}, {Index: 1, Op: "delete", Key: "gone"}}}))
	r := applyAt(t, db, 3, 2, txnCmd(t, CmdTxnDecide, TxnDecide{ID: "t", Commit: true, ResolveHere: true}))
	require.Equal(t, TxnCommitted, r.Txn.State)
	it, err := db.Get("a")
	require.NoError(t, err)
	require.Equal(t, "new", string(it.Value))
	require.Equal(t, uint64(2), it.Version, "the version is the index of the entry that prepared the write")
	require.Equal(t, uint64(2), p.Txn.Writes[0].Version, "and the vote says so")
	_, err = db.Get("gone")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	_, _, lock, _ := db.GetLocked("a")
	require.Nil(t, lock)

	// Deciding again changes nothing and reports the decision.
	r = applyAt(t, db, 4, 3, txnCmd(t, CmdTxnDecide, TxnDecide{ID: "t", Commit: false, ResolveHere: true}))
	require.Equal(t, TxnCommitted, r.Txn.State)
	it, _ = db.Get("a")
	require.Equal(t, uint64(2), it.Version)
	// A plain write after it takes a higher version.
	require.Equal(t, uint64(5), applyAt(t, db, 5, 3, put("a", "later")).Version)
}

func TestTxn_ResolveAtAParticipant(t *testing.T) {
	for _, commit := range []bool{true, false} {
		db := openTest(t)
		applyOne(t, db, 1, put("k", "old"))
		applyAt(t, db, 2, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 5, Deadline: 1000, VersionAtPrepare: true,
			Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("new")}, {Op: "get", Key: "r"}}}))
		r := applyAt(t, db, 3, 2, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t", Commit: commit}))
		it, _ := db.Get("k")
		if commit {
			require.Equal(t, "new", string(it.Value))
			require.Equal(t, uint64(2), it.Version, "the prepare's version")
			require.Len(t, r.Txn.Writes, 1)
		} else {
			require.Equal(t, "old", string(it.Value))
			require.Empty(t, r.Txn.Writes)
		}
		// Idempotent: a second resolution finds nothing to do.
		r = applyAt(t, db, 4, 2, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t", Commit: commit}))
		require.Empty(t, r.Txn.Writes)
		it2, _ := db.Get("k")
		require.Equal(t, it.Version, it2.Version)
		require.NoError(t, applyAt(t, db, 5, 2, put("r", "free")).Err, "read locks are gone too")
	}
}

func TestTxn_RecoverAbortsExpiredAndBeatsALateCommit(t *testing.T) {
	db := openTest(t)
	applyAt(t, db, 1, 10, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 100, Participants: []kvd.GroupID{1, 2},
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v")}}}))
	// Before the deadline recovery leaves it pending.
	r := applyAt(t, db, 2, 50, txnCmd(t, CmdTxnRecover, TxnRecover{ID: "t", Deadline: 100}))
	require.Equal(t, TxnPending, r.Txn.State)
	// After it, recovery aborts through the log...
	r = applyAt(t, db, 3, 150, txnCmd(t, CmdTxnRecover, TxnRecover{ID: "t", Deadline: 100}))
	require.Equal(t, TxnAborted, r.Txn.State)
	// ...and the coordinator's late commit loses.
	r = applyAt(t, db, 4, 160, txnCmd(t, CmdTxnDecide, TxnDecide{ID: "t", Commit: true, ResolveHere: true}))
	require.Equal(t, TxnAborted, r.Txn.State)
	_, err := db.Get("k")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	_, _, lock, _ := db.GetLocked("k")
	require.Nil(t, lock, "the losing commit's resolution dropped the intent")
}

func TestTxn_RecoverOfAnAbsentRecord(t *testing.T) {
	db := openTest(t)
	r := applyAt(t, db, 1, 50, txnCmd(t, CmdTxnRecover, TxnRecover{ID: "t", Deadline: 100}))
	require.Equal(t, TxnAbsent, r.Txn.State, "it may still be on its way")
	r = applyAt(t, db, 2, 150, txnCmd(t, CmdTxnRecover, TxnRecover{ID: "t", Deadline: 100}))
	require.Equal(t, TxnAborted, r.Txn.State, "past the deadline an absent record is created aborted")
	// The coordinator's delayed record-group prepare can no longer win.
	r = applyAt(t, db, 3, 60, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 100, Participants: []kvd.GroupID{1},
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v")}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeAborted, r.Txn.Code)
}

func TestTxn_PrepareAfterTheDeadlineIsRefused(t *testing.T) {
	db := openTest(t)
	r := applyAt(t, db, 1, 200, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 2, Deadline: 100,
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v")}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeExpired, r.Txn.Code)
	_, _, lock, _ := db.GetLocked("k")
	require.Nil(t, lock)
}

func TestTxn_OnePhase(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("a", "1"))
	r := applyAt(t, db, 2, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{
		Compares: []TxnCompare{{Index: 0, Key: "a", Version: ver(1)}},
		Ops:      []TxnOp{{Index: 0, Op: "get", Key: "a"}, {Index: 1, Op: "put", Key: "b", Value: []byte("2")}, {Index: 2, Op: "delete", Key: "a"}}}))
	require.True(t, r.Txn.Vote)
	require.Equal(t, "1", string(r.Txn.Reads[0].Value), "gets see the state before the transaction's writes")
	it, _ := db.Get("b")
	require.Equal(t, uint64(2), it.Version)
	_, err := db.Get("a")
	require.ErrorIs(t, err, kvd.ErrNotFound)

	r = applyAt(t, db, 3, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Compares: []TxnCompare{{Index: 0, Key: "b", Version: ver(1)}},
		Ops: []TxnOp{{Index: 0, Op: "put", Key: "b", Value: []byte("3")}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, []int{0}, r.Txn.Failed)

	// Another transaction's lock stops a one-phase transaction too.
	applyAt(t, db, 4, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 2, Deadline: 100, Ops: []TxnOp{{Op: "put", Key: "b", Value: []byte("x")}}}))
	r = applyAt(t, db, 5, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Index: 0, Op: "get", Key: "b"}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeConflict, r.Txn.Code)
}

func TestTxn_ForgetAndJanitorViews(t *testing.T) {
	db := openTest(t)
	applyAt(t, db, 1, 10, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 100, Participants: []kvd.GroupID{1},
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v")}}}))
	r := applyAt(t, db, 2, 10, txnCmd(t, CmdTxnForget, TxnForget{ID: "t"}))
	require.Equal(t, TxnPending, r.Txn.State, "a pending record is never forgotten")

	exp, err := db.ExpiredLocks(50)
	require.NoError(t, err)
	require.Empty(t, exp)
	exp, err = db.ExpiredLocks(150)
	require.NoError(t, err)
	require.Len(t, exp, 1)
	require.Equal(t, "t", exp[0].Txn)
	wl, err := db.WriteLocks(kvd.ScanOptions{Prefix: "k"})
	require.NoError(t, err)
	require.Contains(t, wl, "k")

	applyAt(t, db, 3, 200, txnCmd(t, CmdTxnRecover, TxnRecover{ID: "t", Deadline: 100}))
	applyAt(t, db, 4, 200, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t"}))
	r = applyAt(t, db, 5, 200, txnCmd(t, CmdTxnForget, TxnForget{ID: "t"}))
	require.Equal(t, TxnAbsent, r.Txn.State)
	recs, err := db.Records()
	require.NoError(t, err)
	require.Empty(t, recs)
}

func TestTxn_PrepareVotingNoAbortsItsRecord(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("s", "text"))
	r := applyAt(t, db, 2, 10, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 100, Participants: []kvd.GroupID{1},
		Ops: []TxnOp{{Index: 0, Op: "delete", Key: "d"}, {Index: 1, Op: "add", Key: "s", Delta: 1}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeNotANumber, r.Txn.Code)
	require.Nil(t, r.Txn.Writes, "a no vote answers no writes")
	rec, ok, err := db.Record("t")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, TxnAborted, rec.State, "got %s want aborted: the transaction can no longer commit", rec.State)
	locks, err := db.Locks()
	require.NoError(t, err)
	require.Empty(t, locks)
}

// A prepare made by an older node (no VersionAtPrepare) replays as it
// applied then: its writes take the resolving entry's version.
func TestTxn_OlderPrepareKeepsTheResolvingVersion(t *testing.T) {
	db := openTest(t)
	p := applyAt(t, db, 2, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 5, Deadline: 1000,
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("new")}}}))
	require.True(t, p.Txn.Vote)
	require.Empty(t, p.Txn.Writes, "no version in the vote")
	applyAt(t, db, 3, 2, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t", Commit: true}))
	it, err := db.Get("k")
	require.NoError(t, err)
	require.Equal(t, uint64(3), it.Version)
}

// A plain write and a prepare on the same key in one entry would share
// the entry's version: the prepare refuses the key (conflict), and the
// key keeps the plain write's value and version.
func TestTxn_PrepareRefusesAKeyItsEntryChanged(t *testing.T) {
	db := openTest(t)
	prep := txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1, 2}, VersionAtPrepare: true,
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("txn")}}})
	res, err := db.Apply([]Entry{{Index: 1, Term: 1, Batch: &Batch{Time: 1, Cmds: []Cmd{put("k", "plain"), prep}}}})
	require.NoError(t, err)
	require.Equal(t, uint64(1), res[0][0].Version)
	require.False(t, res[0][1].Txn.Vote)
	require.Equal(t, CodeConflict, res[0][1].Txn.Code)
	_, _, lock, _ := db.GetLocked("k")
	require.Nil(t, lock, "no lock taken")
	rec, ok, err := db.Record("t")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, TxnAborted, rec.State)
	// In the next entry the same prepare goes through.
	r := applyAt(t, db, 2, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t2", RecordGroup: 1, Deadline: 1000, Participants: []kvd.GroupID{1, 2}, VersionAtPrepare: true,
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("txn")}}}))
	require.True(t, r.Txn.Vote)
	require.Equal(t, uint64(2), r.Txn.Writes[0].Version)
}
