package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd/api"
)

// BankWorkload moves money between accounts spread over every group
// with cross-group transactions (POST /v1/txn), while readers read every
// account in one transaction. Every read must total the initial sum, no
// balance may go negative, and at the end the total is still the initial
// one.
type BankWorkload struct {
	// Accounts is the number of accounts; Initial each one's balance.
	Accounts int
	Initial  int

	keys []string
}

var _ StateChecker = (*BankWorkload)(nil)

// Name implements Workload.
func (w *BankWorkload) Name() string { return "bank" }

// KeyPrefixes implements KeySpace.
func (w *BankWorkload) KeyPrefixes() []string { return []string{"bank/"} }

func (w *BankWorkload) total() int { return w.Accounts * w.Initial }

// Setup implements Workload: the accounts, spread over the groups, with
// their initial balances, written in one transaction.
func (w *BankWorkload) Setup(ctx context.Context, env *Env) error {
	if w.Accounts == 0 {
		w.Accounts = 8
	}
	if w.Initial == 0 {
		w.Initial = 100
	}
	// Spread the accounts evenly over the groups.
	cl, err := env.Cluster.ClusterMap(0)
	if err != nil {
		return fmt.Errorf("bank setup: %w", err)
	}
	per := map[uint64]int{}
	w.keys = nil
	for i := 0; len(w.keys) < w.Accounts; i++ {
		k := fmt.Sprintf("bank/%d", i)
		g := groupOf(cl, k)
		if per[g] < (w.Accounts+len(cl.Groups)-1)/len(cl.Groups) {
			per[g]++
			w.keys = append(w.keys, k)
		}
	}
	var ops []api.TxnOp
	for _, k := range w.keys {
		ops = append(ops, api.TxnOp{Op: "put", Key: k, Value: []byte(strconv.Itoa(w.Initial))})
	}
	var lastErr error
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		_, code, err := env.txn(ctx, env.NodeURL(attempt%env.Cluster.Size()), api.TxnRequest{Ops: ops})
		if err == nil && code == http.StatusOK {
			return nil
		}
		lastErr = fmt.Errorf("status %d: %v", code, err)
	}
	return fmt.Errorf("bank setup: %v", lastErr)
}

// txn posts a transaction and returns the answer, the status, and a
// transport error.
func (e *Env) txn(ctx context.Context, node string, req api.TxnRequest) (api.TxnResponse, int, error) {
	body, _ := json.Marshal(req)
	a := e.kv.do(ctx, http.MethodPost, node+"/v1/txn", body, "Content-Type", "application/json")
	var resp api.TxnResponse
	if a.err != nil {
		return resp, 0, a.err
	}
	_ = json.Unmarshal(a.body, &resp)
	return resp, a.status, nil
}

// Step implements Workload: a third of the workers read, the others
// transfer.
func (w *BankWorkload) Step(ctx context.Context, env *Env, wk *Worker) Op {
	node := env.RandomNode(wk.Rng)
	if wk.ID%3 == 0 {
		op := Op{Process: wk.ID, F: "read", Node: node}
		var ops []api.TxnOp
		for _, k := range w.keys {
			ops = append(ops, api.TxnOp{Op: "get", Key: k})
		}
		resp, code, err := env.txn(ctx, node, api.TxnRequest{Ops: ops})
		switch {
		case err != nil || code != http.StatusOK:
			op.Status, op.Error = Fail, errText(err, code, resp)
		default:
			op.Status = OK
			for _, r := range resp.Results {
				op.Values = append(op.Values, fmt.Sprintf("%s=%s", r.Key, r.Value))
			}
		}
		return op
	}
	// A transfer: read both balances, then move money if there is enough,
	// comparing the versions read.
	from := w.keys[wk.Rng.IntN(len(w.keys))]
	to := w.keys[wk.Rng.IntN(len(w.keys))]
	for to == from {
		to = w.keys[wk.Rng.IntN(len(w.keys))]
	}
	amount := 1 + wk.Rng.IntN(5)
	op := Op{Process: wk.ID, F: "transfer", Key: from + "->" + to, Value: strconv.Itoa(amount), Node: node}
	resp, code, err := env.txn(ctx, node, api.TxnRequest{Ops: []api.TxnOp{{Op: "get", Key: from}, {Op: "get", Key: to}}})
	if err != nil || code != http.StatusOK || len(resp.Results) != 2 {
		op.Status, op.Error = Fail, "read: "+errText(err, code, resp)
		return op
	}
	fb, _ := strconv.Atoi(string(resp.Results[0].Value))
	tb, _ := strconv.Atoi(string(resp.Results[1].Value))
	if fb < amount {
		op.Status, op.Error = Fail, "insufficient funds"
		return op
	}
	req := api.TxnRequest{
		Compare: []api.TxnCompare{{Key: from, Version: &resp.Results[0].Version}, {Key: to, Version: &resp.Results[1].Version}},
		Ops: []api.TxnOp{{Op: "put", Key: from, Value: []byte(strconv.Itoa(fb - amount))},
			{Op: "put", Key: to, Value: []byte(strconv.Itoa(tb + amount))}},
	}
	body, _ := json.Marshal(req)
	classifyWrite(&op, env.kv.do(ctx, http.MethodPost, node+"/v1/txn", body, "Content-Type", "application/json"))
	return op
}

func errText(err error, code int, resp api.TxnResponse) string {
	if err != nil {
		return err.Error()
	}
	if resp.Error != nil {
		return resp.Error.Code
	}
	return http.StatusText(code)
}

// Final implements Workload: one more read of every account, retried
// until the healed cluster answers.
func (w *BankWorkload) Final(ctx context.Context, env *Env) error {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		node := env.NodeURL(attempt % env.Cluster.Size())
		call := env.History.Now()
		var ops []api.TxnOp
		for _, k := range w.keys {
			ops = append(ops, api.TxnOp{Op: "get", Key: k})
		}
		resp, code, err := env.txn(ctx, node, api.TxnRequest{Ops: ops})
		if err == nil && code == http.StatusOK {
			op := Op{Process: -1, F: "final-read", Node: node, Status: OK, Call: call, Return: env.History.Now()}
			for _, r := range resp.Results {
				op.Values = append(op.Values, fmt.Sprintf("%s=%s", r.Key, r.Value))
			}
			env.History.Add(op)
			return nil
		}
	}
	return fmt.Errorf("final read of the accounts: %w", ctx.Err())
}

// CheckState implements StateChecker: every account is in the cut, with
// a balance that is a non-negative integer, and the balances add up to
// the initial total; a cut through a transfer would miss or double its
// amount.
func (w *BankWorkload) CheckState(state map[string][]byte) []string {
	var errs []string
	sum := 0
	var balances []string
	for _, k := range w.keys {
		v, ok := state[k]
		if !ok {
			errs = append(errs, fmt.Sprintf("account %q is missing", k))
			continue
		}
		balances = append(balances, fmt.Sprintf("%s=%s", k, v))
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 0 {
			errs = append(errs, fmt.Sprintf("account %q holds %q, not a non-negative integer", k, v))
			continue
		}
		sum += n
	}
	if len(errs) == 0 && sum != w.total() {
		errs = append(errs, fmt.Sprintf("the accounts total %d, not %d: %v", sum, w.total(), balances))
	}
	return errs
}

// Check implements Workload.
func (w *BankWorkload) Check(ops []Op) CheckResult { return CheckBank(ops, w.total()) }

// CheckBank checks a bank history: every read (the final one included)
// sees every account, with balances that are non-negative integers adding
// up to total.
func CheckBank(ops []Op, total int) CheckResult {
	res := CheckResult{Checker: "bank", Verdict: Valid}
	reads, final := 0, 0
	for _, op := range ops {
		if (op.F != "read" && op.F != "final-read") || op.Status != OK {
			continue
		}
		reads++
		if op.F == "final-read" {
			final++
		}
		sum := 0
		for _, kv := range op.Values {
			_, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				res.fail("read %d (op %d): balance %q is not a non-negative integer", reads, op.Index, kv)
				continue
			}
			sum += n
		}
		if sum != total {
			res.fail("read %d (op %d at %.3fs) totals %d, not %d: %v", reads, op.Index, float64(op.Call)/1e9, sum, total, op.Values)
		}
	}
	if final == 0 {
		res.Verdict = Unsure
		res.Summary = "no final read succeeded"
		return res
	}
	transfers := map[Status]int{}
	for _, op := range ops {
		if op.F == "transfer" {
			transfers[op.Status]++
		}
	}
	res.Summary = fmt.Sprintf("%d reads (total %d), %d transfers ok, %d unknown", reads, total, transfers[OK], transfers[Unknown])
	return res
}
