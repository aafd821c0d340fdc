package jepsen

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// This file is the list-append checker: given a history of transactions
// that append unique elements to lists and read whole lists, it infers
// each key's version order from the reads, then the dependencies between
// transactions (write-write, write-read, read-write, and real-time order)
// and searches the dependency graph for cycles, which it names after
// Adya's anomalies, as Jepsen's Elle does. Anomalies that need no cycle
// (an aborted or intermediate read, reads that no order explains, an
// acknowledged append lost) are found directly.

// Micro is one micro-operation of a list-append transaction: an append
// of element E to key K's list, or a read of K's whole list L.
type Micro struct {
	F string `json:"f"` // "append" or "r"
	K string `json:"k"`
	E int    `json:"e,omitempty"`
	L []int  `json:"l,omitempty"`
}

func (m Micro) String() string {
	if m.F == "append" {
		return fmt.Sprintf("append %s %d", m.K, m.E)
	}
	return fmt.Sprintf("r %s %v", m.K, m.L)
}

// Dependency kinds, as bits of an edge.
const (
	depWW uint8 = 1 << iota // T1 wrote a version, T2 the next one
	depWR                   // T2 read a version T1 wrote
	depRW                   // T1 read a version, T2 wrote the next one (anti-dependency)
	depRT                   // T1 completed before T2 began
)

var depNames = map[uint8]string{depWW: "ww", depWR: "wr", depRW: "rw", depRT: "rt"}

// Anomaly is one anomaly found in a list-append history.
type Anomaly struct {
	// Kind is G0, G1a, G1b, G1c, G-single, G2-item (with -realtime when
	// the cycle needs real-time order), incompatible-order,
	// duplicate-elements, garbage-read or lost-append.
	Kind string `json:"kind"`
	// Cycle lists the transactions of a cycle (op indexes), in order;
	// Steps explains each edge of it, the last one closing the cycle.
	Cycle []int    `json:"cycle,omitempty"`
	Steps []string `json:"steps,omitempty"`
	// Text explains the anomaly in words.
	Text string `json:"text"`
	// edgeKinds are the cycle's edge kinds, for the picture.
	edgeKinds []string
}

// laTxn is a transaction of the graph.
type laTxn struct {
	op     Op
	status Status
	// idx is its index in the graph.
	idx int
}

func (t *laTxn) name() string { return fmt.Sprintf("T%d", t.op.Index) }

func (t *laTxn) describe() string {
	var ms []string
	for _, m := range t.op.Txn {
		ms = append(ms, m.String())
	}
	end := fmt.Sprintf("%.3f s", sec(t.op.Return))
	if t.status != OK {
		end = "never answered (" + string(t.status) + ")"
	}
	who := fmt.Sprintf("process %d", t.op.Process)
	if t.op.Process < 0 {
		who = "final read"
	}
	return fmt.Sprintf("%s = op %d (%s, %.3f s to %s): [%s]", t.name(), t.op.Index, who, sec(t.op.Call), end, strings.Join(ms, ", "))
}

// laGraph is the dependency graph.
type laGraph struct {
	txns []*laTxn
	// out[a][b] is the edge a→b's kinds; why[a][b][kind] explains it.
	out []map[int]uint8
	why []map[int]map[uint8]edgeWhy
}

// edgeWhy is what an edge was inferred from, put in words only when a
// cycle is explained: key's elements e1 and e2 (ww: appended in a row;
// wr: e1 read last in list; rw: list read, e1 appended next).
type edgeWhy struct {
	key    string
	list   []int
	e1, e2 int
}

func (g *laGraph) add(a, b int, kind uint8, why edgeWhy) {
	if a == b {
		return
	}
	if g.out[a] == nil {
		g.out[a] = map[int]uint8{}
		g.why[a] = map[int]map[uint8]edgeWhy{}
	}
	g.out[a][b] |= kind
	if g.why[a][b] == nil {
		g.why[a][b] = map[uint8]edgeWhy{}
	}
	if _, ok := g.why[a][b][kind]; !ok {
		g.why[a][b][kind] = why
	}
}

// ListAppendResult is the checker's full answer.
type ListAppendResult struct {
	Txns      map[Status]int
	Keys      int
	Anomalies []Anomaly
}

// CheckListAppend checks a list-append history: every op with F "txn"
// carries its micro-ops in Txn. Ok transactions' reads are trusted;
// unknown ones may have appended (their reads are ignored); failed ones
// certainly did nothing.
func CheckListAppend(ops []Op) (ListAppendResult, CheckResult) {
	res := ListAppendResult{Txns: map[Status]int{}}
	g := &laGraph{}
	type writer struct {
		t *laTxn
		// last says whether this is the transaction's last append to
		// the key.
		last bool
	}
	writers := map[string]map[int]writer{} // key → element → writer
	aborted := map[string]map[int]*laTxn{} // key → element → failed writer
	var all []*laTxn
	var anomalies []Anomaly
	for _, op := range ops {
		if op.F != "txn" {
			continue
		}
		res.Txns[op.Status]++
		t := &laTxn{op: op, status: op.Status, idx: -1}
		all = append(all, t)
		lastAppend := map[string]int{}
		for _, m := range op.Txn {
			if m.F == "append" {
				lastAppend[m.K] = m.E
			}
		}
		for _, m := range op.Txn {
			if m.F != "append" {
				continue
			}
			if op.Status == Fail {
				if aborted[m.K] == nil {
					aborted[m.K] = map[int]*laTxn{}
				}
				aborted[m.K][m.E] = t
				continue
			}
			if writers[m.K] == nil {
				writers[m.K] = map[int]writer{}
			}
			if prev, dup := writers[m.K][m.E]; dup {
				anomalies = append(anomalies, Anomaly{Kind: "duplicate-append",
					Text: fmt.Sprintf("element %d was appended to %s twice, by %s and %s: the history cannot be checked for this key", m.E, m.K, prev.t.name(), t.name())})
			}
			writers[m.K][m.E] = writer{t: t, last: lastAppend[m.K] == m.E}
		}
	}

	// Reads: direct anomalies, and the longest read of each key.
	type read struct {
		t *laTxn
		m Micro
	}
	reads := map[string][]read{}
	longest := map[string]read{}
	for _, t := range all {
		if t.status != OK {
			continue
		}
		// A transaction's own appends before a read are in it: they
		// tell nothing about other transactions.
		own := map[string]int{}
		for _, m := range t.op.Txn {
			if m.F == "append" {
				own[m.K]++
				continue
			}
			seen := map[int]bool{}
			for _, e := range m.L {
				if seen[e] {
					anomalies = append(anomalies, Anomaly{Kind: "duplicate-elements",
						Text: fmt.Sprintf("%s read %s = %v, which holds %d twice", t.name(), m.K, m.L, e)})
					break
				}
				seen[e] = true
			}
			for _, e := range m.L {
				if w, ok := aborted[m.K][e]; ok {
					anomalies = append(anomalies, Anomaly{Kind: "G1a", Cycle: []int{w.op.Index, t.op.Index},
						Text: fmt.Sprintf("aborted read: %s read %s = %v, with element %d appended by %s, which failed (%s)", t.name(), m.K, m.L, e, w.name(), w.op.Error)})
				} else if _, ok := writers[m.K][e]; !ok {
					anomalies = append(anomalies, Anomaly{Kind: "garbage-read",
						Text: fmt.Sprintf("%s read %s = %v, with element %d that no transaction appended", t.name(), m.K, m.L, e)})
				}
			}
			if n := len(m.L); n > 0 && own[m.K] == 0 {
				if w, ok := writers[m.K][m.L[n-1]]; ok && !w.last && w.t != t {
					anomalies = append(anomalies, Anomaly{Kind: "G1b",
						Text: fmt.Sprintf("intermediate read: %s read %s = %v, ending in %d, which %s appended before appending more to %s in the same transaction", t.name(), m.K, m.L, m.L[n-1], w.t.name(), m.K)})
				}
			}
			// Only reads that do not end in the transaction's own
			// appends say what others had written.
			if own[m.K] > 0 {
				m.L = m.L[:max(0, len(m.L)-own[m.K])]
			}
			r := read{t: t, m: m}
			reads[m.K] = append(reads[m.K], r)
			if len(m.L) >= len(longest[m.K].m.L) {
				longest[m.K] = r
			}
		}
	}

	// Version orders: every read must be a prefix of the longest.
	order := map[string][]int{}
	var keys []string
	for k := range reads {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	res.Keys = len(keys)
	for _, k := range keys {
		lo := longest[k]
		ok := true
		for _, r := range reads[k] {
			if !slices.Equal(r.m.L, lo.m.L[:min(len(r.m.L), len(lo.m.L))]) {
				anomalies = append(anomalies, Anomaly{Kind: "incompatible-order",
					Text: fmt.Sprintf("no version order of %s explains both %s's read %v and %s's read %v: one is not a prefix of the other", k, r.t.name(), r.m.L, lo.t.name(), lo.m.L)})
				ok = false
				break
			}
		}
		if ok {
			order[k] = lo.m.L
		}
	}

	// Lost appends: an acknowledged append missing from the final read.
	for _, t := range all {
		if t.op.Process >= 0 || t.status != OK {
			continue
		}
		for _, m := range t.op.Txn {
			if m.F != "r" {
				continue
			}
			in := map[int]bool{}
			for _, e := range m.L {
				in[e] = true
			}
			var lost []string
			for e, w := range writers[m.K] {
				if w.t.status == OK && !in[e] {
					lost = append(lost, fmt.Sprintf("%d (%s)", e, w.t.name()))
				}
			}
			if len(lost) > 0 {
				sort.Strings(lost)
				anomalies = append(anomalies, Anomaly{Kind: "lost-append",
					Text: fmt.Sprintf("the final read of %s (%v) misses acknowledged appends: %s", m.K, m.L, strings.Join(lost, ", "))})
			}
		}
	}

	// The graph: ok transactions, and unknown ones whose appends were
	// seen.
	node := func(t *laTxn) int {
		if t.idx < 0 {
			t.idx = len(g.txns)
			g.txns = append(g.txns, t)
			g.out = append(g.out, nil)
			g.why = append(g.why, nil)
		}
		return t.idx
	}
	for _, t := range all {
		if t.status == OK {
			node(t)
		}
	}
	for _, k := range keys {
		ord, ok := order[k]
		if !ok {
			continue
		}
		for i := 0; i+1 < len(ord); i++ {
			a, b := writers[k][ord[i]], writers[k][ord[i+1]]
			if a.t == nil || b.t == nil {
				continue
			}
			g.add(node(a.t), node(b.t), depWW, edgeWhy{key: k, e1: ord[i], e2: ord[i+1]})
		}
		for _, r := range reads[k] {
			n := len(r.m.L)
			if n > 0 {
				if w := writers[k][r.m.L[n-1]]; w.t != nil {
					g.add(node(w.t), node(r.t), depWR, edgeWhy{key: k, list: r.m.L, e1: r.m.L[n-1]})
				}
			}
			if n < len(ord) {
				if w := writers[k][ord[n]]; w.t != nil {
					g.add(node(r.t), node(w.t), depRW, edgeWhy{key: k, list: r.m.L, e1: ord[n]})
				}
			}
		}
	}
	addRealtime(g)

	anomalies = append(anomalies, findCycles(g)...)
	res.Anomalies = anomalies

	check := CheckResult{Checker: "list-append", Verdict: Valid}
	counts := map[string]int{}
	for _, a := range anomalies {
		counts[a.Kind]++
		text := a.Kind + ": " + a.Text
		if len(a.Steps) > 0 {
			text += "; " + strings.Join(a.Steps, "; ")
		}
		check.fail("%s", text)
	}
	var kinds []string
	for k, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(kinds)
	check.Summary = fmt.Sprintf("%d transactions (%d ok, %d unknown, %d failed) over %d keys, %d dependency edges",
		len(all), res.Txns[OK], res.Txns[Unknown], res.Txns[Fail], res.Keys, g.edges())
	if len(kinds) > 0 {
		check.Summary += "; anomalies: " + strings.Join(kinds, ", ")
	}
	if res.Txns[OK] == 0 {
		check.Verdict = Unsure
		check.Summary += "; no transaction succeeded"
	}
	if check.Verdict == Invalid || len(anomalies) > 0 {
		found := anomalies
		check.Visualization = func(path string) error { return writeAnomalies(path, g, found) }
		check.VisualizationFile = "anomalies.html"
	}
	return res, check
}

func (g *laGraph) edges() int {
	n := 0
	for _, m := range g.out {
		n += len(m)
	}
	return n
}

// addRealtime adds real-time edges: a→b when a (ok) completed before b
// began. Only a frontier is linked, which keeps the transitive reduction
// small: a transaction completed before another completed transaction
// began is reached through it.
func addRealtime(g *laGraph) {
	type event struct {
		at     int64
		ret    bool
		t      *laTxn
		before []*laTxn // the frontier when t began (for a return)
	}
	var evs []*event
	calls := map[*laTxn]*event{}
	for _, t := range g.txns {
		c := &event{at: t.op.Call, t: t}
		calls[t] = c
		evs = append(evs, c)
		if t.status == OK {
			evs = append(evs, &event{at: t.op.Return, ret: true, t: t})
		}
	}
	// Returns sort before calls at the same time: an op is
	// instantaneous at neither end, so that order is not guaranteed,
	// but equal timestamps at nanosecond resolution do not happen in
	// practice.
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].at != evs[j].at {
			return evs[i].at < evs[j].at
		}
		return evs[i].ret && !evs[j].ret
	})
	frontier := map[*laTxn]bool{}
	for _, e := range evs {
		if !e.ret {
			for a := range frontier {
				e.before = append(e.before, a)
				g.add(a.idx, e.t.idx, depRT, edgeWhy{})
			}
			continue
		}
		for _, a := range calls[e.t].before {
			delete(frontier, a)
		}
		frontier[e.t] = true
	}
}

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
