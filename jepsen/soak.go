package jepsen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// A soak runs every workload at the same time on one cluster, under the
// mixed nemesis, for a long time (make soak: 30 minutes), and samples
// each node's resources as it goes. Each workload's history is checked by
// its own checker at the end; on top of that the soak judges whether
// memory, goroutines, file descriptors, disk and transaction records
// stayed bounded, and plots each of them over time.

// soakShares are the workers each workload gets in a soak before any
// extra ones are handed out: enough for every role it has (stale: two
// writers and two readers; bank: a reader and two transferrers).
var soakShares = map[string]int{"register": 4, "set": 2, "stale": 4, "bank": 3}

// soakDefaultShare is the share of a workload soakShares does not name.
const soakDefaultShare = 3

// SoakWorkload runs several workloads at once on one cluster. Each
// worker belongs to one of them for the whole run, every operation is
// tagged with its workload's name (Op.W), each workload sees only its
// own operations when checked, and each sees an Env of its own whose
// History collects what it records itself (final reads): those join the
// run's history, tagged, after its Final. While the clients run it
// samples every node's resources (see Resources) and Check judges them.
type SoakWorkload struct {
	// Duration is how long the clients run: the resources are judged
	// over it. 0 judges over the whole sampled time.
	Duration time.Duration
	// Interval is the time between two samples of the resources; 0
	// samples nothing.
	Interval time.Duration

	parts   []*soakPart
	slots   []soakSlot
	live    *liveData
	sampler *sampler
	// checks are the last Check's results, one per checker.
	checks []CheckResult
}

// soakPart is one workload of a soak.
type soakPart struct {
	name    string
	w       Workload
	workers int
	env     *Env
	hist    *History // what the workload records itself
	keys    *wireRecorder
	// ops counts its operations by function and outcome; checked is how
	// long its checker took. Check sets both.
	ops     map[string]map[Status]int
	checked time.Duration
}

// soakSlot places a worker of the run: its workload and its id there.
type soakSlot struct {
	part  *soakPart
	local int
}

// soakWorker is a run worker's state: the worker its workload sees.
type soakWorker struct {
	part *soakPart
	w    *Worker
}

var _ Workload = (*SoakWorkload)(nil)

// NewSoakWorkload returns a soak of the named workloads with at least
// workers workers: each workload gets its share (soakShares) and any
// extra workers are dealt out in turn.
func NewSoakWorkload(names []string, workers int) (*SoakWorkload, error) {
	var ws []Workload
	for _, n := range names {
		w, err := WorkloadByName(n)
		if err != nil {
			return nil, err
		}
		switch w := w.(type) {
		case *StaleWorkload:
			w.Keys = 2 // two of its four workers write, two read
		case *RegisterWorkload:
			// The timeout bounds the search over every key together.
			// Keys retire after a bounded number of operations, so the
			// search grows with the length of the run, not faster: a
			// 3-minute soak checks in a tenth of a second, the default
			// minute is for runs of a minute.
			w.CheckTimeout = 5 * time.Minute
		}
		ws = append(ws, w)
	}
	return newSoak(ws, workers)
}

// newSoak returns a soak of the workloads ws with at least workers
// workers.
func newSoak(ws []Workload, workers int) (*SoakWorkload, error) {
	if len(ws) == 0 {
		return nil, errors.New("a soak needs at least one workload")
	}
	s := &SoakWorkload{Interval: 10 * time.Second, live: &liveData{size: map[string]int{}}}
	total := 0
	for _, w := range ws {
		share := soakDefaultShare
		if n, ok := soakShares[w.Name()]; ok {
			share = n
		}
		s.parts = append(s.parts, &soakPart{name: w.Name(), w: w, workers: share})
		total += share
	}
	for i := 0; total < workers; i++ {
		s.parts[i%len(s.parts)].workers++
		total++
	}
	for _, p := range s.parts {
		for i := range p.workers {
			s.slots = append(s.slots, soakSlot{part: p, local: i})
		}
	}
	return s, nil
}

// Workers returns how many workers the soak runs.
func (s *SoakWorkload) Workers() int { return len(s.slots) }

// Name implements Workload.
func (s *SoakWorkload) Name() string { return "soak" }

// KeyPrefixes implements KeySpace: every workload's prefixes. A workload
// that names none leaves the soak naming none.
func (s *SoakWorkload) KeyPrefixes() []string {
	var out []string
	for _, p := range s.parts {
		ks, ok := p.w.(KeySpace)
		if !ok {
			return nil
		}
		out = append(out, ks.KeyPrefixes()...)
	}
	return out
}

// Setup implements Workload: it starts sampling, then sets up every
// workload with an Env of its own.
func (s *SoakWorkload) Setup(ctx context.Context, env *Env) error {
	if s.Interval > 0 {
		s.sampler = newSampler(env.Cluster, env.History, s.Interval, s.live)
		s.sampler.start()
	}
	for _, p := range s.parts {
		p.hist = &History{start: env.History.Start()}
		p.keys = &wireRecorder{next: env.kv.hc.Transport, live: s.live, prefixes: map[string]bool{}}
		penv := *env
		penv.History = p.hist
		penv.kv = &kvClient{timeout: env.kv.timeout, hc: &http.Client{Transport: p.keys}}
		p.env = &penv
		if err := p.w.Setup(ctx, p.env); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

// Step implements Workload: the worker's workload takes the step.
func (s *SoakWorkload) Step(ctx context.Context, env *Env, w *Worker) Op {
	st, _ := w.State.(*soakWorker)
	if st == nil {
		slot := s.slots[w.ID%len(s.slots)]
		local := slot.local + w.ID/len(s.slots)*slot.part.workers
		st = &soakWorker{part: slot.part, w: &Worker{ID: local, Rng: w.Rng}}
		w.State = st
	}
	op := st.part.w.Step(ctx, st.part.env, st.w)
	op.W, op.Process = st.part.name, w.ID
	return op
}

// Final implements Workload: it stops sampling, then runs every
// workload's Final in turn and adds what each recorded to the run's
// history.
func (s *SoakWorkload) Final(ctx context.Context, env *Env) error {
	s.close()
	var errs []error
	for _, p := range s.parts {
		if err := p.w.Final(ctx, p.env); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
		for _, op := range p.hist.Ops() {
			op.W = p.name
			env.History.Add(op)
		}
	}
	return errors.Join(errs...)
}

// samples returns the resources sampled so far, none if the soak samples
// nothing.
func (s *SoakWorkload) samples() []ResourceSample {
	if s.sampler == nil {
		return nil
	}
	return s.sampler.samples()
}

// close stops sampling; it is idempotent.
func (s *SoakWorkload) close() {
	if s.sampler != nil {
		s.sampler.stop()
	}
}

// Check implements Workload: each workload's checker on its own
// operations, that no two workloads used the same key prefix, and that
// the resources stayed bounded. The one result it returns sums them up;
// Checks lists them.
func (s *SoakWorkload) Check(ops []Op) CheckResult {
	by := map[string][]Op{}
	for _, op := range ops {
		by[op.W] = append(by[op.W], op)
	}
	s.checks = nil
	for _, p := range s.parts {
		p.ops = countOps(by[p.name])
		start := time.Now()
		r := p.w.Check(by[p.name])
		p.checked = time.Since(start)
		r.Summary = fmt.Sprintf("%s: %s (%d operations, checked in %.1fs)", p.name, r.Summary, len(by[p.name]), p.checked.Seconds())
		s.checks = append(s.checks, r)
		delete(by, p.name)
	}
	s.checks = append(s.checks, s.checkKeyPrefixes(by))
	s.checks = append(s.checks, JudgeResources(s.samples(), s.Duration.Seconds()).CheckResult())

	merged := CheckResult{Checker: "soak", Verdict: Valid}
	var parts []string
	for _, r := range s.checks {
		merged.Verdict = worse(merged.Verdict, r.Verdict)
		parts = append(parts, fmt.Sprintf("%s %s", r.Checker, r.Verdict))
		for _, e := range r.Errors {
			merged.fail("%s: %s", r.Checker, e)
		}
	}
	merged.Summary = strings.Join(parts, "; ")
	return merged
}

// Checks returns the results of the last Check, one per checker.
func (s *SoakWorkload) Checks() []CheckResult { return s.checks }

// checkKeyPrefixes checks that no key prefix (what comes before the
// first "/") was used by two workloads, as seen on the wire, so no
// workload can read another's keys (a set's final scan, say), and that
// every operation belongs to a workload (rest holds those that did not).
func (s *SoakWorkload) checkKeyPrefixes(rest map[string][]Op) CheckResult {
	res := CheckResult{Checker: "key-prefixes", Verdict: Valid}
	users := map[string][]string{}
	for _, p := range s.parts {
		if p.keys == nil {
			continue
		}
		for _, pre := range p.keys.prefixList() {
			users[pre] = append(users[pre], p.name)
		}
	}
	var prefixes []string
	for pre, ws := range users {
		prefixes = append(prefixes, pre)
		if len(ws) > 1 {
			res.fail("key prefix %q is used by %s", pre, strings.Join(ws, " and "))
		}
	}
	sort.Strings(prefixes)
	for w, ops := range rest {
		res.fail("%d operations belong to no workload of the soak (w=%q)", len(ops), w)
	}
	res.Summary = fmt.Sprintf("%d workloads used %d key prefixes (%s)", len(s.parts), len(prefixes), strings.Join(prefixes, ", "))
	return res
}

// Soak runs every workload (WorkloadNames) at once on one cluster under
// o.Nemesis (default mixed) for o.Duration, checks each workload's
// history with its own checker and judges the resources each node used.
// Besides Run's report, the run's folder holds resources.jsonl (every
// sample), soak.json (operations per workload, checking times, each
// resource's figures) and one resource-*.png per resource.
func Soak(ctx context.Context, o Options) (*Summary, error) {
	o.defaults()
	if o.Nemesis == "" {
		o.Nemesis = "mixed"
	}
	s, err := NewSoakWorkload(WorkloadNames(), o.Workers)
	if err != nil {
		return nil, err
	}
	s.Duration = o.Duration
	o.Workload, o.Workers = s, s.Workers()
	// A watch history small enough that a soak fills it and must prune
	// it, so that pruning is judged (the default keeps 100 000 events a
	// group, more than a half hour writes to some groups).
	o.NodeArgs = append([]string{"--watch-history", "5000"}, o.NodeArgs...)
	defer s.close()
	sum, err := Run(ctx, o)
	if err != nil {
		return sum, err
	}
	s.close()
	if len(s.checks) > 0 && len(sum.Checks) > 0 {
		sum.Checks = append(append([]CheckResult(nil), s.checks...), sum.Checks[1:]...)
	}
	return sum, s.report(sum, o.Logf)
}

// report writes the soak's part of the run's folder and rewrites
// summary.json with one check per checker.
func (s *SoakWorkload) report(sum *Summary, logf func(string, ...any)) error {
	dir := sum.Dir
	samples := s.samples()
	j := JudgeResources(samples, s.Duration.Seconds())
	for _, r := range s.checks {
		if r.Verdict != Valid {
			// Only for a failure: a valid half hour of register
			// operations draws a page of hundreds of megabytes.
			if err := r.writeVisualization(dir, r.Checker+".html"); err != nil {
				return err
			}
		}
	}
	if err := writeJSONL(filepath.Join(dir, "resources.jsonl"), samples); err != nil {
		return fmt.Errorf("write resources: %w", err)
	}
	for _, r := range soakResources {
		if err := plotResource(filepath.Join(dir, "resource-"+r.Name+".png"), r, samples, sum.Faults, j); err != nil {
			return fmt.Errorf("plot %s: %w", r.Name, err)
		}
	}

	type workloadFigures struct {
		Workers      int                       `json:"workers"`
		Ops          map[string]map[Status]int `json:"ops"`
		CheckSeconds float64                   `json:"check_seconds"`
	}
	out := struct {
		Workloads map[string]workloadFigures `json:"workloads"`
		Resources *ResourceJudgement         `json:"resources"`
	}{Workloads: map[string]workloadFigures{}, Resources: j}
	for _, p := range s.parts {
		out.Workloads[p.name] = workloadFigures{Workers: p.workers, Ops: p.ops, CheckSeconds: p.checked.Seconds()}
		n, ok := 0, 0
		for _, by := range p.ops {
			for st, c := range by {
				n += c
				if st == OK {
					ok += c
				}
			}
		}
		logf("  %-12s %2d workers %7d ops (%d ok), checked in %.1fs", p.name, p.workers, n, ok, p.checked.Seconds())
	}
	for _, l := range j.lines() {
		logf("  %s", l)
	}
	if err := writeJSON(filepath.Join(dir, "soak.json"), out); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, "summary.json"), sum)
}
