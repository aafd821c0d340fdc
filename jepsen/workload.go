package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
)

// Env is what a workload sees of a run.
type Env struct {
	Cluster *Cluster
	History *History
	// kv is the workload's clients' (on a secure cluster, with a token
	// for the workload's keys only); admin is the nemeses' (with the
	// root token), for their probes' keys.
	kv, admin *kvClient
}

// NodeURL returns the base URL of node i.
func (e *Env) NodeURL(i int) string { return e.Cluster.URL(i) }

// RandomNode returns the base URL of a random node.
func (e *Env) RandomNode(rng *rand.Rand) string {
	return e.NodeURL(rng.IntN(e.Cluster.Size()))
}

// Worker is one client process of a run.
type Worker struct {
	ID  int
	Rng *rand.Rand
	// State is the workload's per-worker state.
	State any
}

// Workload generates operations, runs them and checks the history. The
// harness calls Setup once, Step from every worker concurrently while the
// nemesis acts, Final once the cluster has healed, then Check. New
// workloads (cross-group transactions) plug in by implementing it.
type Workload interface {
	// Name names the workload.
	Name() string
	// Setup prepares state before the clients start.
	Setup(ctx context.Context, env *Env) error
	// Step runs one operation for w and fills in its outcome; the
	// harness stamps the invocation and completion times and records it.
	Step(ctx context.Context, env *Env, w *Worker) Op
	// Final runs after the cluster has healed and recovered, recording
	// any final reads in env.History itself.
	Final(ctx context.Context, env *Env) error
	// Check judges a history.
	Check(ops []Op) CheckResult
}

// Verdict is a checker's verdict.
type Verdict string

// Verdicts. Unknown (the checker could not decide, e.g. it timed out)
// fails a run just as Invalid does.
const (
	Valid   Verdict = "valid"
	Invalid Verdict = "invalid"
	Unsure  Verdict = "unknown"
)

// worse returns the worse of two verdicts.
func worse(a, b Verdict) Verdict {
	rank := map[Verdict]int{Valid: 0, Unsure: 1, Invalid: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// CheckResult is a checker's report.
type CheckResult struct {
	Checker string   `json:"checker"`
	Verdict Verdict  `json:"verdict"`
	Summary string   `json:"summary"`
	Errors  []string `json:"errors,omitempty"`
	// Visualization, if set, writes an HTML visualization to path.
	Visualization func(path string) error `json:"-"`
	// VisualizationFile names the visualization's file in the run's
	// folder (default linearizability.html).
	VisualizationFile string `json:"visualization,omitempty"`
}

// maxErrors bounds the errors a checker lists.
const maxErrors = 20

func (r *CheckResult) fail(format string, args ...any) {
	r.Verdict = Invalid
	if len(r.Errors) < maxErrors {
		r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
	}
}
