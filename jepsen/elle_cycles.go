package jepsen

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// This file searches the list-append checker's dependency graph for
// cycles and names each after the anomaly it makes.

// findCycles searches the graph for the cycles that make anomalies, from
// the strongest to the weakest: G0 (write-write only), G1c (plus
// write-read), G-single (exactly one anti-dependency), G2-item (several),
// then the same with real-time edges.
func findCycles(g *laGraph) []Anomaly {
	var out []Anomaly
	const perKind = 8
	found := map[string]int{}
	report := func(kind string, cyc []int, kinds []uint8) {
		if found[kind] >= perKind {
			return
		}
		found[kind]++
		out = append(out, g.explain(kind, cyc, kinds))
	}
	data := depWW | depWR | depRW
	// G0 and G1c.
	for _, scc := range sccs(g, depWW|depWR) {
		if cyc, kinds := g.cycleThrough(scc, depWW, 0, depWW); cyc != nil {
			report("G0", cyc, kinds)
		}
		if cyc, kinds := g.cycleThrough(scc, depWR, depWW, depWW|depWR); cyc != nil {
			report("G1c", cyc, kinds)
		}
	}
	// G-single and G2-item.
	for _, scc := range sccs(g, data) {
		if cyc, kinds := g.cycleThrough(scc, depRW, depWW|depWR, depWW|depWR); cyc != nil {
			report("G-single", cyc, kinds)
		} else if cyc, kinds := g.cycleThrough(scc, depRW, depWW|depWR, data); cyc != nil {
			report("G2-item", cyc, kinds)
		}
	}
	// Cycles that need real-time order: strict serializability.
	for _, scc := range sccs(g, data|depRT) {
		cyc, kinds := g.cycleThrough(scc, depRT, data, data|depRT)
		if cyc == nil {
			continue
		}
		rw, wr := 0, 0
		for _, k := range kinds {
			switch k {
			case depRW:
				rw++
			case depWR:
				wr++
			}
		}
		kind := "G0-realtime"
		switch {
		case rw >= 2:
			kind = "G2-item-realtime"
		case rw == 1:
			kind = "G-single-realtime"
		case wr > 0:
			kind = "G1c-realtime"
		}
		report(kind, cyc, kinds)
	}
	return out
}

// sccs returns the strongly connected components (of two transactions or
// more) of the graph restricted to edges with a kind in mask (Tarjan's
// algorithm, iterative).
func sccs(g *laGraph, mask uint8) [][]int {
	n := len(g.txns)
	index := make([]int, n)
	low := make([]int, n)
	on := make([]bool, n)
	for i := range index {
		index[i] = -1
	}
	succ := func(v int) []int {
		var s []int
		for w, k := range g.out[v] {
			if k&mask != 0 {
				s = append(s, w)
			}
		}
		slices.Sort(s)
		return s
	}
	var stack []int
	var out [][]int
	next := 0
	type frame struct {
		v    int
		succ []int
		i    int
	}
	for root := range n {
		if index[root] >= 0 {
			continue
		}
		call := []frame{{v: root, succ: succ(root)}}
		index[root], low[root] = next, next
		next++
		stack = append(stack, root)
		on[root] = true
		for len(call) > 0 {
			f := &call[len(call)-1]
			if f.i < len(f.succ) {
				w := f.succ[f.i]
				f.i++
				if index[w] < 0 {
					index[w], low[w] = next, next
					next++
					stack = append(stack, w)
					on[w] = true
					call = append(call, frame{v: w, succ: succ(w)})
				} else if on[w] {
					low[f.v] = min(low[f.v], index[w])
				}
				continue
			}
			v := f.v
			call = call[:len(call)-1]
			if len(call) > 0 {
				p := call[len(call)-1].v
				low[p] = min(low[p], low[v])
			}
			if low[v] == index[v] {
				var comp []int
				for {
					w := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					on[w] = false
					comp = append(comp, w)
					if w == v {
						break
					}
				}
				if len(comp) > 1 {
					slices.Sort(comp)
					out = append(out, comp)
				}
			}
		}
	}
	return out
}

// maxCycleSearches bounds the edges tried per component, so that a badly
// broken history (one huge component) is still checked in seconds.
const maxCycleSearches = 256

// cycleThrough looks in component scc for a shortest cycle whose first
// edge has kind first (and none of the kinds in exclusive, which would
// make it a stronger anomaly found earlier) and which returns through
// edges of kinds in rest. It returns the cycle's nodes and the kind of
// each edge (the last edge closes the cycle), or nil.
func (g *laGraph) cycleThrough(scc []int, first, exclusive, rest uint8) ([]int, []uint8) {
	in := make(map[int]bool, len(scc))
	for _, v := range scc {
		in[v] = true
	}
	tries := 0
	var best []int
	for _, u := range scc {
		var targets []int
		for v, k := range g.out[u] {
			if in[v] && k&first != 0 && k&exclusive == 0 {
				targets = append(targets, v)
			}
		}
		slices.Sort(targets)
		for _, v := range targets {
			if tries++; tries > maxCycleSearches {
				break
			}
			path := g.bfs(v, u, in, rest)
			if path == nil || (best != nil && len(path) >= len(best)) {
				continue
			}
			// path runs v … u: the cycle is u, v, …
			best = append([]int{u}, path[:len(path)-1]...)
		}
		if tries > maxCycleSearches || len(best) == 2 {
			break
		}
	}
	if best == nil {
		return nil, nil
	}
	kinds := []uint8{first}
	for i := 1; i < len(best); i++ {
		kinds = append(kinds, pick(g.out[best[i]][best[(i+1)%len(best)]], rest))
	}
	return best, kinds
}

// pick returns the strongest kind (ww, wr, rw, rt) of k within mask.
func pick(k, mask uint8) uint8 {
	for _, d := range []uint8{depWW, depWR, depRW, depRT} {
		if k&mask&d != 0 {
			return d
		}
	}
	return 0
}

// bfs returns a shortest path from a to b (a first, b last) within in,
// over edges with a kind in mask, or nil.
func (g *laGraph) bfs(a, b int, in map[int]bool, mask uint8) []int {
	prev := map[int]int{a: -1}
	queue := []int{a}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		if v == b {
			var path []int
			for x := b; x != -1; x = prev[x] {
				path = append(path, x)
			}
			slices.Reverse(path)
			return path
		}
		var next []int
		for w, k := range g.out[v] {
			if in[w] && k&mask != 0 {
				if _, seen := prev[w]; !seen {
					next = append(next, w)
				}
			}
		}
		slices.Sort(next)
		for _, w := range next {
			prev[w] = v
			queue = append(queue, w)
		}
	}
	return nil
}

// explain turns a cycle into words, Elle's way: the transactions, then
// why each precedes the next.
func (g *laGraph) explain(kind string, cyc []int, kinds []uint8) Anomaly {
	a := Anomaly{Kind: kind}
	var names []string
	var lets []string
	for _, v := range cyc {
		t := g.txns[v]
		a.Cycle = append(a.Cycle, t.op.Index)
		names = append(names, t.name())
		lets = append(lets, t.describe())
	}
	for i, v := range cyc {
		w := cyc[(i+1)%len(cyc)]
		k := kinds[i]
		a.edgeKinds = append(a.edgeKinds, depNames[k])
		a.Steps = append(a.Steps, fmt.Sprintf("%s < %s (%s): %s", g.txns[v].name(), g.txns[w].name(), depNames[k], g.reason(v, w, k)))
	}
	a.Text = fmt.Sprintf("%s: %s < %s, a cycle. Let %s",
		describeKind(kind), strings.Join(names, " < "), names[0], strings.Join(lets, "; "))
	return a
}

// reason puts edge v→w of kind k in words.
func (g *laGraph) reason(v, w int, k uint8) string {
	a, b := g.txns[v], g.txns[w]
	y := g.why[v][w][k]
	switch k {
	case depWW:
		return fmt.Sprintf("%s appended %d to %s, and %s appended %d right after it", a.name(), y.e1, y.key, b.name(), y.e2)
	case depWR:
		return fmt.Sprintf("%s read %s = %v, ending in %d, which %s appended", b.name(), y.key, y.list, y.e1, a.name())
	case depRW:
		return fmt.Sprintf("%s read %s = %v, without %d, which %s appended next", a.name(), y.key, y.list, y.e1, b.name())
	}
	return fmt.Sprintf("%s completed at %.3f s, before %s began at %.3f s", a.name(), sec(a.op.Return), b.name(), sec(b.op.Call))
}

func describeKind(kind string) string {
	base, rt := strings.CutSuffix(kind, "-realtime")
	d := map[string]string{
		"G0":       "write cycle (dirty write)",
		"G1c":      "circular information flow",
		"G-single": "read skew: a cycle with one anti-dependency",
		"G2-item":  "write skew: a cycle of anti-dependencies",
	}[base]
	if rt {
		d += ", closed by real-time order (not strictly serializable)"
	}
	return cmp.Or(d, kind)
}
