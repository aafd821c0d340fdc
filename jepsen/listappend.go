package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/kvd-project/kvd/api"
)

// ListAppendWorkload runs transactions of 1 to 6 micro-operations over a
// small set of keys spread over every group: append a unique element to
// a key's list, or read a key's whole list. A list is stored as its
// elements in decimal, separated by spaces. A transaction reads every key
// it touches in one read-only transaction, then (if it appends) writes
// the new lists in one transaction that compares every key's version (or
// absence) with what it read: it commits only if nothing changed in
// between, so it takes effect at once at its commit, reads included.
//
// Keys are retired after MaxAppends appends and replaced by fresh keys
// of the same group, so lists stay short and each key's history is
// checked on its own. The checker is CheckListAppend.
type ListAppendWorkload struct {
	// KeysPerGroup is the number of keys in use in each group at once;
	// MaxAppends the appends a key takes before it is retired.
	KeysPerGroup int
	MaxAppends   int

	mu      sync.Mutex
	cl      api.Cluster
	active  []string // in use; slot i belongs to group groups[i%len(groups)]
	groups  []uint64
	appends map[string]int
	used    []string // every key ever used, for the final read
	nextKey int
	elem    int
}

// Name implements Workload.
func (w *ListAppendWorkload) Name() string { return "list-append" }

// KeyPrefixes implements KeySpace.
func (w *ListAppendWorkload) KeyPrefixes() []string { return []string{"la/"} }

// Setup implements Workload: the first keys, spread over the groups.
func (w *ListAppendWorkload) Setup(ctx context.Context, env *Env) error {
	if w.KeysPerGroup == 0 {
		w.KeysPerGroup = 5
	}
	if w.MaxAppends == 0 {
		w.MaxAppends = 48
	}
	cl, err := env.Cluster.ClusterMap(0)
	if err != nil {
		return fmt.Errorf("list-append setup: %w", err)
	}
	w.cl = cl
	w.appends = map[string]int{}
	w.groups = nil
	for _, g := range cl.Groups {
		w.groups = append(w.groups, uint64(g.ID))
	}
	for i := range w.KeysPerGroup * len(w.groups) {
		w.active = append(w.active, w.freshKey(w.groups[i%len(w.groups)]))
	}
	return nil
}

// freshKey returns a key never used before, owned by group g. Callers
// hold w.mu (or run before the workers start).
func (w *ListAppendWorkload) freshKey(g uint64) string {
	for {
		k := fmt.Sprintf("la/%d", w.nextKey)
		w.nextKey++
		if groupOf(w.cl, k) == g {
			w.used = append(w.used, k)
			return k
		}
	}
}

// plan draws a transaction's micro-operations.
func (w *ListAppendWorkload) plan(wk *Worker) []Micro {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 1 + wk.Rng.IntN(6)
	var ms []Micro
	for range n {
		i := wk.Rng.IntN(len(w.active))
		k := w.active[i]
		if wk.Rng.IntN(2) == 0 {
			ms = append(ms, Micro{F: "r", K: k})
			continue
		}
		w.elem++
		ms = append(ms, Micro{F: "append", K: k, E: w.elem})
		w.appends[k]++
		if w.appends[k] >= w.MaxAppends {
			w.active[i] = w.freshKey(w.groups[i%len(w.groups)])
		}
	}
	return ms
}

func encodeList(l []int) []byte {
	var b []byte
	for i, e := range l {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64(e), 10)
	}
	return b
}

func decodeList(b []byte) ([]int, error) {
	var l []int
	for _, f := range strings.Fields(string(b)) {
		e, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("list %q: %w", b, err)
		}
		l = append(l, e)
	}
	return l, nil
}

// readLists reads keys in one read-only transaction: each key's list,
// version (0: absent).
func (e *Env) readLists(ctx context.Context, node string, keys []string) (map[string][]int, map[string]uint64, error) {
	var ops []api.TxnOp
	for _, k := range keys {
		ops = append(ops, api.TxnOp{Op: "get", Key: k})
	}
	resp, code, err := e.txn(ctx, node, api.TxnRequest{Ops: ops})
	if err != nil || code != http.StatusOK || len(resp.Results) != len(keys) {
		return nil, nil, fmt.Errorf("read: %s", errText(err, code, resp))
	}
	lists, versions := map[string][]int{}, map[string]uint64{}
	for i, r := range resp.Results {
		if r.Key != keys[i] {
			return nil, nil, fmt.Errorf("read: result %d is for %q, not %q", i, r.Key, keys[i])
		}
		if r.Found == nil || !*r.Found {
			continue
		}
		l, err := decodeList(r.Value)
		if err != nil {
			return nil, nil, err
		}
		lists[r.Key], versions[r.Key] = l, r.Version
	}
	return lists, versions, nil
}

// Step implements Workload.
func (w *ListAppendWorkload) Step(ctx context.Context, env *Env, wk *Worker) Op {
	node := env.RandomNode(wk.Rng)
	ms := w.plan(wk)
	op := Op{Process: wk.ID, F: "txn", Node: node, Txn: ms}
	var keys []string
	seen := map[string]bool{}
	appends := false
	for _, m := range ms {
		if !seen[m.K] {
			seen[m.K] = true
			keys = append(keys, m.K)
		}
		appends = appends || m.F == "append"
	}
	lists, versions, err := env.readLists(ctx, node, keys)
	if err != nil {
		op.Status, op.Error = Fail, err.Error()
		return op
	}
	// The transaction's effect on what it read: reads see its own
	// earlier appends.
	state := map[string][]int{}
	for _, k := range keys {
		state[k] = append([]int(nil), lists[k]...)
	}
	for i, m := range ms {
		if m.F == "append" {
			state[m.K] = append(state[m.K], m.E)
		} else {
			ms[i].L = append([]int(nil), state[m.K]...)
		}
	}
	if !appends {
		op.Status = OK
		return op
	}
	var req api.TxnRequest
	for _, k := range keys {
		if v, ok := versions[k]; ok {
			req.Compare = append(req.Compare, api.TxnCompare{Key: k, Version: &v})
		} else {
			absent := false
			req.Compare = append(req.Compare, api.TxnCompare{Key: k, Exists: &absent})
		}
	}
	for _, k := range keys {
		if len(state[k]) != len(lists[k]) {
			req.Ops = append(req.Ops, api.TxnOp{Op: "put", Key: k, Value: encodeList(state[k])})
		}
	}
	body, _ := json.Marshal(req)
	classifyWrite(&op, env.kv.do(ctx, http.MethodPost, node+"/v1/txn", body, "Content-Type", "application/json"))
	if op.Status != OK {
		// Its reads are not known to have happened together with the
		// appends: keep the appends only.
		for i := range ms {
			ms[i].L = nil
		}
	}
	return op
}

// Final implements Workload: every key ever used, read in read-only
// transactions after the cluster healed.
func (w *ListAppendWorkload) Final(ctx context.Context, env *Env) error {
	w.mu.Lock()
	keys := append([]string(nil), w.used...)
	w.mu.Unlock()
	const batch = 32
	for len(keys) > 0 {
		n := min(batch, len(keys))
		part := keys[:n]
		var err error
		for attempt := 0; ctx.Err() == nil; attempt++ {
			node := env.NodeURL(attempt % env.Cluster.Size())
			call := env.History.Now()
			var lists map[string][]int
			lists, _, err = env.readLists(ctx, node, part)
			if err != nil {
				continue
			}
			op := Op{Process: -1, F: "txn", Node: node, Status: OK, Call: call, Return: env.History.Now()}
			for _, k := range part {
				op.Txn = append(op.Txn, Micro{F: "r", K: k, L: lists[k]})
			}
			env.History.Add(op)
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("final read of the lists: %v: %w", err, ctx.Err())
		}
		keys = keys[n:]
	}
	return nil
}

// Check implements Workload.
func (w *ListAppendWorkload) Check(ops []Op) CheckResult {
	_, res := CheckListAppend(ops)
	return res
}
