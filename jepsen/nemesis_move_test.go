package jepsen

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// pickMove picks slots the target does not own, of groups that keep at
// least one slot, in each of its three ways.
func TestPickMove_TakesNoGroupsLastSlotAndNothingTheTargetOwns(t *testing.T) {
	h := NewHistory()
	h.Add(Op{F: "transfer", Key: "bank/1->bank/2"})
	h.Add(Op{F: "put", Key: "reg/7"})
	h.Add(Op{F: "txn", Txn: []Micro{{F: "append", K: "la/3", E: 1}}})
	env := &Env{History: h}
	cl := api.Cluster{Groups: []api.Group{
		{ID: 1, Slots: [][2]int{{0, 500}, {503, 1020}}},
		{ID: 2, Slots: [][2]int{{501, 502}, {1021, 1022}}},
		{ID: 3, Slots: [][2]int{{1023, 1023}}},
	}}
	owner := func(s int) uint64 { g, _ := cl.GroupOf(s); return g }
	count := map[uint64]int{1: 1019, 2: 4, 3: 1}
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := map[string]int{}
	for range 3000 {
		slots, from, to, how, err := pickMove(cl, env, rng)
		require.NoError(t, err)
		require.NotEmpty(t, slots)
		require.Equal(t, owner(slots[0][0]), from, "from is the first slot's group")
		taken := map[uint64]int{}
		for _, r := range slots {
			require.LessOrEqual(t, r[0], r[1])
			for s := r[0]; s <= r[1]; s++ {
				require.NotEqual(t, to, owner(s), "slot %d is the target's already (%s)", s, how)
				taken[owner(s)]++
			}
		}
		for g, n := range taken {
			require.Less(t, n, count[g], "%v takes every slot of group %d (%s)", slots, g, how)
		}
		switch {
		case how == "scattered":
			require.LessOrEqual(t, len(slots), 4)
		default:
			require.Len(t, slots, 1, how)
			require.LessOrEqual(t, slots[0][1]-slots[0][0]+1, 16, how)
			require.NotEqual(t, from, to)
			for s := slots[0][0]; s <= slots[0][1]; s++ {
				require.Equal(t, from, owner(s), "a run of one group's slots (%s)", how)
			}
		}
		kinds[strings.Fields(how)[0]]++
	}
	require.Positive(t, kinds["scattered"])
	require.Positive(t, kinds["a"], "a run of slots")
	require.Positive(t, kinds["around"], "around the slot of a key used")

	// The keys used: both of a transfer, those of a transaction.
	require.ElementsMatch(t, []string{"bank/1", "bank/2", "reg/7", "la/3"}, recentKeys(h, 10))

	_, _, _, _, err := pickMove(api.Cluster{Groups: []api.Group{{ID: 1, Slots: [][2]int{{0, kvd.SlotCount - 1}}}}}, env, rng)
	require.Error(t, err, "one group: nothing to move to")
}
