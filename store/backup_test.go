package store

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func freezeCmd(t *testing.T, id string, level int) Cmd {
	return txnCmd(t, CmdFreeze, Freeze{ID: id, Level: level})
}

func restoreCmd(t *testing.T, op RestoreOp) Cmd { return txnCmd(t, CmdRestore, op) }

func TestFreeze_RefusesByLevelAndLifts(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("a", "1"))
	prepare := func(id string) Cmd {
		return txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: id, RecordGroup: 1, Deadline: 1e9, Participants: []kvd.GroupID{1, 2},
			Ops: []TxnOp{{Index: 0, Op: "put", Key: "p-" + id, Value: []byte("x")}}})
	}
	require.NoError(t, applyAt(t, db, 2, 10, freezeCmd(t, "b1", FreezePrepares)).Err)
	require.Equal(t, FreezeState{ID: "b1", Level: FreezePrepares, Since: 10}, db.Frozen())

	r := applyAt(t, db, 3, 11, prepare("t1"))
	require.ErrorIs(t, r.Err, kvd.ErrUnavailable, "no prepare while the locks drain")
	require.True(t, Paused(r.Err), "%v", r.Err)
	require.Equal(t, CodeMoving, r.Txn.Code, "a coordinator reruns it")
	require.NoError(t, applyOne(t, db, 4, put("a", "2"))[0].Err, "plain writes go on at level 1")

	r = applyAt(t, db, 5, 12, freezeCmd(t, "other", FreezeWrites))
	require.ErrorIs(t, r.Err, kvd.ErrConflict, "one backup's freeze at a time")
	require.NoError(t, applyAt(t, db, 6, 12, freezeCmd(t, "b1", FreezeWrites)).Err)
	require.Equal(t, int64(10), db.Frozen().Since, "the freeze keeps its start")
	require.Equal(t, int64(12), db.Frozen().Writes, "and records when writes stopped")
	for i, c := range []Cmd{put("a", "3"), {Kind: CmdDelete, Key: "a"}} {
		r := applyOne(t, db, uint64(7+i), c)[0]
		require.True(t, Paused(r.Err), "%v", r.Err)
	}
	it, err := db.Get("a")
	require.NoError(t, err)
	require.Equal(t, "2", string(it.Value), "reads go on, writes were refused")

	require.NoError(t, applyAt(t, db, 9, 13, freezeCmd(t, "zzz", FreezeLift)).Err)
	require.Equal(t, "b1", db.Frozen().ID, "lifting another backup's freeze changes nothing")
	require.NoError(t, applyAt(t, db, 10, 13, freezeCmd(t, "b1", FreezeLift)).Err)
	require.Empty(t, db.Frozen().ID)
	require.NoError(t, applyAt(t, db, 11, 14, prepare("t2")).Err)
	require.NoError(t, applyOne(t, db, 12, put("a", "4"))[0].Err)

	// The freeze survives a restart.
	require.NoError(t, applyAt(t, db, 13, 15, freezeCmd(t, "b2", FreezeWrites)).Err)
	require.NoError(t, db.Reopen())
	require.Equal(t, "b2", db.Frozen().ID)
	require.True(t, Paused(applyOne(t, db, 14, put("a", "5"))[0].Err))
}

func TestSnapshot_BackupPartAndKeys(t *testing.T) {
	db, _ := openGroup(t, 1)
	mine := []string{keyIn(0, 511, 1), keyIn(0, 511, 2), keyIn(0, 511, 3)}
	applyOne(t, db, 2, put(mine[0], "v0"), put(keyIn(512, 1023, 9), "stray"))
	applyAt(t, db, 3, 100, Cmd{Kind: CmdPut, Key: mine[1], Value: []byte("v1"), TTL: 1000})
	applyAt(t, db, 4, 100, Cmd{Kind: CmdPut, Key: mine[2], Value: []byte("v2"), TTL: 50})
	require.NoError(t, applyAt(t, db, 5, 110, freezeCmd(t, "b", FreezeWrites)).Err)
	snap, err := db.Snapshot()
	require.NoError(t, err)
	defer snap.Close()
	p, err := snap.BackupPart()
	require.NoError(t, err)
	require.Equal(t, uint64(5), p.Index)
	require.Equal(t, "b", p.Freeze.ID)
	require.Zero(t, p.Locks)
	require.Equal(t, []kvd.SlotRange{{0, 511}}, p.Served.Ranges())
	got := map[string]string{}
	var exp int64
	require.NoError(t, snap.ForEachKey(&p.Served, 160, func(k string, v []byte, e int64) error {
		got[k] = string(v)
		if k == mine[1] {
			exp = e
		}
		return nil
	}))
	require.Equal(t, map[string]string{mine[0]: "v0", mine[1]: "v1"}, got, "the other group's slot and the expired key are left out")
	require.Equal(t, int64(1100), exp, "the expiry is absolute")
}

func TestRestore_StagesSealsLoadsInSteps(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("old", "x"))
	var keys []MovedKey
	for i := 0; i < restoreStepKeys+10; i++ {
		keys = append(keys, MovedKey{Key: fmt.Sprintf("r%06d", i), Value: []byte("v")})
	}
	keys[0].Expires = 5       // expired when it loads
	keys[1].Expires = 1 << 60 // kept, with its deadline
	r := applyAt(t, db, 2, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStage, Reset: true, Keys: keys[:100]}))
	require.NoError(t, r.Err)
	r = applyAt(t, db, 3, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStage, Keys: keys[100:]}))
	require.NoError(t, r.Err)
	require.Equal(t, uint64(len(keys)), r.Version)
	_, err := db.Get("r000002")
	require.ErrorIs(t, err, kvd.ErrNotFound, "staged keys are out of sight")
	r = applyAt(t, db, 4, 100, restoreCmd(t, RestoreOp{ID: "other", Op: RestoreStage, Keys: keys[:1]}))
	require.ErrorIs(t, r.Err, kvd.ErrConflict, "a piece of another restore without reset")

	require.NoError(t, applyAt(t, db, 5, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreSeal, Force: true})).Err)
	require.True(t, Paused(db.Readable("old")), "a sealed group serves no read")
	_, _, err = db.Scan(kvd.ScanOptions{})
	require.True(t, Paused(err))
	require.True(t, Paused(applyOne(t, db, 6, put("new", "y"))[0].Err), "nor any write")
	r = applyAt(t, db, 7, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreAbort}))
	require.ErrorIs(t, r.Err, kvd.ErrConflict, "a sealed restore only finishes")

	idx := uint64(8)
	for steps := 0; ; steps++ {
		require.Less(t, steps, 10)
		r = applyAt(t, db, idx, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStep}))
		idx++
		require.NoError(t, r.Err)
		if r.Version == 0 {
			require.GreaterOrEqual(t, steps, 2, "the load took several bounded steps")
			break
		}
	}
	require.NoError(t, db.Readable("old"))
	_, err = db.Get("old")
	require.ErrorIs(t, err, kvd.ErrNotFound, "force dropped the keys held before")
	_, err = db.Get(keys[0].Key)
	require.ErrorIs(t, err, kvd.ErrNotFound, "an expired key is not loaded")
	it, err := db.Get(keys[len(keys)-1].Key)
	require.NoError(t, err)
	require.Equal(t, "v", string(it.Value))
	items, _, err := db.Scan(kvd.ScanOptions{Limit: 100000})
	require.NoError(t, err)
	require.Len(t, items, len(keys)-1)
	exp, err := db.Expired(1<<61, 10)
	require.NoError(t, err)
	require.Len(t, exp, 1, "the TTL key is in the expiry index")

	// Repeated steps and seals of a finished restore change nothing.
	require.NoError(t, applyAt(t, db, idx, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStep})).Err)
	require.NoError(t, applyAt(t, db, idx+1, 100, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreSeal})).Err)
	require.NoError(t, db.Readable("old"))
	require.NoError(t, applyOne(t, db, idx+2, put("new", "y"))[0].Err)
}

func TestRestore_AbortDropsStagedKeys(t *testing.T) {
	db := openTest(t)
	applyOne(t, db, 1, put("mine", "x"))
	before := db.StateHash()
	require.NoError(t, applyAt(t, db, 2, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStage, Reset: true,
		Keys: []MovedKey{{Key: "a", Value: []byte("1")}}})).Err)
	require.NotEqual(t, before, db.StateHash(), "staged keys count in the state hash")
	require.NoError(t, applyAt(t, db, 3, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreAbort})).Err)
	require.Equal(t, before, db.StateHash())
	r := applyAt(t, db, 4, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreSeal}))
	require.ErrorIs(t, r.Err, kvd.ErrConflict, "nothing staged is left to seal")
	it, err := db.Get("mine")
	require.NoError(t, err)
	require.Equal(t, "x", string(it.Value))
	report, err := db.Verify()
	require.NoError(t, err)
	require.Equal(t, report.Stored, report.Hash)
}

// A restore seals a group only once no transaction holds a lock there:
// the resolution of one would write over the keys loaded. Quiesced, the
// group takes no new prepare.
func TestRestore_SealWaitsForLocksAndQuiesceRefusesPrepares(t *testing.T) {
	db := openTest(t)
	prepare := func(id, key string) Cmd {
		return txnCmd(t, CmdTxnPrepare, TxnPrepare{ID: id, RecordGroup: 2, Deadline: 1e9, Participants: []kvd.GroupID{1, 2},
			Ops: []TxnOp{{Index: 0, Op: "put", Key: key, Value: []byte("x")}}})
	}
	require.NoError(t, applyAt(t, db, 1, 1, prepare("t1", "a")).Err)
	require.NoError(t, applyAt(t, db, 2, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStage, Reset: true,
		Keys: []MovedKey{{Key: "a", Value: []byte("restored")}}})).Err)
	require.NoError(t, applyAt(t, db, 3, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreQuiesce})).Err)
	r := applyAt(t, db, 4, 1, prepare("t2", "b"))
	require.True(t, Paused(r.Err), "no new prepare once quiesced: %v", r.Err)
	r = applyAt(t, db, 5, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreSeal, Force: true}))
	require.ErrorIs(t, r.Err, kvd.ErrUnavailable, "no seal while t1 holds a lock")
	_, sealed := db.Restoring()
	require.False(t, sealed)
	require.NoError(t, applyAt(t, db, 6, 1, txnCmd(t, CmdTxnResolve, TxnResolve{ID: "t1", Commit: true})).Err)
	require.NoError(t, applyAt(t, db, 7, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreSeal, Force: true})).Err)
	r = applyAt(t, db, 8, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStep}))
	require.NoError(t, r.Err)
	for i := uint64(9); r.Version != 0; i++ {
		r = applyAt(t, db, i, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStep}))
		require.NoError(t, r.Err)
	}
	it, err := db.Get("a")
	require.NoError(t, err)
	require.Equal(t, "restored", string(it.Value), "the committed transaction's write came before the restore, not over it")
	require.NoError(t, applyAt(t, db, 20, 1, prepare("t3", "b")).Err, "prepares again once loaded")
}

// While a backup's freeze stops writes, a restore neither seals nor
// loads: the cut must not see a group change.
func TestRestore_WaitsForABackupsFreeze(t *testing.T) {
	db := openTest(t)
	require.NoError(t, applyAt(t, db, 1, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreStage, Reset: true,
		Keys: []MovedKey{{Key: "a", Value: []byte("1")}}})).Err)
	require.NoError(t, applyAt(t, db, 2, 1, freezeCmd(t, "b", FreezeWrites)).Err)
	for i, op := range []string{RestoreStage, RestoreQuiesce, RestoreSeal, RestoreStep} {
		r := applyAt(t, db, uint64(3+i), 1, restoreCmd(t, RestoreOp{ID: "R", Op: op}))
		require.True(t, Paused(r.Err), "%s: %v", op, r.Err)
	}
	require.NoError(t, applyAt(t, db, 7, 1, restoreCmd(t, RestoreOp{ID: "R", Op: RestoreAbort})).Err, "an abort changes nothing a reader sees")
}
