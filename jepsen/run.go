package jepsen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// Options configure a run.
type Options struct {
	// Bin is the kvd binary; empty builds one into the run's folder.
	Bin string
	// Dir is where the run's folder is created.
	Dir string
	// Workload is what the clients do.
	Workload Workload
	// Nemesis names the fault to inject (see NemesisByName).
	Nemesis string
	// Nodes and Groups shape the cluster (3 replicas per group, fewer on
	// fewer nodes).
	Nodes, Groups int
	// Duration is how long the clients run, faults included (a fault
	// that holds for a time of its own, see Holder, may extend it).
	Duration time.Duration
	// Workers is the number of concurrent clients.
	Workers int
	// Think is the pause between a worker's operations.
	Think time.Duration
	// Quiet and Hold shape the fault schedule: Quiet without faults, then
	// a fault held for Hold, repeated.
	Quiet, Hold time.Duration
	// OpTimeout bounds one operation.
	OpTimeout time.Duration
	// RecoveryTimeout bounds the wait for the healed cluster.
	RecoveryTimeout time.Duration
	// Seed makes the schedule and the operations reproducible (as far as
	// timing allows); 0 picks one.
	Seed uint64
	// NodeArgs are extra kvd flags for every node.
	NodeArgs []string
	// Backup takes backups from the nodes while the clients run, checks
	// each one's cut (and the workload's invariant over it, see
	// StateChecker) and restores each into a fresh cluster of another
	// shape, reading it back (see backup.go).
	Backup bool
	// Secure runs the cluster on TLS and auth (see Security): client
	// certificates required, peers on mutual TLS, a bearer token on every
	// request, the workload's clients with grants on its keys only, and
	// the data encrypted at rest.
	Secure bool
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// Fault is one fault window.
type Fault struct {
	Nemesis string  `json:"nemesis"`
	What    string  `json:"what"`
	Start   float64 `json:"start_s"`
	End     float64 `json:"end_s"`
	Error   string  `json:"error,omitempty"`
}

// Summary is the outcome of a run, written to summary.json.
type Summary struct {
	Workload  string                    `json:"workload"`
	Nemesis   string                    `json:"nemesis"`
	Nodes     int                       `json:"nodes"`
	Groups    int                       `json:"groups"`
	Seed      uint64                    `json:"seed"`
	Seconds   float64                   `json:"seconds"`
	Ops       map[string]map[Status]int `json:"ops"`
	Faults    []Fault                   `json:"faults"`
	Skipped   []string                  `json:"skipped_faults,omitempty"`
	Recovery  string                    `json:"recovery"`
	ProxyRaft int64                     `json:"proxied_raft_connections"`
	ProxyHTTP int64                     `json:"proxied_http_connections"`
	Checks    []CheckResult             `json:"checks"`
	Verdict   Verdict                   `json:"verdict"`
	Dir       string                    `json:"dir"`
	// Secure says the cluster ran on TLS and auth (Options.Secure).
	Secure bool `json:"secure,omitempty"`

	// NemesisSetup says how the nemesis shaped the cluster before the
	// workload set up (see Preparer), if it did.
	NemesisSetup string `json:"nemesis_setup,omitempty"`
	// Backups is what the backups of a run with Options.Backup came to.
	Backups *BackupReport `json:"backups,omitempty"`
}

// Line is the one-line verdict of a run.
func (s *Summary) Line() string {
	ops := 0
	for _, by := range s.Ops {
		for _, n := range by {
			ops += n
		}
	}
	extra := ""
	if len(s.Skipped) > 0 {
		extra = fmt.Sprintf(", %d fault kinds skipped", len(s.Skipped))
	}
	if s.Secure {
		extra += ", on TLS and auth, encrypted at rest"
	}
	return fmt.Sprintf("%s: %s under %s, %d nodes x %d groups, %d ops, %d faults%s (%s)",
		s.Verdict, s.Workload, s.Nemesis, s.Nodes, s.Groups, ops, len(s.Faults), extra, s.Dir)
}

func (o *Options) defaults() {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Groups == 0 {
		o.Groups = 2
	}
	if o.Duration == 0 {
		o.Duration = 60 * time.Second
	}
	if o.Workers == 0 {
		o.Workers = 10
	}
	if o.Think == 0 {
		o.Think = 5 * time.Millisecond
	}
	if o.Quiet == 0 {
		o.Quiet = 3 * time.Second
	}
	if o.Hold == 0 {
		o.Hold = 6 * time.Second
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = 3 * time.Second
	}
	if o.RecoveryTimeout == 0 {
		o.RecoveryTimeout = 60 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	if o.Dir == "" {
		o.Dir = "jepsen-results"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Run runs one workload under one nemesis and checks the history. The
// error is for runs that could not be carried out; a run whose checks
// fail returns a Summary with an invalid verdict and no error.
func Run(ctx context.Context, o Options) (*Summary, error) {
	o.defaults()
	if o.Workload == nil {
		return nil, errors.New("no workload")
	}
	nem, err := NemesisByName(o.Nemesis)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Dir, fmt.Sprintf("%s-%s-%s", o.Workload.Name(), o.Nemesis, time.Now().Format("20060102-150405.000")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("results folder: %w", err)
	}
	sum := &Summary{Workload: o.Workload.Name(), Nemesis: o.Nemesis, Nodes: o.Nodes, Groups: o.Groups, Seed: o.Seed, Dir: dir, Secure: o.Secure}
	if o.Bin == "" {
		if o.Bin, err = BuildKVD(dir); err != nil {
			return nil, err
		}
	}
	var creds *Security
	if o.Secure {
		if creds, err = NewSecurity(o.Bin, filepath.Join(dir, "secure")); err != nil {
			return nil, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	c, err := StartCluster(sctx, o.Bin, filepath.Join(dir, "cluster"), o.Nodes, o.Groups, o.NodeArgs, creds)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	defer c.Stop()
	nem = applicable(nem, c, sum)
	h := NewHistory()
	token := "" // the root token, on a secure cluster
	if creds != nil {
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := c.checkRefusals(sctx)
		if err == nil {
			token, err = c.workloadToken(sctx, o.Workload)
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("secure cluster: %w", err)
		}
		o.Logf("%s: on TLS and auth; the clients' token has grants on %v only", dir, o.Workload.(KeySpace).KeyPrefixes())
	}
	env := &Env{Cluster: c, History: h, kv: c.kvClient(o.OpTimeout, token), admin: c.kvClient(o.OpTimeout, "")}
	defer env.kv.close()
	defer env.admin.close()
	if p, ok := nem.(Preparer); ok {
		what, err := p.Prepare(ctx, env)
		sum.NemesisSetup = what
		if err != nil {
			return nil, fmt.Errorf("nemesis setup: %w", err)
		}
		o.Logf("%s: nemesis setup: %s", dir, what)
	}
	if err := o.Workload.Setup(ctx, env); err != nil {
		return nil, fmt.Errorf("workload setup: %w", err)
	}
	o.Logf("%s: %s under %s for %v (seed %d)", dir, o.Workload.Name(), o.Nemesis, o.Duration, o.Seed)

	var bt *backupTaker
	if o.Backup {
		bt = newBackupTaker(c, h, filepath.Join(dir, "backups"), o.Duration, o.Logf)
		if err := bt.start(ctx); err != nil {
			return nil, err
		}
		defer bt.stop()
	}
	d := &driver{o: o, env: env, nem: nem}
	sum.Faults = d.drive(ctx)
	if bt != nil {
		bt.stop() // with the clients
	}
	recoverCluster(ctx, o, env, sum)
	sum.Seconds = sec(h.Now())
	sum.ProxyRaft, sum.ProxyHTTP = c.ProxyTraffic()

	ops := h.Ops()
	sum.Ops = countOps(ops)
	check := o.Workload.Check(ops)
	sum.Checks = append(sum.Checks, check)
	if ck, ok := nem.(Checker); ok {
		sum.Checks = append(sum.Checks, ck.Checks()...)
	}
	if bt != nil {
		cuts := bt.judgeCuts(o.Workload, ops)
		restores, where := bt.judgeRestores(ctx, o.Workload, o.Bin, filepath.Join(dir, "restore"), o.Groups+1, o.NodeArgs, creds, o.Logf)
		sum.Checks = append(sum.Checks, cuts, restores)
		sum.Backups = &BackupReport{Taken: bt.taken, Attempts: bt.attempts, Restore: where}
		if err := writeJSONL(filepath.Join(dir, "backups.jsonl"), bt.tries); err != nil {
			return sum, fmt.Errorf("write backups.jsonl: %w", err)
		}
	}
	if creds != nil {
		sum.Checks = append(sum.Checks, creds.check())
	}
	sum.judge()
	if err := writeReport(dir, sum, ops, check); err != nil {
		return sum, err
	}
	if sum.Verdict == Valid {
		// Data and certificates; the logs are kept beside the report.
		for _, d := range []string{"cluster", "restore", "backups", "secure"} {
			os.RemoveAll(filepath.Join(dir, d))
		}
	}
	return sum, nil
}

// applicable returns nem if it can run on c, else nil; either way it
// notes in sum the faults the run skips, with why.
func applicable(nem Nemesis, c *Cluster, sum *Summary) Nemesis {
	if nem == nil {
		return nil
	}
	if err := nem.Applicable(c); err != nil {
		sum.Skipped = append(sum.Skipped, nem.Name()+": "+err.Error())
		return nil
	}
	if m, ok := nem.(*mixedNemesis); ok {
		sum.Skipped = m.skipped(c)
	}
	return nem
}

// recoverCluster heals every fault, restarts the nodes that are down,
// waits for the cluster to recover (noting how that went in
// sum.Recovery) and runs the workload's final reads.
func recoverCluster(ctx context.Context, o Options, env *Env, sum *Summary) {
	c := env.Cluster
	c.Heal()
	for i, n := range c.Nodes {
		c.Resume(i)
		if !n.Running() {
			if err := c.Start(i); err != nil {
				sum.Recovery = "restart " + n.ID + ": " + err.Error()
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, o.RecoveryTimeout)
	err := c.WaitHealthy(rctx)
	cancel()
	if err != nil {
		sum.Recovery = err.Error()
	} else if sum.Recovery == "" {
		sum.Recovery = "ok"
	}
	o.Logf("  %5.1fs  recovery: %s", sec(env.History.Now()), sum.Recovery)
	fctx, cancel := context.WithTimeout(ctx, o.RecoveryTimeout)
	if err := o.Workload.Final(fctx, env); err != nil {
		o.Logf("  final reads: %v", err)
	}
	cancel()
}

// countOps counts operations by function and outcome.
func countOps(ops []Op) map[string]map[Status]int {
	out := map[string]map[Status]int{}
	for _, op := range ops {
		if out[op.F] == nil {
			out[op.F] = map[Status]int{}
		}
		out[op.F][op.Status]++
	}
	return out
}

// judge sets the run's verdict: the worst of its checks', invalid if the
// cluster did not recover, and unknown rather than valid if a fault was
// not applied (it proves nothing).
func (s *Summary) judge() {
	s.Verdict = Valid
	for _, ch := range s.Checks {
		s.Verdict = worse(s.Verdict, ch.Verdict)
	}
	if s.Recovery != "ok" && s.Verdict == Valid {
		s.Verdict = Invalid
		s.Checks = append(s.Checks, CheckResult{Checker: "recovery", Verdict: Invalid, Summary: s.Recovery})
	}
	for _, f := range s.Faults {
		if f.Error != "" && s.Verdict == Valid {
			s.Verdict = Unsure // a fault that was not applied proves nothing
		}
	}
}

func sec(ns int64) float64 { return float64(ns) / 1e9 }
