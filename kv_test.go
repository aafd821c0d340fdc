package kvd

import (
	"hash/crc32"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSlot(t *testing.T) {
	whole := func(s string) int { return int(crc32.ChecksumIEEE([]byte(s)) % SlotCount) }
	tests := []struct {
		key  string
		want int
	}{
		{"123456789", 0xCBF43926 % 1024}, // the CRC-32 check value
		{"{user42}/cart", whole("user42")},
		{"{user42}/orders", whole("user42")},
		{"a{b}c{d}", whole("b")},  // the first tag only
		{"{}{a}", whole("{}{a}")}, // an empty tag hashes the whole key
		{"foo{", whole("foo{")},   // no closing brace
		{"foo}bar{", whole("foo}bar{")},
		{"x{{y}}", whole("{y")}, // from the first { to the first } after it
		{"", whole("")},
		{strings.Repeat("long-key/", 40), whole(strings.Repeat("long-key/", 40))}, // hashed in pieces
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, Slot(tc.key), "Slot(%q)", tc.key)
		require.GreaterOrEqual(t, Slot(tc.key), 0)
		require.Less(t, Slot(tc.key), SlotCount)
	}
	// Every routed request hashes its key: that must not allocate.
	require.Zero(t, testing.AllocsPerRun(100, func() { Slot("users/{42}/cart/items") }))
}

func TestInitialCluster_Map_PlacesAsTheContractSays(t *testing.T) {
	nodes := func(n int) []Node {
		var ns []Node
		for i := range n {
			id := string(rune('1' + i))
			ns = append(ns, Node{ID: "n" + id, HTTP: "h" + id, Raft: "r" + id})
		}
		return ns
	}
	tests := []struct {
		n, g, r int
		want    []Group
	}{
		{1, 1, 1, []Group{{ID: 1, Members: []string{"n1"}, Slots: []SlotRange{{0, 1023}}}}},
		{3, 1, 3, []Group{{ID: 1, Members: []string{"n1", "n2", "n3"}, Slots: []SlotRange{{0, 1023}}}}},
		{3, 2, 3, []Group{
			{ID: 1, Members: []string{"n1", "n2", "n3"}, Slots: []SlotRange{{0, 511}}},
			{ID: 2, Members: []string{"n2", "n3", "n1"}, Slots: []SlotRange{{512, 1023}}},
		}},
		{5, 3, 3, []Group{
			{ID: 1, Members: []string{"n1", "n2", "n3"}, Slots: []SlotRange{{0, 340}}},
			{ID: 2, Members: []string{"n2", "n3", "n4"}, Slots: []SlotRange{{341, 681}}},
			{ID: 3, Members: []string{"n3", "n4", "n5"}, Slots: []SlotRange{{682, 1023}}},
		}},
	}
	for _, tc := range tests {
		ic := InitialCluster{Nodes: nodes(tc.n), Groups: tc.g, Replicas: tc.r}
		require.NoError(t, ic.Validate())
		m := ic.Map()
		require.Equal(t, uint64(1), m.Epoch)
		require.Equal(t, tc.want, m.Groups)
		require.NoError(t, m.Validate())
		for s := range SlotCount {
			_, ok := m.GroupOf(s)
			require.True(t, ok, "slot %d unowned", s)
		}
	}
}

func TestInitialCluster_Validate(t *testing.T) {
	ok := []Node{{ID: "n1", HTTP: "h", Raft: "r"}, {ID: "n2", HTTP: "h2", Raft: "r2"}}
	bad := []InitialCluster{
		{},
		{Nodes: ok, Groups: 0, Replicas: 1},
		{Nodes: ok, Groups: 1, Replicas: 3},
		{Nodes: ok, Groups: 1025, Replicas: 1},
		{Nodes: []Node{{ID: "n1", HTTP: "h", Raft: "r"}, {ID: "n1", HTTP: "h", Raft: "r"}}, Groups: 1, Replicas: 1},
		{Nodes: []Node{{ID: "n1"}}, Groups: 1, Replicas: 1},
	}
	for _, ic := range bad {
		require.Error(t, ic.Validate(), "%+v", ic)
	}
	require.NoError(t, InitialCluster{Nodes: ok, Groups: 2, Replicas: 2}.Validate())
}

func TestMap_GroupsOfAndValidate(t *testing.T) {
	m := InitialCluster{Nodes: []Node{{ID: "a", HTTP: "1", Raft: "2"}, {ID: "b", HTTP: "3", Raft: "4"}, {ID: "c", HTTP: "5", Raft: "6"}}, Groups: 3, Replicas: 2}.Map()
	require.Equal(t, []GroupID{1, 3}, m.GroupsOf("a"))
	require.Equal(t, []GroupID{1, 2}, m.GroupsOf("b"))
	c := m.Clone()
	c.Groups[0].Slots = nil
	require.Error(t, c.Validate(), "unowned slots")
	require.NoError(t, m.Validate(), "clone is deep")
}

func TestLimits(t *testing.T) {
	l := DefaultLimits()
	require.ErrorIs(t, l.ValidateKey(""), ErrInvalid)
	require.ErrorIs(t, l.ValidateKey(strings.Repeat("k", 1025)), ErrTooLarge)
	require.ErrorIs(t, l.ValidateKey("\xff"), ErrInvalid)
	require.NoError(t, l.ValidateKey(strings.Repeat("k", 1024)))
	require.NoError(t, l.ValidateValue(1<<20))
	require.ErrorIs(t, l.ValidateValue(1<<20+1), ErrTooLarge)
}

func TestParseConsistency(t *testing.T) {
	for in, want := range map[string]Consistency{"": Linearizable, "linearizable": Linearizable, "follower": Follower, "stale": Stale} {
		got, err := ParseConsistency(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := ParseConsistency("eventual")
	require.ErrorIs(t, err, ErrInvalid)
}

func TestNotLeaderError(t *testing.T) {
	var err error = &NotLeaderError{Group: 2, Leader: "n3"}
	require.ErrorIs(t, err, ErrNotLeader)
	require.ErrorIs(t, err, ErrUnavailable)
	require.NotErrorIs(t, err, ErrUnknownOutcome)
	require.Equal(t, "n3", LeaderHint(err))
	require.Equal(t, "", LeaderHint(ErrUnavailable))
}

func TestMergePages(t *testing.T) {
	items := func(keys ...string) []Item {
		var its []Item
		for _, k := range keys {
			its = append(its, Item{Key: k})
		}
		return its
	}
	keys := func(its []Item) []string {
		var ks []string
		for _, it := range its {
			ks = append(ks, it.Key)
		}
		return ks
	}
	tests := []struct {
		name     string
		items    []Item
		nexts    []string
		limit    int
		want     []string
		wantNext string
	}{
		{"all fit", items("c", "a", "b"), []string{"", ""}, 10, []string{"a", "b", "c"}, ""},
		{"cut at limit", items("a", "c", "b", "d"), []string{"", ""}, 2, []string{"a", "b"}, "c"},
		{"group next below the cut", items("a", "b", "c", "d"), []string{"e", ""}, 3, []string{"a", "b", "c"}, "d"},
		{"group stopped early by its byte budget", items("a", "m", "x", "y"), []string{"b", ""}, 10, []string{"a"}, "b"},
		{"nothing at all", nil, []string{"", ""}, 5, nil, ""},
		{"next from a group with an empty page", nil, []string{"k"}, 5, nil, "k"},
	}
	for _, tc := range tests {
		got, next := MergePages(tc.items, tc.nexts, tc.limit)
		require.Equal(t, tc.want, keys(got), tc.name)
		require.Equal(t, tc.wantNext, next, tc.name)
	}
}

func TestLimits_Validate(t *testing.T) {
	require.NoError(t, DefaultLimits().Validate())
	l := DefaultLimits()
	l.MaxKeyBytes = 40000 // more than bbolt can store: every replica would fail the entry
	require.Error(t, l.Validate())
	l = DefaultLimits()
	l.MaxScanLimit = 10
	require.Error(t, l.Validate())
}

func TestClusterID(t *testing.T) {
	ic := InitialCluster{Nodes: []Node{{ID: "n1", HTTP: "127.0.0.1:1", Raft: "127.0.0.1:2"}, {ID: "n2", HTTP: "127.0.0.1:3", Raft: "127.0.0.1:4"}}, Groups: 2, Replicas: 2}
	id := ClusterID(ic.Map(), "")
	require.Len(t, id, 32)
	require.Equal(t, id, ClusterID(ic.Map(), ""), "every member computes the same id")
	require.NotEqual(t, id, ClusterID(ic.Map(), "blue"), "a token tells identical files apart")
	other := ic
	other.Groups = 1
	require.NotEqual(t, id, ClusterID(other.Map(), ""), "another bootstrap file is another cluster")
}

func TestCapPage_KeepsWithinTheCapAndAtLeastOneItem(t *testing.T) {
	page := []Item{{Key: "a", Value: make([]byte, 99)}, {Key: "b", Value: make([]byte, 99)}, {Key: "c", Value: make([]byte, 99)}}
	tests := []struct {
		maxBytes int
		keep     int
		next     string
	}{
		{0, 3, "z"},    // no cap
		{1, 1, "b"},    // the first item alone is over the cap: it stays
		{100, 1, "b"},  // exactly one item's bytes
		{199, 1, "b"},  // one short of two
		{200, 2, "c"},  // two exactly
		{300, 3, "z"},  // everything fits: the page's own next stands
		{1000, 3, "z"}, // room to spare
	}
	for _, tc := range tests {
		items, next := CapPage(page, "z", tc.maxBytes)
		if len(items) != tc.keep || next != tc.next {
			t.Errorf("cap %d: got %d items, next %q; want %d, %q", tc.maxBytes, len(items), next, tc.keep, tc.next)
		}
	}
}
