package jepsen

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// op builds a history entry: f on key at [call, ret].
func op(f, key string, call, ret int64, st Status, mods ...func(*Op)) Op {
	o := Op{F: f, Key: key, Call: call, Return: ret, Status: st}
	for _, m := range mods {
		m(&o)
	}
	return o
}

func val(v string, ver uint64) func(*Op) {
	return func(o *Op) { o.Value, o.Version, o.Found = v, ver, true }
}
func absent(o *Op)              { o.Found = false }
func expect(v uint64) func(*Op) { return func(o *Op) { o.Expect = v } }
func served(n string) func(*Op) { return func(o *Op) { o.Served = n } }
func index(i int) func(*Op)     { return func(o *Op) { o.Index = i } }

func TestCheckRegister(t *testing.T) {
	tests := []struct {
		name string
		h    []Op
		want Verdict
	}{
		{"write then read", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("get", "k", 20, 30, OK, val("a", 5)),
		}, Valid},
		{"concurrent read may see either", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("put", "k", 20, 40, OK, val("b", 7)),
			op("get", "k", 25, 30, OK, val("a", 5)),
		}, Valid},
		{"stale read after a write completed", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("put", "k", 20, 30, OK, val("b", 7)),
			op("get", "k", 40, 50, OK, val("a", 5)),
		}, Invalid},
		{"read of a value never written", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("get", "k", 20, 30, OK, val("z", 5)),
		}, Invalid},
		{"absent after an acknowledged write", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("get", "k", 20, 30, OK, absent),
		}, Invalid},
		{"unknown write may appear later", []Op{
			op("put", "k", 0, 10, Unknown, val("a", 0)),
			op("get", "k", 20, 30, OK, absent),
			op("get", "k", 40, 50, OK, val("a", 9)),
		}, Valid},
		{"unknown write may never appear", []Op{
			op("put", "k", 0, 10, Unknown, val("a", 0)),
			op("get", "k", 20, 30, OK, absent),
		}, Valid},
		{"failed write must not appear", []Op{
			op("put", "k", 0, 10, Fail, val("a", 0)),
			op("get", "k", 20, 30, OK, val("a", 9)),
		}, Invalid},
		{"cas on the right version", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("cas", "k", 20, 30, OK, val("b", 8), expect(5)),
			op("get", "k", 40, 50, OK, val("b", 8)),
		}, Valid},
		{"cas succeeded on a wrong version", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("cas", "k", 20, 30, OK, val("b", 8), expect(4)),
		}, Invalid},
		{"cas failed on the right version", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("cas", "k", 20, 30, Fail, func(o *Op) { o.Value, o.Expect, o.Error = "b", 5, "precondition_failed" }),
		}, Invalid},
		{"versions must grow", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("put", "k", 20, 30, OK, val("b", 3)),
		}, Invalid},
		{"delete then absent", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("delete", "k", 20, 30, OK, func(o *Op) { o.Deleted = true }),
			op("get", "k", 40, 50, OK, absent),
		}, Valid},
		{"keys are independent", []Op{
			op("put", "k", 0, 10, OK, val("a", 5)),
			op("get", "j", 20, 30, OK, absent),
			op("get", "k", 20, 30, OK, val("a", 5)),
		}, Valid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := CheckRegister(tc.h, 10*time.Second)
			require.Equal(t, tc.want, r.Verdict, "%s: %v", r.Summary, r.Errors)
			if tc.want == Invalid {
				require.NotEmpty(t, r.Errors, "an invalid verdict names the keys at fault")
			}
		})
	}
}

func TestCheckRegister_TimeoutIsUnknown(t *testing.T) {
	// Many concurrent unknown writes and reads make the search explode;
	// with no time to search, the verdict must be unknown, never valid.
	var h []Op
	for i := range 40 {
		h = append(h, op("put", "k", int64(i), 1000, Unknown, val(string(rune('a'+i%26))+"x", 0)))
	}
	for i := range 40 {
		h = append(h, op("get", "k", 100+int64(i), 2000, OK, val(string(rune('a'+(39-i)%26))+"x", uint64(100+i))))
	}
	r := CheckRegister(h, time.Nanosecond)
	require.NotEqual(t, Valid, r.Verdict)
}

func TestCheckSet(t *testing.T) {
	final := func(keys ...string) Op { return Op{F: "read", Status: OK, Values: keys, Call: 100, Return: 110} }
	ins := func(k string, st Status) Op { return Op{F: "insert", Key: k, Status: st} }
	tests := []struct {
		name string
		h    []Op
		want Verdict
	}{
		{"all present", []Op{ins("a", OK), ins("b", OK), ins("c", Unknown), final("a", "b")}, Valid},
		{"unknown may be present", []Op{ins("a", OK), ins("c", Unknown), final("a", "c")}, Valid},
		{"lost acknowledged insert", []Op{ins("a", OK), ins("b", OK), final("a")}, Invalid},
		{"phantom element", []Op{ins("a", OK), final("a", "zz")}, Invalid},
		{"definitely failed insert present", []Op{ins("a", OK), ins("b", Fail), final("a", "b")}, Invalid},
		{"no final read", []Op{ins("a", OK)}, Unsure},
	}
	for _, tc := range tests {
		r := CheckSet(tc.h)
		require.Equal(t, tc.want, r.Verdict, "%s: %s %v", tc.name, r.Summary, r.Errors)
	}
}

func TestCheckStale(t *testing.T) {
	w := func(v string) Op { return op("put", "k", 0, 1, OK, val(v, 0)) }
	tests := []struct {
		name string
		h    []Op
		want Verdict
	}{
		{"monotonic on each replica", []Op{w("1"), w("2"),
			op("get", "k", 10, 20, OK, val("1", 5), served("n1"), index(1)),
			op("get", "k", 30, 40, OK, val("2", 6), served("n1"), index(2)),
			op("get", "k", 50, 60, OK, val("1", 5), served("n2"), index(3)), // another replica may lag
		}, Valid},
		{"concurrent reads may differ", []Op{w("1"), w("2"),
			op("get", "k", 10, 40, OK, val("2", 6), served("n1")),
			op("get", "k", 20, 30, OK, val("1", 5), served("n1")),
		}, Valid},
		{"replica went backwards", []Op{w("1"), w("2"),
			op("get", "k", 10, 20, OK, val("2", 6), served("n1"), index(1)),
			op("get", "k", 30, 40, OK, val("1", 5), served("n1"), index(2)),
		}, Invalid},
		{"value never written", []Op{w("1"),
			op("get", "k", 10, 20, OK, val("7", 5), served("n1")),
		}, Invalid},
		{"one version, two values", []Op{w("1"), w("2"),
			op("get", "k", 10, 20, OK, val("1", 5), served("n1")),
			op("get", "k", 30, 40, OK, val("2", 5), served("n2")),
		}, Invalid},
	}
	for _, tc := range tests {
		r := CheckStale(tc.h)
		require.Equal(t, tc.want, r.Verdict, "%s: %s %v", tc.name, r.Summary, r.Errors)
	}
}

func TestCheckBank(t *testing.T) {
	read := func(f string, vals ...string) Op { return Op{F: f, Status: OK, Values: vals} }
	tests := []struct {
		name string
		h    []Op
		want Verdict
	}{
		{"totals hold", []Op{read("read", "a=60", "b=40"), read("read", "a=50", "b=50"), read("final-read", "a=0", "b=100")}, Valid},
		{"a read sees half a transfer", []Op{read("read", "a=60", "b=50"), read("final-read", "a=50", "b=50")}, Invalid},
		{"a balance went negative", []Op{read("read", "a=-10", "b=110"), read("final-read", "a=50", "b=50")}, Invalid},
		{"money lost by the end", []Op{read("final-read", "a=50", "b=40")}, Invalid},
		{"no final read", []Op{read("read", "a=50", "b=50")}, Unsure},
	}
	for _, tc := range tests {
		r := CheckBank(tc.h, 100)
		require.Equal(t, tc.want, r.Verdict, "%s: %s %v", tc.name, r.Summary, r.Errors)
	}
}
