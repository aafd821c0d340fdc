package store

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func TestTTL_ExpireIsAReplicatedDelete(t *testing.T) {
	db := openTest(t)
	c := put("k", "v")
	c.TTL = 100
	r := applyAt(t, db, 1, 1000, c)
	require.NoError(t, r.Err)
	exp, err := db.Expired(1099, 10)
	require.NoError(t, err)
	require.Empty(t, exp, "not yet")
	exp, err = db.Expired(1100, 10)
	require.NoError(t, err)
	require.Equal(t, []ExpiredKey{{Key: "k", Version: 1}}, exp)

	// The leader's expiry, applied with a time before the deadline, does
	// nothing: replicas decide by the entry's time, not their clocks.
	r = applyAt(t, db, 2, 1050, Cmd{Kind: CmdExpire, Key: "k", Cond: kvd.Cond{Version: 1}})
	require.False(t, r.Deleted)
	_, err = db.Get("k")
	require.NoError(t, err)
	r = applyAt(t, db, 3, 1200, Cmd{Kind: CmdExpire, Key: "k", Cond: kvd.Cond{Version: 1}})
	require.True(t, r.Deleted)
	_, err = db.Get("k")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	exp, _ = db.Expired(math.MaxInt64, 10)
	require.Empty(t, exp)

	// A key rewritten without a TTL does not expire.
	c.Key = "r"
	applyAt(t, db, 4, 1000, c)
	applyAt(t, db, 5, 1010, put("r", "forever"))
	exp, _ = db.Expired(math.MaxInt64, 10)
	require.Empty(t, exp)
	r = applyAt(t, db, 6, 5000, Cmd{Kind: CmdExpire, Key: "r", Cond: kvd.Cond{Version: 4}})
	require.False(t, r.Deleted, "the expiry names an older version")
}

func TestHistory_RecordsEveryChangeAndPrunes(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "s.db"), Options{HistoryMax: 5})
	require.NoError(t, err)
	defer db.Close()
	applyOne(t, db, 1, put("a", "1"), put("b", "1"))
	applyOne(t, db, 2, Cmd{Kind: CmdDelete, Key: "a"}, Cmd{Kind: CmdDelete, Key: "none"})
	evs, upto, floor, err := db.History(Pos{}, "", 100, 0)
	require.NoError(t, err)
	require.Len(t, evs, 3, "deleting an absent key is no change")
	require.Equal(t, Pos{1, 1}, evs[0].Pos)
	require.Equal(t, Pos{1, 2}, evs[1].Pos)
	require.True(t, evs[2].Delete)
	require.Equal(t, uint64(2), evs[2].Version())
	require.Equal(t, Pos{2, 1}, upto)
	require.Equal(t, Pos{}, floor)

	// Prefix filters, but the position still advances.
	evs, upto, _, err = db.History(Pos{}, "b", 100, 0)
	require.NoError(t, err)
	require.Len(t, evs, 1)
	require.Equal(t, Pos{2, 1}, upto)

	for i := 3; i <= 6; i++ {
		applyOne(t, db, uint64(i), put(fmt.Sprintf("k%d", i), "x"))
	}
	_, _, floor, err = db.History(Pos{}, "", 100, 0)
	require.NoError(t, err)
	require.Equal(t, Pos{1, 2}, floor, "the oldest events are dropped past the bound")
	evs, _, _, _ = db.History(floor, "", 100, 0)
	require.Len(t, evs, 5)
	require.True(t, db.HistoryHead().Index == 6)
}

func TestDedup_PlainWrites(t *testing.T) {
	db := openTest(t)
	c := put("k", "v")
	c.Idem = &Idem{Key: "req-1", FP: []byte("fp-a")}
	r1 := applyAt(t, db, 1, 1, c)
	require.Equal(t, uint64(1), r1.Version)
	// A retry returns the first outcome and applies nothing.
	r2 := applyAt(t, db, 2, 2, c)
	require.Equal(t, uint64(1), r2.Version)
	it, _ := db.Get("k")
	require.Equal(t, uint64(1), it.Version)
	// The same key for another request is refused.
	other := put("k", "other")
	other.Idem = &Idem{Key: "req-1", FP: []byte("fp-b")}
	r3 := applyAt(t, db, 3, 3, other)
	require.ErrorIs(t, r3.Err, kvd.ErrIdempotencyMismatch)
	// A failed precondition is an outcome too.
	cas := put("k", "x")
	cas.Cond = kvd.Cond{Kind: kvd.CondVersionEq, Version: 99}
	cas.Idem = &Idem{Key: "req-2", FP: []byte("fp-c")}
	require.ErrorIs(t, applyAt(t, db, 4, 4, cas).Err, kvd.ErrPreconditionFailed)
	require.ErrorIs(t, applyAt(t, db, 5, 5, cas).Err, kvd.ErrPreconditionFailed)
	// After the retention window the records are collected.
	applyAt(t, db, 6, 100, txnCmd(t, CmdDedupGC, DedupGC{Before: 10}))
	r4 := applyAt(t, db, 7, 101, c)
	require.Equal(t, uint64(7), r4.Version, "a forgotten key applies anew")
}

// A registration marks a key as used by a request that writes in another
// group: any other request meets it, and it never counts as an outcome.
func TestDedup_Register(t *testing.T) {
	db := openTest(t)
	reg := func(fp string) *DedupState {
		t.Helper()
		r := applyAt(t, db, db.AppliedIndex()+1, 1, txnCmd(t, CmdDedupRegister, DedupRegister{Idem: Idem{Key: "tok", FP: []byte(fp)}}))
		require.NotNil(t, r.Dedup)
		return r.Dedup
	}
	require.Equal(t, DedupNew, reg("fp-a").Status)
	require.Equal(t, DedupExisting, reg("fp-a").Status, "the same request again")
	require.Equal(t, DedupMismatch, reg("fp-b").Status)

	// A plain write here under the key, for another request: refused.
	other := put("k", "v")
	other.Idem = &Idem{Key: "tok", FP: []byte("fp-b")}
	require.ErrorIs(t, applyAt(t, db, db.AppliedIndex()+1, 1, other).Err, kvd.ErrIdempotencyMismatch)
	_, err := db.Get("k")
	require.ErrorIs(t, err, kvd.ErrNotFound)
	// So is a one-phase transaction, and a cross-group claim.
	one := applyAt(t, db, db.AppliedIndex()+1, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{
		Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v")}}, Idem: &Idem{Key: "tok", FP: []byte("fp-c")}}))
	require.Equal(t, CodeIdempotencyMismatch, one.Txn.Code)
	claim := applyAt(t, db, db.AppliedIndex()+1, 1, txnCmd(t, CmdDedupClaim, DedupClaim{Idem: Idem{Key: "tok", FP: []byte("fp-c")}, Txn: "t1"}))
	require.Equal(t, DedupMismatch, claim.Dedup.Status)

	// The registered request itself is not an outcome here: it applies.
	same := put("k", "v")
	same.Idem = &Idem{Key: "tok", FP: []byte("fp-a")}
	r := applyAt(t, db, db.AppliedIndex()+1, 1, same)
	require.NoError(t, r.Err)
	it, err := db.Get("k")
	require.NoError(t, err)
	require.Equal(t, r.Version, it.Version)

	// Registrations are collected with the other records.
	require.Equal(t, DedupNew, func() DedupStatus {
		applyAt(t, db, db.AppliedIndex()+1, 100, txnCmd(t, CmdDedupGC, DedupGC{Before: 10}))
		return reg("fp-z").Status
	}())
}

func TestAdd(t *testing.T) {
	db := openTest(t)
	r := applyAt(t, db, 1, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Index: 0, Op: "add", Key: "n", Delta: 5}}}))
	require.True(t, r.Txn.Vote)
	require.Equal(t, "5", string(r.Txn.Writes[0].Value))
	r = applyAt(t, db, 2, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Index: 0, Op: "add", Key: "n", Delta: -7}}}))
	require.Equal(t, "-2", string(r.Txn.Writes[0].Value))

	applyOne(t, db, 3, put("s", "text"))
	r = applyAt(t, db, 4, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "add", Key: "s", Delta: 1}, {Index: 1, Op: "put", Key: "other", Value: []byte("x")}}}))
	require.False(t, r.Txn.Vote)
	require.Equal(t, CodeNotANumber, r.Txn.Code)
	_, err := db.Get("other")
	require.ErrorIs(t, err, kvd.ErrNotFound, "a failed add fails the whole transaction")

	applyOne(t, db, 5, put("big", fmt.Sprint(int64(math.MaxInt64))))
	r = applyAt(t, db, 6, 1, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "add", Key: "big", Delta: 1}}}))
	require.Equal(t, CodeNotANumber, r.Txn.Code, "overflow")

	// In a prepare the sum is computed while the key is locked.
	r = applyAt(t, db, 7, 1, txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: "t", RecordGroup: 2, Deadline: 100, VersionAtPrepare: true, Ops: []TxnOp{{Op: "add", Key: "n", Delta: 10}}}))
	require.True(t, r.Txn.Vote)
	require.Equal(t, "8", string(r.Txn.Writes[0].Value))
	require.Equal(t, uint64(7), r.Txn.Writes[0].Version, "the vote carries the version the add takes")
	applyAt(t, db, 8, 2, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t", Commit: true}))
	it, _ := db.Get("n")
	require.Equal(t, "8", string(it.Value))
	require.Equal(t, uint64(7), it.Version, "the version is the prepare's")
}

func TestTxn_PutWithTTL(t *testing.T) {
	db := openTest(t)
	applyAt(t, db, 1, 1000, txnCmd(t, CmdTxnOnePhase, TxnOnePhase{Ops: []TxnOp{{Op: "put", Key: "k", Value: []byte("v"), TTL: 50}}}))
	exp, err := db.Expired(1050, 10)
	require.NoError(t, err)
	require.Len(t, exp, 1)
}
