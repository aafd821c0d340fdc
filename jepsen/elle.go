package jepsen

import (
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
	h := &laHistory{
		writers: map[string]map[int]laWriter{},
		aborted: map[string]map[int]*laTxn{},
		reads:   map[string][]laRead{},
		longest: map[string]laRead{},
		order:   map[string][]int{},
	}
	for _, op := range ops {
		if op.F == "txn" {
			res.Txns[op.Status]++
			h.addTxn(op)
		}
	}
	h.addReads()
	h.orderVersions()
	res.Keys = len(h.keys)
	h.findLostAppends()
	g := h.graph()
	h.anomalies = append(h.anomalies, findCycles(g)...)
	res.Anomalies = h.anomalies
	return res, listAppendCheck(res, len(h.all), g)
}

// laWriter is the transaction that appended an element to a key.
type laWriter struct {
	t *laTxn
	// last says whether this is the transaction's last append to the
	// key.
	last bool
}

// laRead is an ok transaction's read of a key's list, less the
// transaction's own appends at its end.
type laRead struct {
	t *laTxn
	m Micro
}

// laHistory is what the list-append checker learns of a history, step by
// step: the transactions, who appended what, the reads, each key's
// version order, and the anomalies found on the way.
type laHistory struct {
	all     []*laTxn
	writers map[string]map[int]laWriter // key → element → writer
	aborted map[string]map[int]*laTxn   // key → element → failed writer
	// reads are each key's reads; longest is the longest of them.
	reads   map[string][]laRead
	longest map[string]laRead
	// keys are the keys read, sorted; order is the version order of
	// those whose reads agree on one.
	keys      []string
	order     map[string][]int
	anomalies []Anomaly
}

// addTxn adds a transaction and notes who appended each element: a
// failed transaction's appends are aborted, and an element appended
// twice is an anomaly.
func (h *laHistory) addTxn(op Op) {
	t := &laTxn{op: op, status: op.Status, idx: -1}
	h.all = append(h.all, t)
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
			if h.aborted[m.K] == nil {
				h.aborted[m.K] = map[int]*laTxn{}
			}
			h.aborted[m.K][m.E] = t
			continue
		}
		if h.writers[m.K] == nil {
			h.writers[m.K] = map[int]laWriter{}
		}
		if prev, dup := h.writers[m.K][m.E]; dup {
			h.anomalies = append(h.anomalies, Anomaly{Kind: "duplicate-append",
				Text: fmt.Sprintf("element %d was appended to %s twice, by %s and %s: the history cannot be checked for this key", m.E, m.K, prev.t.name(), t.name())})
		}
		h.writers[m.K][m.E] = laWriter{t: t, last: lastAppend[m.K] == m.E}
	}
}

// addReads notes the reads of the ok transactions, and the anomalies a
// read shows by itself.
func (h *laHistory) addReads() {
	for _, t := range h.all {
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
			h.checkRead(t, m, own[m.K])
			// Only reads that do not end in the transaction's own
			// appends say what others had written.
			if own[m.K] > 0 {
				m.L = m.L[:max(0, len(m.L)-own[m.K])]
			}
			r := laRead{t: t, m: m}
			h.reads[m.K] = append(h.reads[m.K], r)
			if len(m.L) >= len(h.longest[m.K].m.L) {
				h.longest[m.K] = r
			}
		}
	}
}

// checkRead looks for the anomalies t's read m shows by itself: an
// element twice, an element a failed transaction appended (G1a) or none
// did, and, unless t had appended own elements to the key itself, a list
// ending in an element its writer appended more after (G1b).
func (h *laHistory) checkRead(t *laTxn, m Micro, own int) {
	seen := map[int]bool{}
	for _, e := range m.L {
		if seen[e] {
			h.anomalies = append(h.anomalies, Anomaly{Kind: "duplicate-elements",
				Text: fmt.Sprintf("%s read %s = %v, which holds %d twice", t.name(), m.K, m.L, e)})
			break
		}
		seen[e] = true
	}
	for _, e := range m.L {
		if w, ok := h.aborted[m.K][e]; ok {
			h.anomalies = append(h.anomalies, Anomaly{Kind: "G1a", Cycle: []int{w.op.Index, t.op.Index},
				Text: fmt.Sprintf("aborted read: %s read %s = %v, with element %d appended by %s, which failed (%s)", t.name(), m.K, m.L, e, w.name(), w.op.Error)})
		} else if _, ok := h.writers[m.K][e]; !ok {
			h.anomalies = append(h.anomalies, Anomaly{Kind: "garbage-read",
				Text: fmt.Sprintf("%s read %s = %v, with element %d that no transaction appended", t.name(), m.K, m.L, e)})
		}
	}
	if n := len(m.L); n > 0 && own == 0 {
		if w, ok := h.writers[m.K][m.L[n-1]]; ok && !w.last && w.t != t {
			h.anomalies = append(h.anomalies, Anomaly{Kind: "G1b",
				Text: fmt.Sprintf("intermediate read: %s read %s = %v, ending in %d, which %s appended before appending more to %s in the same transaction", t.name(), m.K, m.L, m.L[n-1], w.t.name(), m.K)})
		}
	}
}

// orderVersions infers each key's version order from its reads: every
// read must be a prefix of the longest, which is then the order.
func (h *laHistory) orderVersions() {
	for k := range h.reads {
		h.keys = append(h.keys, k)
	}
	sort.Strings(h.keys)
	for _, k := range h.keys {
		lo := h.longest[k]
		ok := true
		for _, r := range h.reads[k] {
			if !slices.Equal(r.m.L, lo.m.L[:min(len(r.m.L), len(lo.m.L))]) {
				h.anomalies = append(h.anomalies, Anomaly{Kind: "incompatible-order",
					Text: fmt.Sprintf("no version order of %s explains both %s's read %v and %s's read %v: one is not a prefix of the other", k, r.t.name(), r.m.L, lo.t.name(), lo.m.L)})
				ok = false
				break
			}
		}
		if ok {
			h.order[k] = lo.m.L
		}
	}
}

// findLostAppends finds the acknowledged appends missing from the final
// read.
func (h *laHistory) findLostAppends() {
	for _, t := range h.all {
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
			for e, w := range h.writers[m.K] {
				if w.t.status == OK && !in[e] {
					lost = append(lost, fmt.Sprintf("%d (%s)", e, w.t.name()))
				}
			}
			if len(lost) > 0 {
				sort.Strings(lost)
				h.anomalies = append(h.anomalies, Anomaly{Kind: "lost-append",
					Text: fmt.Sprintf("the final read of %s (%v) misses acknowledged appends: %s", m.K, m.L, strings.Join(lost, ", "))})
			}
		}
	}
}

// listAppendCheck sums up the checker's findings over txns transactions
// and the dependency graph g.
func listAppendCheck(res ListAppendResult, txns int, g *laGraph) CheckResult {
	check := CheckResult{Checker: "list-append", Verdict: Valid}
	counts := map[string]int{}
	for _, a := range res.Anomalies {
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
		txns, res.Txns[OK], res.Txns[Unknown], res.Txns[Fail], res.Keys, g.edges())
	if len(kinds) > 0 {
		check.Summary += "; anomalies: " + strings.Join(kinds, ", ")
	}
	if res.Txns[OK] == 0 {
		check.Verdict = Unsure
		check.Summary += "; no transaction succeeded"
	}
	if check.Verdict == Invalid || len(res.Anomalies) > 0 {
		found := res.Anomalies
		check.Visualization = func(path string) error { return writeAnomalies(path, g, found) }
		check.VisualizationFile = "anomalies.html"
	}
	return check
}
