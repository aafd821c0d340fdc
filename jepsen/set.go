package jepsen

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"
)

// SetWorkload inserts unique elements (create-only puts of fresh keys)
// and, once the cluster has healed, reads them all back. Every
// acknowledged insert must be present; nothing that was never attempted
// may appear; an insert that failed definitely must not appear either.
type SetWorkload struct {
	next atomic.Int64
}

const setPrefix = "set/"

// Name implements Workload.
func (w *SetWorkload) Name() string { return "set" }

// KeyPrefixes implements KeySpace.
func (w *SetWorkload) KeyPrefixes() []string { return []string{setPrefix} }

// Setup implements Workload.
func (w *SetWorkload) Setup(ctx context.Context, env *Env) error { return nil }

// Step implements Workload.
func (w *SetWorkload) Step(ctx context.Context, env *Env, wk *Worker) Op {
	n := w.next.Add(1)
	op := Op{Process: wk.ID, F: "insert", Key: fmt.Sprintf("%s%08d", setPrefix, n), Value: "1"}
	env.kv.put(ctx, &op, env.RandomNode(wk.Rng), "If-None-Match", "*")
	return op
}

// Final implements Workload: a linearizable read of the whole set,
// retried until the cluster answers.
func (w *SetWorkload) Final(ctx context.Context, env *Env) error {
	var lastErr error
	for attempt := 0; ctx.Err() == nil; attempt++ {
		node := env.NodeURL(attempt % env.Cluster.Size())
		op := Op{Process: -1, F: "read", Node: node, Call: env.History.Now()}
		items, err := env.kv.scanAll(ctx, node, setPrefix)
		op.Return = env.History.Now()
		if err == nil {
			op.Status = OK
			for _, it := range items {
				op.Values = append(op.Values, it.Key)
			}
			env.History.Add(op)
			return nil
		}
		lastErr = err
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("final read of the set: %v", lastErr)
}

// Check implements Workload.
func (w *SetWorkload) Check(ops []Op) CheckResult { return CheckSet(ops) }

// CheckSet checks a set history: the last final read must hold every
// acknowledged insert, no definitely failed one, and nothing never
// attempted.
func CheckSet(ops []Op) CheckResult {
	res := CheckResult{Checker: "set", Verdict: Valid}
	attempted := map[string]Status{}
	var final *Op
	for i := range ops {
		switch ops[i].F {
		case "insert":
			attempted[ops[i].Key] = ops[i].Status
		case "read":
			if ops[i].Status == OK {
				final = &ops[i]
			}
		}
	}
	if final == nil {
		res.Verdict = Unsure
		res.Summary = "no final read succeeded"
		return res
	}
	present := map[string]bool{}
	for _, k := range final.Values {
		present[k] = true
	}
	var lost, revived, phantom []string
	acked, unknownPresent := 0, 0
	for k, st := range attempted {
		switch st {
		case OK:
			acked++
			if !present[k] {
				lost = append(lost, k)
			}
		case Fail:
			if present[k] {
				revived = append(revived, k)
			}
		case Unknown:
			if present[k] {
				unknownPresent++
			}
		}
	}
	for k := range present {
		if _, ok := attempted[k]; !ok {
			phantom = append(phantom, k)
		}
	}
	sort.Strings(lost)
	sort.Strings(revived)
	sort.Strings(phantom)
	for _, k := range lost {
		res.fail("acknowledged insert %s is missing", k)
	}
	for _, k := range revived {
		res.fail("insert %s failed definitely but is present", k)
	}
	for _, k := range phantom {
		res.fail("%s is present but was never inserted", k)
	}
	res.Summary = fmt.Sprintf("%d inserts attempted, %d acknowledged, %d read at the end (%d of unknown outcome); %d lost, %d revived, %d phantom",
		len(attempted), acked, len(present), unknownPresent, len(lost), len(revived), len(phantom))
	return res
}
