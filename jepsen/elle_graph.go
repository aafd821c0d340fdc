package jepsen

import (
	"fmt"
	"sort"
	"strings"
)

// This file is the list-append checker's dependency graph: its
// transactions, its edges and what each edge was inferred from.

// Dependency kinds, as bits of an edge.
const (
	depWW uint8 = 1 << iota // T1 wrote a version, T2 the next one
	depWR                   // T2 read a version T1 wrote
	depRW                   // T1 read a version, T2 wrote the next one (anti-dependency)
	depRT                   // T1 completed before T2 began
)

var depNames = map[uint8]string{depWW: "ww", depWR: "wr", depRW: "rw", depRT: "rt"}

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

// graph builds the dependency graph: the ok transactions, and the
// unknown ones whose appends were seen, linked by write-write,
// write-read and read-write edges along each key's version order, and by
// real-time order.
func (h *laHistory) graph() *laGraph {
	g := &laGraph{}
	for _, t := range h.all {
		if t.status == OK {
			g.node(t)
		}
	}
	for _, k := range h.keys {
		ord, ok := h.order[k]
		if !ok {
			continue
		}
		writers := h.writers[k]
		for i := 0; i+1 < len(ord); i++ {
			a, b := writers[ord[i]], writers[ord[i+1]]
			if a.t == nil || b.t == nil {
				continue
			}
			g.add(g.node(a.t), g.node(b.t), depWW, edgeWhy{key: k, e1: ord[i], e2: ord[i+1]})
		}
		for _, r := range h.reads[k] {
			n := len(r.m.L)
			if n > 0 {
				if w := writers[r.m.L[n-1]]; w.t != nil {
					g.add(g.node(w.t), g.node(r.t), depWR, edgeWhy{key: k, list: r.m.L, e1: r.m.L[n-1]})
				}
			}
			if n < len(ord) {
				if w := writers[ord[n]]; w.t != nil {
					g.add(g.node(r.t), g.node(w.t), depRW, edgeWhy{key: k, list: r.m.L, e1: ord[n]})
				}
			}
		}
	}
	addRealtime(g)
	return g
}

// node returns t's index in the graph, adding it if it is not in yet.
func (g *laGraph) node(t *laTxn) int {
	if t.idx < 0 {
		t.idx = len(g.txns)
		g.txns = append(g.txns, t)
		g.out = append(g.out, nil)
		g.why = append(g.why, nil)
	}
	return t.idx
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
