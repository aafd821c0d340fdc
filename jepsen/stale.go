package jepsen

import (
	"context"
	"fmt"
	"sort"
	"strconv"

	"github.com/kvd-project/kvd"
)

// StaleWorkload checks consistency=stale reads: one writer per key writes
// increasing numbers; the others read at random nodes with
// consistency=stale. A stale read may be old, but it must return a value
// that was written, one version must always carry the same value, and
// reads served by one replica never go backwards.
type StaleWorkload struct {
	// Keys is the number of keys, each with its own writer.
	Keys int
}

type staleWriter struct {
	key string
	n   int
}

// Name implements Workload.
func (w *StaleWorkload) Name() string { return "stale" }

// KeyPrefixes implements KeySpace.
func (w *StaleWorkload) KeyPrefixes() []string { return []string{"stale/"} }

// Setup implements Workload.
func (w *StaleWorkload) Setup(ctx context.Context, env *Env) error {
	if w.Keys == 0 {
		w.Keys = 4
	}
	return nil
}

// Step implements Workload: the first Keys workers write, the rest read.
func (w *StaleWorkload) Step(ctx context.Context, env *Env, wk *Worker) Op {
	if wk.ID < w.Keys {
		st, _ := wk.State.(*staleWriter)
		if st == nil {
			st = &staleWriter{key: fmt.Sprintf("stale/%d", wk.ID)}
			wk.State = st
		}
		st.n++
		op := Op{Process: wk.ID, F: "put", Key: st.key, Value: strconv.Itoa(st.n)}
		env.kv.put(ctx, &op, env.RandomNode(wk.Rng))
		return op
	}
	op := Op{Process: wk.ID, F: "get", Key: fmt.Sprintf("stale/%d", wk.Rng.IntN(w.Keys))}
	env.kv.get(ctx, &op, env.RandomNode(wk.Rng), string(kvd.Stale))
	return op
}

// Final implements Workload.
func (w *StaleWorkload) Final(ctx context.Context, env *Env) error { return nil }

// Check implements Workload.
func (w *StaleWorkload) Check(ops []Op) CheckResult { return CheckStale(ops) }

// CheckStale checks stale reads: every value read was written (by an
// attempted put), each version maps to one value, and on each replica,
// a read that began after another ended never shows an older version.
func CheckStale(ops []Op) CheckResult {
	res := CheckResult{Checker: "stale-reads", Verdict: Valid}
	written := map[string]map[string]bool{}
	for _, op := range ops {
		if op.F == "put" {
			if written[op.Key] == nil {
				written[op.Key] = map[string]bool{}
			}
			written[op.Key][op.Value] = true
		}
	}
	type replicaKey struct{ served, key string }
	reads := map[replicaKey][]Op{}
	valueOf := map[string]map[uint64]string{}
	nreads := 0
	for _, op := range ops {
		if op.F != "get" || op.Status != OK || !op.Found {
			continue
		}
		nreads++
		if !written[op.Key][op.Value] {
			res.fail("read of %s returned %q, which was never written (op %d)", op.Key, op.Value, op.Index)
		}
		if valueOf[op.Key] == nil {
			valueOf[op.Key] = map[uint64]string{}
		}
		if v, ok := valueOf[op.Key][op.Version]; ok && v != op.Value {
			res.fail("version %d of %s read as both %q and %q", op.Version, op.Key, v, op.Value)
		}
		valueOf[op.Key][op.Version] = op.Value
		reads[replicaKey{op.Served, op.Key}] = append(reads[replicaKey{op.Served, op.Key}], op)
	}
	for rk, rs := range reads {
		sort.Slice(rs, func(i, j int) bool { return rs[i].Call < rs[j].Call })
		// The highest version among reads that completed before each
		// read began must not exceed what that read saw.
		byReturn := append([]Op(nil), rs...)
		sort.Slice(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
		var maxDone uint64
		var maxOp Op
		j := 0
		for _, r := range rs {
			for j < len(byReturn) && byReturn[j].Return < r.Call {
				if byReturn[j].Version > maxDone {
					maxDone, maxOp = byReturn[j].Version, byReturn[j]
				}
				j++
			}
			if r.Version < maxDone {
				res.fail("replica %s went backwards on %s: version %d (op %d) after version %d (op %d)",
					rk.served, rk.key, r.Version, r.Index, maxDone, maxOp.Index)
			}
		}
	}
	res.Summary = fmt.Sprintf("%d stale reads of %d keys on %d replica-key pairs", nreads, len(written), len(reads))
	return res
}
