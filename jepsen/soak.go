package jepsen

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/kvd-project/kvd/api"
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
		p.ops = map[string]map[Status]int{}
		for _, op := range by[p.name] {
			if p.ops[op.F] == nil {
				p.ops[op.F] = map[Status]int{}
			}
			p.ops[op.F][op.Status]++
		}
		start := time.Now()
		r := p.w.Check(by[p.name])
		p.checked = time.Since(start)
		r.Summary = fmt.Sprintf("%s: %s (%d operations, checked in %.1fs)", p.name, r.Summary, len(by[p.name]), p.checked.Seconds())
		s.checks = append(s.checks, r)
		delete(by, p.name)
	}
	s.checks = append(s.checks, s.checkKeyPrefixes(by))
	var samples []ResourceSample
	if s.sampler != nil {
		samples = s.sampler.samples()
	}
	s.checks = append(s.checks, JudgeResources(samples, s.Duration.Seconds()).CheckResult())

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

// worse returns the worse of two verdicts.
func worse(a, b Verdict) Verdict {
	rank := map[Verdict]int{Valid: 0, Unsure: 1, Invalid: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
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
	var samples []ResourceSample
	if s.sampler != nil {
		samples = s.sampler.samples()
	}
	j := JudgeResources(samples, s.Duration.Seconds())
	for _, r := range s.checks {
		if r.Visualization != nil && r.Verdict != Valid {
			// Only for a failure: a valid half hour of register
			// operations draws a page of hundreds of megabytes.
			if err := r.Visualization(filepath.Join(dir, cmp.Or(r.VisualizationFile, r.Checker+".html"))); err != nil {
				return fmt.Errorf("visualization: %w", err)
			}
		}
	}
	f, err := os.Create(filepath.Join(dir, "resources.jsonl"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, smp := range samples {
		enc.Encode(smp)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
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
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "soak.json"), b, 0o644); err != nil {
		return err
	}
	b, err = json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "summary.json"), b, 0o644)
}

// wireRecorder sits between one workload and the HTTP transport: it
// notes the key prefixes the workload's requests use, and the keys and
// value sizes they write into liveData. Writes count when sent, whatever
// their outcome: the live data it reports is an upper bound.
type wireRecorder struct {
	next http.RoundTripper
	live *liveData

	// mu protects prefixes.
	mu       sync.Mutex
	prefixes map[string]bool
}

// RoundTrip implements http.RoundTripper.
func (r *wireRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	path := req.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/v1/kv/"):
		key, err := url.PathUnescape(strings.TrimPrefix(path, "/v1/kv/"))
		if err == nil {
			r.note(key)
			switch req.Method {
			case http.MethodPut:
				r.live.put(key, int(req.ContentLength))
			case http.MethodDelete:
				r.live.del(key)
			}
		}
	case path == "/v1/kv":
		r.note(req.URL.Query().Get("prefix"))
	case path == "/v1/txn" && req.GetBody != nil:
		if body, err := req.GetBody(); err == nil {
			var t api.TxnRequest
			if json.NewDecoder(body).Decode(&t) == nil {
				for _, c := range t.Compare {
					r.note(c.Key)
				}
				for _, op := range t.Ops {
					r.note(op.Key)
					switch op.Op {
					case "put":
						r.live.put(op.Key, len(op.Value))
					case "add":
						r.live.put(op.Key, 20) // a decimal integer
					case "delete":
						r.live.del(op.Key)
					}
				}
			}
			body.Close()
		}
	}
	return r.next.RoundTrip(req)
}

// note records the prefix of key.
func (r *wireRecorder) note(key string) {
	pre, _, ok := strings.Cut(key, "/")
	if !ok {
		pre = "(none)"
	}
	r.mu.Lock()
	r.prefixes[pre] = true
	r.mu.Unlock()
}

func (r *wireRecorder) prefixList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for p := range r.prefixes {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// liveData is what the clients have written and not deleted: a key's
// value size by key, summed up as they change.
type liveData struct {
	// mu protects size and bytes.
	mu    sync.Mutex
	size  map[string]int
	bytes int64
}

func (l *liveData) put(key string, n int) {
	n = max(n, 0) + len(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bytes += int64(n - l.size[key])
	l.size[key] = n
}

func (l *liveData) del(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.size[key]; ok {
		l.bytes -= int64(n)
		delete(l.size, key)
	}
}

func (l *liveData) figures() (keys int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.size), l.bytes
}

// Scope says whose a resource is.
type Scope string

// Scopes of resources.
const (
	// ScopeProcess: a node's process; its series starts again when the
	// node restarts.
	ScopeProcess Scope = "process"
	// ScopeDisk: a node's data directory, which outlives its processes.
	ScopeDisk Scope = "disk"
	// ScopeCluster: the cluster's, sampled once per round.
	ScopeCluster Scope = "cluster"
)

// clusterNode names the series of cluster resources.
const clusterNode = "cluster"

// Resource is one sampled resource.
type Resource struct {
	Name, Title, Unit string
	Scope             Scope
	// Bound judges it; nil: plotted, not judged.
	Bound *Bound
	// WarmUp is how long it may grow before it settles: it is judged
	// only in runs whose second quarter starts after it.
	WarmUp time.Duration
}

// Bound is the rule by which a resource counts as bounded. With m2 and
// m4 the means of its samples in the second and the last quarter of the
// run, and a the growth the live data allows between them (PerKey times
// the growth of the keys the clients wrote and did not delete, plus
// PerMiB times that of their keys' and values' MiB), it is unbounded
// when the growth m4 - m2 - a exceeds both (Ratio - 1) * m2 and Floor.
//
// Why these quarters: the first holds the warm-up (heaps and caches
// filling, the first snapshots, the Raft logs reaching their trailing
// length), which is growth but not a leak. Why a ratio: a leak that
// grows linearly from a base b by g over the run moves the mean from
// b + 3g/8 to b + 7g/8, so the ratio grows with g/b while noise does not
// move it far; a linear leak from nothing gives 7/3, so any Ratio below
// 2.33 catches one that dominates. Why a floor: a small resource (a few
// file descriptors, a few MiB of disk) doubles by chance, and growth
// below the floor is not worth failing a run for.
type Bound struct {
	Ratio, Floor   float64
	PerKey, PerMiB float64
}

// soakResources are the resources a soak samples, in the order they are
// reported. The bounds were chosen from soak runs (figures in the
// comments: 3 nodes, 3 groups, mixed faults, 16 workers):
var soakResources = []Resource{
	// RSS counts the pages of the memory-mapped bbolt files that were
	// touched, which grow with the data: the allowance per key covers
	// them.
	{Name: "rss", Title: "resident memory (VmRSS)", Unit: "MiB", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 64, PerKey: 1.0 / 1024, PerMiB: 4}},
	// Anonymous memory (heap, stacks) is what a leak in the process
	// grows.
	{Name: "rss_anon", Title: "anonymous resident memory (RssAnon)", Unit: "MiB", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 32, PerKey: 0.25 / 1024, PerMiB: 2}},
	{Name: "heap", Title: "Go heap in use (go_memstats_heap_inuse_bytes)", Unit: "MiB", Scope: ScopeProcess},
	// A node runs 70 goroutines idle and up to 200 under the soak's
	// clients: every client and peer connection holds one or two.
	{Name: "goroutines", Title: "goroutines (go_goroutines)", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 100}},
	{Name: "open_fds", Title: "open file descriptors (process_open_fds)", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 100}},
	// The data directory grows with the data the clients keep (the set
	// workload only ever inserts): a key costs its bytes and a few
	// hundred bytes of record, B+tree page and snapshot copy on each
	// node. Past that it must stay bounded: the Raft logs are truncated
	// after snapshots, old snapshots removed, the watch history and
	// idempotency records pruned.
	//
	// A Raft log file grows until its group's first snapshot lets it be
	// truncated, and never shrinks (bbolt reuses its free pages): its
	// size is the most entries a replica ever held between snapshots.
	// A replica checks for a snapshot every 30 to 60 s of its process's
	// life, so while the nemesis restarts a node more often than that
	// its logs grow (3 minutes without one: 24 MiB on a node). The high
	// mark rises in steps as such stretches come; a log never truncated
	// grows by several MiB a minute for good. Disk is judged only in
	// runs of 8 minutes or more: 2 minutes of warm-up and more.
	{Name: "data_dir", Title: "data directory (allocated)", Unit: "MiB", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 32, PerKey: 1.0 / 1024, PerMiB: 4}},
	{Name: "raft_log", Title: "Raft log files (raft.db)", Unit: "MiB", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 32}},
	{Name: "snapshots", Title: "snapshot files", Unit: "MiB", Scope: ScopeDisk},
	// The watch history is pruned to --watch-history events a group (a
	// soak sets 5000): past warm-up it must stay at its bound.
	{Name: "history_events", Title: "watch history events (kvd_history_events, all groups)", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 1000}},
	{Name: "state", Title: "state files (state.db: data, watch history, idempotency and transaction records)", Unit: "MiB", Scope: ScopeDisk},
	// Committed and aborted transactions' records are forgotten once
	// every participant has resolved; a handful may be in flight.
	{Name: "txn_records", Title: "transaction records (GET /v1/admin/txns)", Scope: ScopeCluster,
		Bound: &Bound{Ratio: 1.5, Floor: 500}},
	{Name: "live_keys", Title: "keys the clients wrote and did not delete", Scope: ScopeCluster},
	{Name: "live_data", Title: "keys and values the clients wrote and did not delete", Unit: "MiB", Scope: ScopeCluster},
}

// Resources lists the resources a soak samples.
func Resources() []Resource { return append([]Resource(nil), soakResources...) }

// ResourceSample is one round's figures for one node (or the cluster).
type ResourceSample struct {
	// T is the time since the run began, in seconds.
	T    float64 `json:"t_s"`
	Node string  `json:"node"`
	// Pid is the node's process, 0 when it was not running.
	Pid int `json:"pid,omitempty"`
	// Values are the figures by resource name, in the resource's unit;
	// a figure that could not be read (a paused node's metrics) is
	// missing.
	Values map[string]float64 `json:"values"`
}

// sampler samples the resources of a cluster's nodes at an interval,
// from the start of the run until stopped.
type sampler struct {
	c        *Cluster
	h        *History
	interval time.Duration
	live     *liveData
	hc       *http.Client

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	// mu protects taken.
	mu    sync.Mutex
	taken []ResourceSample
}

func newSampler(c *Cluster, h *History, interval time.Duration, live *liveData) *sampler {
	return &sampler{c: c, h: h, interval: interval, live: live,
		hc: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}}
}

// start samples at once and then every interval, on a goroutine that
// stop ends.
func (s *sampler) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.interval)
		defer t.Stop()
		for {
			s.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stop ends sampling and waits for the round in progress; it is
// idempotent.
func (s *sampler) stop() {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
	})
}

func (s *sampler) samples() []ResourceSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ResourceSample(nil), s.taken...)
}

// round samples every node, then the cluster.
func (s *sampler) round(ctx context.Context) {
	var out []ResourceSample
	for _, n := range s.c.Nodes {
		smp := ResourceSample{T: sec(s.h.Now()), Node: n.ID, Values: map[string]float64{}}
		if n.Running() {
			smp.Pid = n.Pid()
			s.process(ctx, n.URL(), smp.Pid, smp.Values)
		}
		disk(n.DataDir, smp.Values)
		out = append(out, smp)
	}
	cl := ResourceSample{T: sec(s.h.Now()), Node: clusterNode, Values: map[string]float64{}}
	keys, bytes := s.live.figures()
	cl.Values["live_keys"], cl.Values["live_data"] = float64(keys), float64(bytes)/(1<<20)
	for i, n := range s.c.Nodes {
		if !n.Running() {
			continue
		}
		var list api.TxnList
		if s.getJSON(ctx, s.c.Nodes[i].URL()+"/v1/admin/txns", &list) == nil && len(list.Unreached) == 0 {
			cl.Values["txn_records"] = float64(len(list.Txns))
			break
		}
	}
	out = append(out, cl)
	s.mu.Lock()
	s.taken = append(s.taken, out...)
	s.mu.Unlock()
}

// process reads a running node's memory from /proc and its goroutines,
// descriptors and heap from its metrics (the descriptors from /proc when
// the metrics do not answer: a paused node).
func (s *sampler) process(ctx context.Context, base string, pid int, v map[string]float64) {
	const kib = 1.0 / 1024 // kB in /proc/PID/status, to MiB
	if st, err := procStatus(pid); err == nil {
		if x, ok := st["VmRSS"]; ok {
			v["rss"] = x * kib
		}
		if x, ok := st["RssAnon"]; ok {
			v["rss_anon"] = x * kib
		}
	}
	m, err := s.metrics(ctx, base, "go_goroutines", "process_open_fds", "go_memstats_heap_inuse_bytes", "kvd_history_events")
	if err == nil {
		if x, ok := m["kvd_history_events"]; ok {
			v["history_events"] = x
		}
		if x, ok := m["go_goroutines"]; ok {
			v["goroutines"] = x
		}
		if x, ok := m["process_open_fds"]; ok {
			v["open_fds"] = x
		}
		if x, ok := m["go_memstats_heap_inuse_bytes"]; ok {
			v["heap"] = x / (1 << 20)
		}
	}
	if _, ok := v["open_fds"]; !ok {
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
			v["open_fds"] = float64(len(fds))
		}
	}
}

// procStatus reads the kB figures of /proc/PID/status.
func procStatus(pid int) (map[string]float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		if x, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] = x
		}
	}
	return out, nil
}

// metrics returns the named metrics of a node, each summed over its
// labels.
func (s *sampler) metrics(ctx context.Context, base string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body, names...)
}

// parseMetrics sums the samples of the named metrics in the Prometheus
// text format.
func parseMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// name{labels} value [timestamp]
		end := strings.IndexAny(line, "{ ")
		if end < 0 || !want[line[:end]] {
			continue
		}
		name, rest := line[:end], line[end:]
		if rest[0] == '{' {
			rest = rest[strings.LastIndex(rest, "}")+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metric %s: no value", name)
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		out[name] += x
	}
	return out, sc.Err()
}

func (s *sampler) getJSON(ctx context.Context, u string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

// disk adds the space a node's data directory takes: in all, in its
// Raft logs (raft.db), its snapshots and its state files (state.db). The
// space is what the files take on disk, as the node counts it: bbolt
// extends its files sparsely.
func disk(dir string, v map[string]float64) {
	var all, raftLog, snaps, state int64
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil // a file removed under the walk (an old snapshot)
		}
		info, err := e.Info()
		if err != nil {
			return nil
		}
		n := info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n = st.Blocks * 512
		}
		all += n
		switch {
		case e.Name() == "raft.db":
			raftLog += n
		case e.Name() == "state.db":
			state += n
		case strings.Contains(filepath.ToSlash(path), "/snapshots/"):
			snaps += n
		}
		return nil
	})
	const mib = 1 << 20
	v["data_dir"], v["raft_log"], v["snapshots"], v["state"] = float64(all)/mib, float64(raftLog)/mib, float64(snaps)/mib, float64(state)/mib
}

// ResourceJudgement is the verdict on the resources of a run.
type ResourceJudgement struct {
	// Seconds is the time judged: quarters are of it.
	Seconds float64 `json:"seconds"`
	// Series are the figures of each resource and node.
	Series []SeriesFigures `json:"series"`
	// Lifetime is the longest a process of each node lived, in seconds:
	// a leak in a process is seen only as far as its processes live.
	Lifetime map[string]float64 `json:"longest_process_s"`
	// Unjudged counts the series with a Bound that had too few samples
	// in a quarter to be judged; WarmingUp those whose warm-up lasts
	// past the start of the second quarter.
	Unjudged  int `json:"unjudged,omitempty"`
	WarmingUp int `json:"warming_up,omitempty"`
}

// SeriesFigures are one resource's figures on one node.
type SeriesFigures struct {
	Resource string  `json:"resource"`
	Node     string  `json:"node"`
	Samples  int     `json:"samples"`
	First    float64 `json:"first"`
	Last     float64 `json:"last"`
	Max      float64 `json:"max"`
	// Q2 and Q4 are the means of the second and the last quarter;
	// Allowance the growth the live data allowed between them; Limit
	// the largest Q4 that counts as bounded.
	Q2        float64 `json:"q2_mean"`
	Q4        float64 `json:"q4_mean"`
	Allowance float64 `json:"allowance,omitempty"`
	Limit     float64 `json:"limit,omitempty"`
	Judged    bool    `json:"judged"`
	Unbounded bool    `json:"unbounded,omitempty"`
}

// minQuarterSamples is the fewest samples a quarter needs to be judged:
// at 10 s intervals a run needs 2 minutes.
const minQuarterSamples = 3

// JudgeResources judges every resource with a Bound over the first
// seconds of samples (0: all of them), node by node.
func JudgeResources(samples []ResourceSample, seconds float64) *ResourceJudgement {
	if seconds <= 0 {
		for _, s := range samples {
			seconds = max(seconds, s.T)
		}
	}
	j := &ResourceJudgement{Seconds: seconds, Lifetime: map[string]float64{}}
	type span struct{ first, last float64 }
	pids := map[string]map[int]*span{}
	var nodes []string
	seen := map[string]bool{}
	for _, s := range samples {
		if !seen[s.Node] {
			seen[s.Node] = true
			nodes = append(nodes, s.Node)
		}
		if s.Pid == 0 {
			continue
		}
		if pids[s.Node] == nil {
			pids[s.Node] = map[int]*span{}
		}
		if sp := pids[s.Node][s.Pid]; sp == nil {
			pids[s.Node][s.Pid] = &span{s.T, s.T}
		} else {
			sp.last = s.T
		}
	}
	for n, ps := range pids {
		for _, sp := range ps {
			j.Lifetime[n] = max(j.Lifetime[n], sp.last-sp.first)
		}
	}
	live := quarterMeans(samples, clusterNode, "live_keys", seconds)
	liveData := quarterMeans(samples, clusterNode, "live_data", seconds)
	for _, r := range soakResources {
		for _, n := range nodes {
			if (r.Scope == ScopeCluster) != (n == clusterNode) {
				continue
			}
			q := quarterMeans(samples, n, r.Name, seconds)
			if q.n == 0 {
				continue
			}
			f := SeriesFigures{Resource: r.Name, Node: n, Samples: q.n, First: q.first, Last: q.last, Max: q.max, Q2: q.m2, Q4: q.m4}
			if r.Bound != nil {
				switch {
				case r.WarmUp.Seconds() > seconds/4:
					j.WarmingUp++
				case q.n2 < minQuarterSamples || q.n4 < minQuarterSamples:
					j.Unjudged++
				default:
					b := r.Bound
					f.Judged = true
					if live.n2 > 0 && live.n4 > 0 {
						f.Allowance = b.PerKey * max(live.m4-live.m2, 0)
					}
					if liveData.n2 > 0 && liveData.n4 > 0 {
						f.Allowance += b.PerMiB * max(liveData.m4-liveData.m2, 0)
					}
					f.Limit = q.m2 + f.Allowance + max((b.Ratio-1)*q.m2, b.Floor)
					f.Unbounded = q.m4 > f.Limit
				}
			}
			j.Series = append(j.Series, f)
		}
	}
	return j
}

// quarters are a series' figures by quarter of the run.
type quarters struct {
	n, n2, n4          int
	first, last, max   float64
	m2, m4, sum2, sum4 float64
}

func quarterMeans(samples []ResourceSample, node, name string, seconds float64) quarters {
	var q quarters
	for _, s := range samples {
		x, ok := s.Values[name]
		if s.Node != node || !ok {
			continue
		}
		if q.n == 0 {
			q.first, q.max = x, x
		}
		q.n++
		q.last, q.max = x, max(q.max, x)
		switch {
		case s.T >= seconds/4 && s.T < seconds/2:
			q.n2++
			q.sum2 += x
		case s.T >= 3*seconds/4 && s.T <= seconds:
			q.n4++
			q.sum4 += x
		}
	}
	if q.n2 > 0 {
		q.m2 = q.sum2 / float64(q.n2)
	}
	if q.n4 > 0 {
		q.m4 = q.sum4 / float64(q.n4)
	}
	return q
}

// CheckResult is the judgement as a check: invalid if a resource grew
// without bound, unknown if no series could be judged (a run too short).
func (j *ResourceJudgement) CheckResult() CheckResult {
	res := CheckResult{Checker: "resources", Verdict: Valid}
	judged := 0
	for _, f := range j.Series {
		if !f.Judged {
			continue
		}
		judged++
		if f.Unbounded {
			res.fail("%s on %s is unbounded: %.1f on average in the last quarter, above %.1f (second quarter %.1f, live data allows %.1f more)",
				f.Resource, f.Node, f.Q4, f.Limit, f.Q2, f.Allowance)
		}
	}
	var longest []string
	for _, n := range sortedKeys(j.Lifetime) {
		longest = append(longest, fmt.Sprintf("%s %.0fs", n, j.Lifetime[n]))
	}
	unjudged := ""
	if j.Unjudged > 0 {
		unjudged += fmt.Sprintf("; %d not judged: fewer than %d samples in a quarter", j.Unjudged, minQuarterSamples)
	}
	if j.WarmingUp > 0 {
		unjudged += fmt.Sprintf("; %d not judged: still warming up in the second quarter (disk: runs under 8 minutes)", j.WarmingUp)
	}
	switch {
	case judged == 0:
		res.Verdict = Unsure
		res.Summary = fmt.Sprintf("%.0fs is too short to judge the resources: a quarter needs %d samples", j.Seconds, minQuarterSamples)
	case res.Verdict == Valid:
		res.Summary = fmt.Sprintf("%d series over %.0fs stayed bounded%s (longest-lived processes: %s)", judged, j.Seconds, unjudged, strings.Join(longest, ", "))
	default:
		res.Summary = fmt.Sprintf("%d of %d series over %.0fs grew without bound%s", len(res.Errors), judged, j.Seconds, unjudged)
	}
	return res
}

// lines are the figures, a line per resource: each node's first and last
// sample.
func (j *ResourceJudgement) lines() []string {
	var out []string
	for _, r := range soakResources {
		var parts []string
		for _, f := range j.Series {
			if f.Resource == r.Name {
				parts = append(parts, fmt.Sprintf("%s %.3g→%.3g", f.Node, f.First, f.Last))
			}
		}
		if len(parts) > 0 {
			out = append(out, fmt.Sprintf("%-11s %s %s", r.Name, strings.Join(parts, ", "), r.Unit))
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// nodeColors are the colors of nodes' lines, in order.
var nodeColors = []color.Color{
	color.NRGBA{R: 30, G: 110, B: 200, A: 255},
	color.NRGBA{R: 220, G: 120, B: 0, A: 255},
	color.NRGBA{R: 40, G: 160, B: 60, A: 255},
	color.NRGBA{R: 180, G: 40, B: 160, A: 255},
	color.NRGBA{R: 120, G: 120, B: 120, A: 255},
}

// plotResource draws one resource over time, a line per node broken
// where its process restarted or a figure is missing, over shaded fault
// windows, with the means of the judged quarters dashed.
func plotResource(path string, r Resource, samples []ResourceSample, faults []Fault, j *ResourceJudgement) error {
	p := plot.New()
	p.Title.Text = r.Title
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = r.Name
	if r.Unit != "" {
		p.Y.Label.Text += " (" + r.Unit + ")"
	}
	type point struct {
		t, v float64
		pid  int
	}
	series := map[string][]point{}
	var nodes []string
	maxY, maxT := 1.0, 1.0
	for _, s := range samples {
		x, ok := s.Values[r.Name]
		maxT = max(maxT, s.T)
		if !ok {
			if _, in := series[s.Node]; in {
				series[s.Node] = append(series[s.Node], point{t: s.T, v: math.NaN()})
			}
			continue
		}
		if _, in := series[s.Node]; !in {
			nodes = append(nodes, s.Node)
		}
		series[s.Node] = append(series[s.Node], point{s.T, x, s.Pid})
		maxY = max(maxY, x)
	}
	if len(nodes) == 0 {
		return nil
	}
	for _, f := range faults {
		poly, err := plotter.NewPolygon(plotter.XYs{{X: f.Start, Y: 0}, {X: f.End, Y: 0}, {X: f.End, Y: maxY * 1.05}, {X: f.Start, Y: maxY * 1.05}})
		if err != nil {
			return err
		}
		poly.Color = color.NRGBA{R: 255, G: 120, B: 60, A: 45}
		poly.LineStyle.Width = 0
		p.Add(poly)
	}
	for i, n := range nodes {
		col := nodeColors[i%len(nodeColors)]
		var seg plotter.XYs
		pid := -1
		first := true
		flush := func() error {
			if len(seg) == 0 {
				return nil
			}
			l, s, err := plotter.NewLinePoints(seg)
			if err != nil {
				return err
			}
			l.Color, s.Color = col, col
			l.Width = vg.Points(1.2)
			s.Radius = vg.Points(1.5)
			p.Add(l, s)
			if first {
				p.Legend.Add(n, l)
				first = false
			}
			seg = nil
			return nil
		}
		for _, pt := range series[n] {
			// A process series breaks at a restart; a disk series
			// continues across it.
			if math.IsNaN(pt.v) || (r.Scope == ScopeProcess && pt.pid != pid) {
				if err := flush(); err != nil {
					return err
				}
			}
			if math.IsNaN(pt.v) {
				continue
			}
			pid = pt.pid
			seg = append(seg, plotter.XY{X: pt.t, Y: pt.v})
		}
		if err := flush(); err != nil {
			return err
		}
		for _, f := range j.Series {
			if f.Resource != r.Name || f.Node != n || !f.Judged {
				continue
			}
			for _, q := range []struct{ from, to, y float64 }{{j.Seconds / 4, j.Seconds / 2, f.Q2}, {3 * j.Seconds / 4, j.Seconds, f.Q4}} {
				l, err := plotter.NewLine(plotter.XYs{{X: q.from, Y: q.y}, {X: q.to, Y: q.y}})
				if err != nil {
					return err
				}
				l.Color = col
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				p.Add(l)
			}
		}
	}
	p.X.Min, p.X.Max = 0, maxT
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	verdict := "not judged"
	for _, f := range j.Series {
		if f.Resource == r.Name && f.Judged {
			verdict = "bounded"
			if f.Unbounded {
				verdict = "UNBOUNDED on " + f.Node
				break
			}
		}
	}
	if r.Bound != nil {
		p.Title.Text += fmt.Sprintf(" — %s (dashed: means of the 2nd and 4th quarters)", verdict)
	}
	return p.Save(12*vg.Inch, 4.5*vg.Inch, path)
}
