package store

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

// openGroup opens the state of group g of a two-group map (group 1 owns
// slots 0..511, group 2 the rest), with mv recorded in the map if set.
func openGroup(t *testing.T, g kvd.GroupID, moves ...kvd.Move) (*DB, *kvd.Map) {
	t.Helper()
	opts := DefaultOptions()
	opts.Group = g
	db, err := Open(filepath.Join(t.TempDir(), "state.db"), opts)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	nodes := []kvd.Node{{ID: "n1", HTTP: "a:1", Raft: "a:2"}}
	m := kvd.InitialCluster{Nodes: nodes, Groups: 2, Replicas: 1}.Map()
	m.Moves = moves
	setMap(t, db, 1, m)
	return db, m
}

func setMap(t *testing.T, db *DB, index uint64, m *kvd.Map) {
	t.Helper()
	b, err := json.Marshal(m)
	require.NoError(t, err)
	r := applyAt(t, db, index, 1, Cmd{Kind: CmdSetMap, Data: b})
	require.NoError(t, r.Err)
}

// keyIn returns a key whose slot is in [lo, hi].
func keyIn(lo, hi, n int) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("k%d-%d", n, i)
		if s := kvd.Slot(k); s >= lo && s <= hi {
			return k
		}
	}
}

func TestPlacement_FencesAndServesByMoveState(t *testing.T) {
	mv := kvd.Move{ID: "m", Slots: []kvd.SlotRange{{0, 9}}, From: 1, To: 2, State: kvd.MoveCopying}
	for _, tc := range []struct {
		name                            string
		state                           string
		flipped                         bool
		srcWrite, dstWrite              error // nil: allowed
		srcRead, dstRead                error
		srcStray, dstIncoming, dstStray bool
	}{
		{name: "copying", state: kvd.MoveCopying, dstWrite: kvd.ErrWrongGroup, dstRead: kvd.ErrWrongGroup, dstIncoming: true},
		{name: "pending", state: kvd.MovePending, dstWrite: kvd.ErrWrongGroup, dstRead: kvd.ErrWrongGroup, dstStray: true},
		{name: "handing off", state: kvd.MoveHandingOff, srcWrite: kvd.ErrUnavailable, dstWrite: kvd.ErrUnavailable, dstRead: kvd.ErrWrongGroup, dstIncoming: true},
		{name: "flipped", state: kvd.MoveHandingOff, flipped: true, srcWrite: kvd.ErrUnavailable, dstWrite: kvd.ErrUnavailable, srcRead: kvd.ErrUnavailable, dstRead: kvd.ErrUnavailable},
		{name: "done", state: kvd.MoveDone, srcWrite: kvd.ErrWrongGroup, srcRead: kvd.ErrWrongGroup, srcStray: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mv
			m.State, m.Flipped = tc.state, tc.flipped
			cm := kvd.InitialCluster{Nodes: []kvd.Node{{ID: "n1", HTTP: "a:1", Raft: "a:2"}}, Groups: 2, Replicas: 1}.Map()
			if tc.flipped || tc.state == kvd.MoveDone {
				flip := cm.Clone()
				flip.Groups[0].Slots = []kvd.SlotRange{{10, 511}}
				flip.Groups[1].Slots = []kvd.SlotRange{{0, 9}, {512, 1023}}
				cm = flip
			}
			cm.Moves = []kvd.Move{m}
			require.NoError(t, cm.Validate())
			p := placementOf(cm)
			check := func(want, got error) {
				t.Helper()
				if want == nil {
					require.NoError(t, got)
				} else {
					require.ErrorIs(t, got, want)
				}
			}
			check(tc.srcWrite, p.writable(1, 5))
			check(tc.dstWrite, p.writable(2, 5))
			check(tc.srcRead, p.readable(1, 5))
			check(tc.dstRead, p.readable(2, 5))
			require.Equal(t, tc.srcStray, p.stray(1, 5))
			require.Equal(t, tc.dstStray, p.stray(2, 5))
			require.Equal(t, tc.dstIncoming, p.incoming(2, 5, "m"))
			require.False(t, p.incoming(2, 5, "other"))
			// Slots outside the move are untouched.
			require.NoError(t, p.writable(1, 100))
			require.ErrorIs(t, p.writable(2, 100), kvd.ErrWrongGroup)
		})
	}
}

func ingest(t *testing.T, db *DB, index uint64, in MoveIngest) Result {
	t.Helper()
	return applyAt(t, db, index, 1, txnCmd(t, CmdMoveIngest, in))
}

func TestMoveIngest_TakesOnlyItsAttemptAndKeepsVersionsGrowing(t *testing.T) {
	mv := kvd.Move{ID: "m", Slots: []kvd.SlotRange{{0, 9}}, From: 1, To: 2, State: kvd.MoveCopying, Attempt: 2}
	db, _ := openGroup(t, 2, mv)
	moved, other := keyIn(0, 9, 1), keyIn(100, 200, 2)
	// Before the attempt's reset, its pieces are refused.
	r0 := ingest(t, db, 2, MoveIngest{Move: "m", Attempt: 2, Keys: []MovedKey{{Key: moved, Value: []byte("x"), Version: 900}}})
	require.ErrorIs(t, r0.Err, kvd.ErrConflict)
	_, err := db.Get(moved)
	require.ErrorIs(t, err, kvd.ErrNotFound)

	ingest(t, db, 3, MoveIngest{Move: "m", Attempt: 2, Reset: true})
	r := ingest(t, db, 4, MoveIngest{Move: "m", Attempt: 2, Keys: []MovedKey{
		{Key: moved, Value: []byte("copied"), Version: 900, Expires: 1 << 40},
		{Key: other, Value: []byte("not in the move"), Version: 5},
	}})
	require.NoError(t, r.Err)
	it, err := db.Get(moved)
	require.NoError(t, err)
	require.Equal(t, uint64(900), it.Version, "a copied key keeps its version")
	require.Equal(t, "copied", string(it.Value))
	_, err = db.Get(other)
	require.ErrorIs(t, err, kvd.ErrNotFound, "a key outside the move's slots is not taken")
	exp, err := db.Expired(1<<41, 10)
	require.NoError(t, err)
	require.Equal(t, []ExpiredKey{{Key: moved, Version: 900}}, exp, "the copy keeps its expiry")

	// An older attempt's piece is refused; a deletion of the current one
	// applies.
	r = ingest(t, db, 5, MoveIngest{Move: "m", Attempt: 1, Keys: []MovedKey{{Key: moved, Deleted: true, Version: 950}}})
	require.ErrorIs(t, r.Err, kvd.ErrConflict)
	r = ingest(t, db, 50, MoveIngest{Move: "other", Attempt: 2, Keys: []MovedKey{{Key: moved, Deleted: true, Version: 950}}})
	require.ErrorIs(t, r.Err, kvd.ErrConflict, "a move that does not copy here")
	_, err = db.Get(moved)
	require.NoError(t, err, "a stale attempt deleted a key")
	// The group's own writes after the copy get versions above the copy's.
	b := put(keyIn(512, 1023, 3), "mine")
	res := applyAt(t, db, 51, 1, b)
	require.NoError(t, res.Err)
	require.Greater(t, res.Version, uint64(900))
	ev, _, _, err := db.History(Pos{Index: 50, Seq: ^uint32(0)}, "", 10, 0)
	require.NoError(t, err)
	require.Len(t, ev, 1, "copies enter no history; the group's own write does")
	require.Equal(t, res.Version, ev[0].Version(), "the event carries the version")
	ingest(t, db, 52, MoveIngest{Move: "m", Attempt: 2, Keys: []MovedKey{{Key: moved, Deleted: true, Version: 950}}})
	_, err = db.Get(moved)
	require.ErrorIs(t, err, kvd.ErrNotFound)
	exp, _ = db.Expired(1<<41, 10)
	require.Empty(t, exp)
	// Versions survive a reopen of the base.
	require.NoError(t, db.Reopen())
	res = applyAt(t, db, 53, 1, put(keyIn(512, 1023, 4), "again"))
	require.Greater(t, res.Version, uint64(900))
}

func TestDropKeys_DropsOnlyLeftovers(t *testing.T) {
	db, m := openGroup(t, 1)
	left, kept := keyIn(0, 9, 1), keyIn(100, 200, 2)
	applyAt(t, db, 2, 1, put(left, "a"))
	applyAt(t, db, 3, 1, put(kept, "b"))
	// While a move of slots 0..9 is under way, nothing there is a
	// leftover.
	mv := kvd.Move{ID: "m", Slots: []kvd.SlotRange{{0, 9}}, From: 1, To: 2, State: kvd.MoveCatchingUp}
	m2 := m.Clone()
	m2.Epoch, m2.Moves = 2, []kvd.Move{mv}
	setMap(t, db, 4, m2)
	keys, err := db.StrayKeys(10)
	require.NoError(t, err)
	require.Empty(t, keys)
	r := applyAt(t, db, 5, 1, txnCmd(t, CmdDropKeys, DropKeys{Keys: []string{left, kept}}))
	require.Zero(t, r.Version)
	// Once done, the source's copies are leftovers; the rest stays.
	m3 := m2.Clone()
	m3.Epoch = 3
	m3.Groups[0].Slots = []kvd.SlotRange{{10, 511}}
	m3.Groups[1].Slots = []kvd.SlotRange{{0, 9}, {512, 1023}}
	m3.Moves[0].State = kvd.MoveDone
	require.NoError(t, m3.Validate())
	setMap(t, db, 6, m3)
	keys, err = db.StrayKeys(10)
	require.NoError(t, err)
	require.Equal(t, []string{left}, keys)
	r = applyAt(t, db, 7, 1, txnCmd(t, CmdDropKeys, DropKeys{Keys: []string{left, kept}}))
	require.Equal(t, uint64(1), r.Version)
	_, err = db.Get(kept)
	require.NoError(t, err)
	// A scan skips keys of slots the group does not serve.
	items, _, err := db.Scan(kvd.ScanOptions{})
	require.NoError(t, err)
	require.Len(t, items, 1)
	require.ErrorIs(t, db.Readable(left), kvd.ErrWrongGroup)
}

func TestCopySlotsAndChangedKeys_ReadOneViewPageByPage(t *testing.T) {
	db, _ := openGroup(t, 1)
	var slots kvd.SlotSet
	slots.AddRanges([]kvd.SlotRange{{0, 99}})
	var in []string
	for i := 0; i < 20; i++ {
		k := keyIn(0, 99, i)
		in = append(in, k)
		applyAt(t, db, uint64(2+2*i), 1, put(k, "v"))
		applyAt(t, db, uint64(3+2*i), 1, put(keyIn(200, 300, i), "out"))
	}
	var got []MovedKey
	after := ""
	var at uint64
	for pages := 0; ; pages++ {
		require.Less(t, pages, 30)
		keys, next, a, err := db.CopySlots(&slots, after, 10)
		require.NoError(t, err)
		at = a
		got = append(got, keys...)
		if next == "" {
			break
		}
		after = next
	}
	require.Len(t, got, 20, "every key of the slots, once")
	require.Equal(t, uint64(41), at)
	// Changes since the copy: the current state of each key changed.
	applyAt(t, db, 200, 1, put(in[0], "new"))
	applyAt(t, db, 201, 1, Cmd{Kind: CmdDelete, Key: in[1]})
	applyAt(t, db, 202, 1, put(in[0], "newer"))
	c, err := db.ChangedKeys(&slots, Pos{Index: at, Seq: ^uint32(0)}, 100, 1<<20)
	keys, upto, last, more := c.Keys, c.Upto, c.Last, c.More
	require.NoError(t, err)
	require.False(t, more)
	require.Equal(t, Pos{Index: 202, Seq: 1}, last)
	require.Equal(t, []MovedKey{{Key: in[0], Value: []byte("newer"), Version: 202}, {Key: in[1], Version: 201, Deleted: true}}, keys)
	require.Equal(t, uint64(202), upto.Index)
	c, err = db.ChangedKeys(&slots, upto, 100, 1<<20)
	keys = c.Keys
	require.NoError(t, err)
	require.Empty(t, keys)
	// Pages are bounded by bytes too (at least one key each).
	c, err = db.ChangedKeys(&slots, Pos{Index: at, Seq: ^uint32(0)}, 100, 1)
	keys, upto, more = c.Keys, c.Upto, c.More
	require.NoError(t, err)
	require.True(t, more)
	require.Len(t, keys, 1)
	c, err = db.ChangedKeys(&slots, upto, 100, 1)
	keys, upto, more = c.Keys, c.Upto, c.More
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.Equal(t, in[1], keys[0].Key)
	require.True(t, more, "in[0] changed again after in[1]")
	c, err = db.ChangedKeys(&slots, upto, 100, 1)
	keys, more = c.Keys, c.More
	require.NoError(t, err)
	require.Equal(t, []MovedKey{{Key: in[0], Value: []byte("newer"), Version: 202}}, keys)
	require.False(t, more)
}
