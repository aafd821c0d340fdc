package jepsen

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/kvd-project/kvd"
)

// RegisterWorkload runs get, put, delete and compare-and-set (If-Match)
// on a few keys spread over the groups, with linearizable and follower
// reads, and checks each key's history for linearizability with
// porcupine. Keys are retired after OpsPerKey operations, or sooner once
// UnknownPerKey writes on them ended with an unknown outcome, so every
// per-key history stays small enough to check: a write whose outcome is
// unknown may take effect at any later point, and the search grows about
// twofold with each one open on a key (10 took 45 ms where 7 took 1 ms;
// a key that gathered more made a run's check time out).
type RegisterWorkload struct {
	// Keys is how many keys are in use at once.
	Keys int
	// OpsPerKey bounds the operations on one key.
	OpsPerKey int
	// UnknownPerKey retires a key once that many writes on it ended with
	// an unknown outcome.
	UnknownPerKey int
	// CheckTimeout bounds the linearizability search; running out of it
	// is an unknown verdict, which fails the run.
	CheckTimeout time.Duration

	mu     sync.Mutex // protects active and next
	active []*regKey
	next   int
}

type regKey struct {
	name    string
	ops     int
	unknown int
}

// regWorker is a worker's memory of versions it has seen, for cas.
type regWorker struct {
	seen map[string]uint64
	n    int
}

// Name implements Workload.
func (w *RegisterWorkload) Name() string { return "register" }

// KeyPrefixes implements KeySpace.
func (w *RegisterWorkload) KeyPrefixes() []string { return []string{"reg/"} }

// Setup implements Workload.
func (w *RegisterWorkload) Setup(ctx context.Context, env *Env) error {
	if w.Keys == 0 {
		w.Keys = 8
	}
	if w.OpsPerKey == 0 {
		w.OpsPerKey = 150
	}
	if w.UnknownPerKey == 0 {
		w.UnknownPerKey = 2
	}
	if w.CheckTimeout == 0 {
		w.CheckTimeout = 60 * time.Second
	}
	w.active = make([]*regKey, w.Keys)
	for i := range w.active {
		w.active[i] = w.freshKey()
	}
	return nil
}

func (w *RegisterWorkload) freshKey() *regKey {
	w.next++
	return &regKey{name: fmt.Sprintf("reg/%d", w.next)}
}

// pick chooses a key, retiring exhausted ones.
func (w *RegisterWorkload) pick(i int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := w.active[i%len(w.active)]
	k.ops++
	if k.ops >= w.OpsPerKey {
		w.active[i%len(w.active)] = w.freshKey()
	}
	return k.name
}

// sawUnknown counts a write with an unknown outcome on key, retiring the
// key if it is still in use and has had UnknownPerKey of them.
func (w *RegisterWorkload) sawUnknown(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, k := range w.active {
		if k.name == key {
			k.unknown++
			if k.unknown >= w.UnknownPerKey {
				w.active[i] = w.freshKey()
			}
			return
		}
	}
}

// Step implements Workload.
func (w *RegisterWorkload) Step(ctx context.Context, env *Env, wk *Worker) Op {
	st, _ := wk.State.(*regWorker)
	if st == nil {
		st = &regWorker{seen: map[string]uint64{}}
		wk.State = st
	}
	key := w.pick(wk.Rng.IntN(w.Keys))
	op := Op{Process: wk.ID, Key: key}
	node := env.RandomNode(wk.Rng)
	switch r := wk.Rng.IntN(100); {
	case r < 25:
		op.F = "get"
		env.kv.get(ctx, &op, node, string(kvd.Linearizable))
	case r < 40:
		op.F = "get"
		env.kv.get(ctx, &op, node, string(kvd.Follower))
	case r < 70:
		op.F = "put"
		st.n++
		op.Value = fmt.Sprintf("w%d-%d", wk.ID, st.n)
		env.kv.put(ctx, &op, node)
	case r < 80:
		op.F = "delete"
		env.kv.del(ctx, &op, node)
	default:
		op.F = "cas"
		st.n++
		op.Value = fmt.Sprintf("w%d-%d", wk.ID, st.n)
		op.Expect = st.seen[key]
		if op.Expect == 0 {
			op.Expect = 1 // certainly not current: a cas that must fail
		}
		env.kv.put(ctx, &op, node, "If-Match", fmt.Sprintf(`"%d"`, op.Expect))
	}
	if op.Status == OK && op.Version != 0 {
		st.seen[key] = op.Version
	}
	if op.Status == Unknown && op.F != "get" {
		w.sawUnknown(key)
	}
	return op
}

// Final implements Workload: nothing to read at the end.
func (w *RegisterWorkload) Final(ctx context.Context, env *Env) error { return nil }

// regState is the model's state of one key. verKnown is false after a
// write whose outcome (and so its version) is unknown.
type regState struct {
	found    bool
	val      string
	ver      uint64
	verKnown bool
}

// RegisterModel is the porcupine model of one key: a register with
// versions. Reads must see the latest value and, when the model knows
// it, the latest version; versions of successive writes grow; a cas
// applies exactly when the current version is the expected one. Writes
// with unknown outcomes are given a completion time at the end of the
// history, so they may take effect at any time after their invocation,
// or never.
func RegisterModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			by := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range h {
				k := op.Input.(Op).Key
				if _, ok := by[k]; !ok {
					keys = append(keys, k)
				}
				by[k] = append(by[k], op)
			}
			sort.Strings(keys)
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, by[k])
			}
			return out
		},
		Init: func() []any { return []any{regState{verKnown: true}} },
		Step: func(state, input, output any) []any {
			s := state.(regState)
			op := output.(Op)
			return regStep(s, op)
		},
		Equal: func(a, b any) bool { return a.(regState) == b.(regState) },
		DescribeOperation: func(input, output any) string {
			op := output.(Op)
			return describeOp(op)
		},
		DescribeState: func(state any) string {
			s := state.(regState)
			if !s.found {
				return "absent"
			}
			if !s.verKnown {
				return fmt.Sprintf("%s @?", s.val)
			}
			return fmt.Sprintf("%s @%d", s.val, s.ver)
		},
	}
	return nm.ToModel()
}

func describeOp(op Op) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", op.F)
	switch op.F {
	case "get":
		if !op.Found {
			fmt.Fprintf(&b, " -> absent")
		} else {
			fmt.Fprintf(&b, " -> %s @%d", op.Value, op.Version)
		}
		fmt.Fprintf(&b, " (%s via %s)", op.Consistency, op.Node)
	case "put":
		fmt.Fprintf(&b, "(%s)", op.Value)
	case "cas":
		fmt.Fprintf(&b, "(@%d -> %s)", op.Expect, op.Value)
	}
	if op.Status == OK && op.F != "get" {
		if op.F == "delete" {
			fmt.Fprintf(&b, " -> deleted=%v", op.Deleted)
		} else {
			fmt.Fprintf(&b, " -> @%d", op.Version)
		}
	}
	if op.Status != OK {
		fmt.Fprintf(&b, " [%s %s]", op.Status, op.Error)
	}
	return b.String()
}

// regStep returns the states a key may be in after op, none if op is
// impossible from s.
func regStep(s regState, op Op) []any {
	switch op.F {
	case "get":
		if op.Found != s.found || (op.Found && op.Value != s.val) {
			return nil
		}
		if op.Found && s.verKnown && op.Version != s.ver {
			return nil
		}
		if op.Found {
			s.ver, s.verKnown = op.Version, true
		}
		return []any{s}
	case "put":
		if op.Status == Unknown {
			return []any{regState{found: true, val: op.Value}}
		}
		if s.verKnown && s.found && op.Version <= s.ver {
			return nil // versions must grow
		}
		return []any{regState{found: true, val: op.Value, ver: op.Version, verKnown: true}}
	case "delete":
		if op.Status == Unknown {
			return []any{regState{verKnown: true}}
		}
		if op.Deleted != s.found {
			return nil
		}
		return []any{regState{verKnown: true}}
	case "cas":
		matches := s.found && s.ver == op.Expect
		maybe := s.found && !s.verKnown
		applied := regState{found: true, val: op.Value, ver: op.Version, verKnown: op.Status == OK}
		switch op.Status {
		case OK:
			if !(matches && s.verKnown) && !maybe {
				return nil
			}
			if s.verKnown && op.Version <= s.ver {
				return nil
			}
			return []any{applied}
		case Fail: // precondition failed
			if matches && s.verKnown {
				return nil
			}
			return []any{s}
		default: // unknown
			switch {
			case maybe:
				return []any{applied, s}
			case matches:
				return []any{applied}
			}
			return []any{s}
		}
	}
	return nil
}

// toPorcupine turns a history into porcupine operations: reads and writes
// that completed, failed cas (a definite answer: the version did not
// match), and writes with unknown outcomes, completing at the end of
// time. Failed writes and reads without an answer had no effect.
func toPorcupine(ops []Op) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range ops {
		switch {
		case op.Status == OK:
		case op.Status == Fail && op.F == "cas" && op.Error == "precondition_failed":
		case op.Status == Unknown && op.F != "get":
			op.Return = math.MaxInt64
		default:
			continue
		}
		out = append(out, porcupine.Operation{ClientId: op.Process, Input: op, Output: op, Call: op.Call, Return: op.Return})
	}
	return out
}

// Check implements Workload.
func (w *RegisterWorkload) Check(ops []Op) CheckResult {
	return CheckRegister(ops, w.CheckTimeout)
}

// CheckRegister checks a register history for linearizability, per key.
func CheckRegister(ops []Op, timeout time.Duration) CheckResult {
	res := CheckResult{Checker: "linearizable-register", Verdict: Valid}
	var regOps []Op
	keys := map[string]bool{}
	for _, op := range ops {
		if op.F == "get" || op.F == "put" || op.F == "delete" || op.F == "cas" {
			regOps = append(regOps, op)
			keys[op.Key] = true
		}
	}
	model := RegisterModel()
	pops := toPorcupine(regOps)
	// The plain search is about three times faster than the one that
	// records partial linearizations for the visualization; the latter
	// runs after it, within what remains of the timeout, or shows an
	// illegal history.
	start := time.Now()
	result := porcupine.CheckOperationsTimeout(model, pops, timeout)
	if rest := timeout - time.Since(start); result != porcupine.Unknown && rest > 0 {
		vres, info := porcupine.CheckOperationsVerbose(model, pops, rest)
		if vres == result {
			res.Visualization = func(path string) error { return porcupine.VisualizePath(model, info, path) }
		}
	}
	switch result {
	case porcupine.Ok:
		res.Summary = fmt.Sprintf("%d operations on %d keys are linearizable", len(pops), len(keys))
	case porcupine.Illegal:
		res.Verdict = Invalid
		res.Summary = fmt.Sprintf("%d operations on %d keys are NOT linearizable; see the visualization", len(pops), len(keys))
		// Name the keys at fault: check each alone (they are small).
		byKey := map[string][]porcupine.Operation{}
		for _, p := range pops {
			k := p.Input.(Op).Key
			byKey[k] = append(byKey[k], p)
		}
		var bad []string
		for k, kops := range byKey {
			if porcupine.CheckOperationsTimeout(model, kops, timeout) == porcupine.Illegal {
				bad = append(bad, k)
			}
		}
		sort.Strings(bad)
		for _, k := range bad {
			res.fail("key %s: no linearization of its %d operations", k, len(byKey[k]))
		}
	default:
		res.Verdict = Unsure
		res.Summary = fmt.Sprintf("the linearizability check of %d operations did not finish within %v", len(pops), timeout)
	}
	return res
}
