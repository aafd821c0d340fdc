package jepsen

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Hand-built list-append histories: each anomaly kind is found, with a
// cycle explained in words, and valid histories report nothing.

func ap(k string, e int) Micro    { return Micro{F: "append", K: k, E: e} }
func rd(k string, l ...int) Micro { return Micro{F: "r", K: k, L: l} }
func txAt(call, ret int64, st Status, ms ...Micro) Op {
	return Op{F: "txn", Process: int(call % 7), Call: call, Return: ret, Status: st, Txn: ms}
}

// final is the final read of a run, at call.
func final(call int64, ms ...Micro) Op {
	op := txAt(call, call+1, OK, ms...)
	op.Process = -1
	return op
}

// history numbers ops in order.
func history(ops ...Op) []Op {
	for i := range ops {
		ops[i].Index = i
	}
	return ops
}

func kinds(as []Anomaly) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Kind)
	}
	return out
}

func TestCheckListAppend_FindsEachAnomaly(t *testing.T) {
	cases := []struct {
		name string
		ops  []Op
		want string
	}{
		{"G0: two transactions append to x and y in opposite orders", history(
			txAt(0, 10, OK, ap("x", 1), ap("y", 2)),
			txAt(0, 10, OK, ap("x", 3), ap("y", 4)),
			final(20, rd("x", 1, 3), rd("y", 4, 2)),
		), "G0"},
		{"G1a: a read sees an append of a failed transaction", history(
			txAt(0, 10, Fail, ap("x", 1)),
			txAt(20, 30, OK, rd("x", 1)),
		), "G1a"},
		{"G1b: a read sees the middle of a transaction's appends", history(
			txAt(0, 10, OK, ap("x", 1), ap("x", 2)),
			txAt(20, 30, OK, rd("x", 1)),
		), "G1b"},
		{"G1c: each transaction reads the other's append", history(
			txAt(0, 10, OK, ap("x", 1), rd("y", 2)),
			txAt(0, 10, OK, ap("y", 2), rd("x", 1)),
		), "G1c"},
		{"G-single: read skew", history(
			txAt(0, 10, OK, rd("x"), ap("y", 1)),
			txAt(0, 10, OK, ap("x", 2), ap("y", 3)),
			final(20, rd("x", 2), rd("y", 3, 1)),
		), "G-single"},
		{"G2-item: write skew", history(
			txAt(0, 10, OK, rd("x"), ap("y", 1)),
			txAt(0, 10, OK, rd("y"), ap("x", 2)),
			final(20, rd("x", 2), rd("y", 1)),
		), "G2-item"},
		{"real time: a read that began after an append completed misses it", history(
			txAt(0, 10, OK, ap("x", 1)),
			txAt(20, 30, OK, rd("x")),
			final(40, rd("x", 1)),
		), "G-single-realtime"},
		{"real time: writes ordered against real time", history(
			txAt(0, 10, OK, ap("x", 1)),
			txAt(20, 30, OK, ap("x", 2)),
			final(40, rd("x", 2, 1)),
		), "G0-realtime"},
		{"lost append: an acknowledged append missing at the end", history(
			txAt(0, 10, OK, ap("x", 1)),
			txAt(20, 30, OK, ap("x", 2)),
			final(40, rd("x", 1)),
		), "lost-append"},
		{"incompatible order: reads that are not prefixes of each other", history(
			txAt(0, 10, OK, ap("x", 1)),
			txAt(0, 10, OK, ap("x", 2)),
			txAt(20, 30, OK, rd("x", 1, 2)),
			txAt(20, 30, OK, rd("x", 2, 1)),
		), "incompatible-order"},
		{"duplicate elements in a read", history(
			txAt(0, 10, OK, ap("x", 1)),
			txAt(20, 30, OK, rd("x", 1, 1)),
		), "duplicate-elements"},
		{"garbage read: an element nobody appended", history(
			txAt(20, 30, OK, rd("x", 7)),
		), "garbage-read"},
	}
	dir := t.TempDir()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, check := CheckListAppend(tc.ops)
			require.Equal(t, Invalid, check.Verdict, "%v", res.Anomalies)
			require.Contains(t, kinds(res.Anomalies), tc.want, "%v", res.Anomalies)
			for _, a := range res.Anomalies {
				if a.Kind != tc.want || len(a.Cycle) == 0 || strings.HasPrefix(a.Kind, "G1a") {
					continue
				}
				// A cycle: each step says why one transaction precedes
				// the next, and the last closes it.
				require.Len(t, a.Steps, len(a.Cycle), "%+v", a)
				first := fmt.Sprintf("T%d", a.Cycle[0])
				require.True(t, strings.HasSuffix(strings.SplitN(a.Steps[len(a.Steps)-1], " (", 2)[0], "< "+first), "%v", a.Steps)
				require.Contains(t, a.Text, "a cycle")
			}
			require.NotNil(t, check.Visualization)
			path := filepath.Join(dir, fmt.Sprintf("case%d.html", i))
			require.NoError(t, check.Visualization(path))
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Contains(t, string(b), tc.want)
			if strings.HasPrefix(tc.want, "G") && tc.want != "G1a" && tc.want != "G1b" {
				require.Contains(t, string(b), "<svg", "a cycle is drawn")
			}
		})
	}
}

func TestCheckListAppend_ValidHistoriesReportNothing(t *testing.T) {
	cases := []struct {
		name string
		ops  []Op
	}{
		{"serial", history(
			txAt(0, 10, OK, ap("x", 1), rd("x", 1)),
			txAt(20, 30, OK, rd("x", 1), ap("x", 2), ap("y", 3)),
			txAt(40, 50, OK, rd("x", 1, 2), rd("y", 3)),
			final(60, rd("x", 1, 2), rd("y", 3)),
		)},
		{"concurrent transactions in either order", history(
			txAt(0, 30, OK, ap("x", 1)),
			txAt(5, 25, OK, ap("x", 2), rd("y")),
			txAt(10, 20, OK, rd("x", 2)),
			final(60, rd("x", 2, 1), rd("y")),
		)},
		{"failed and unknown transactions", history(
			txAt(0, 10, Fail, ap("x", 1)),
			txAt(0, 10, Unknown, ap("x", 2)),
			txAt(0, 10, Unknown, ap("x", 3)),
			txAt(20, 30, OK, rd("x", 2)),
			final(60, rd("x", 2)),
		)},
		{"a transaction reads its own appends", history(
			txAt(0, 10, OK, ap("x", 1), ap("x", 2), rd("x", 1, 2)),
			txAt(20, 30, OK, rd("x", 1, 2), ap("x", 3), rd("x", 1, 2, 3)),
			final(60, rd("x", 1, 2, 3)),
		)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, check := CheckListAppend(tc.ops)
			require.Empty(t, res.Anomalies)
			require.Equal(t, Valid, check.Verdict, "%s %v", check.Summary, check.Errors)
		})
	}
}

// A large valid serial history is checked in well under a second, and
// one broken transaction in it is found.
func TestCheckListAppend_LargeHistory(t *testing.T) {
	var ops []Op
	lists := map[string][]int{}
	elem := 0
	now := int64(0)
	for i := range 20000 {
		k := fmt.Sprintf("k%d", i%16)
		var ms []Micro
		if i%3 == 0 {
			ms = append(ms, rd(k, append([]int(nil), lists[k]...)...))
		} else {
			elem++
			lists[k] = append(lists[k], elem)
			ms = append(ms, ap(k, elem), rd(k, append([]int(nil), lists[k]...)...))
		}
		ops = append(ops, txAt(now, now+5, OK, ms...))
		now += 10
	}
	start := time.Now()
	res, check := CheckListAppend(history(ops...))
	took := time.Since(start)
	require.Empty(t, res.Anomalies)
	require.Equal(t, Valid, check.Verdict)
	t.Logf("20000 transactions checked in %v", took)

	// A stale read in the middle: it began after k0's append of elem
	// completed, but misses it.
	bad := history(ops...)
	mid := bad[10000]
	require.Len(t, mid.Txn, 2)
	stale := mid.Txn[1]
	stale.L = stale.L[:len(stale.L)-1]
	bad = append(bad, Op{F: "txn", Process: 1, Call: now + 100, Return: now + 110, Status: OK, Txn: []Micro{stale}})
	res, _ = CheckListAppend(history(bad...))
	require.Contains(t, kinds(res.Anomalies), "G-single-realtime")
}
