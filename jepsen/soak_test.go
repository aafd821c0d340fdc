package jepsen

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
)

// fakeWorkload is a Workload whose methods are functions; a nil one does
// nothing.
type fakeWorkload struct {
	name      string
	StepFunc  func(env *Env, w *Worker) Op
	FinalFunc func(env *Env) error
	CheckFunc func(ops []Op) CheckResult
}

func (f *fakeWorkload) Name() string                              { return f.name }
func (f *fakeWorkload) Setup(ctx context.Context, env *Env) error { return nil }
func (f *fakeWorkload) Step(ctx context.Context, env *Env, w *Worker) Op {
	return f.StepFunc(env, w)
}
func (f *fakeWorkload) Final(ctx context.Context, env *Env) error {
	if f.FinalFunc == nil {
		return nil
	}
	return f.FinalFunc(env)
}
func (f *fakeWorkload) Check(ops []Op) CheckResult {
	if f.CheckFunc == nil {
		return CheckResult{Checker: f.name, Verdict: Valid}
	}
	return f.CheckFunc(ops)
}

func TestNewSoakWorkload_GivesEveryWorkloadItsShare(t *testing.T) {
	s, err := NewSoakWorkload(WorkloadNames(), 0)
	require.NoError(t, err)
	want := 0
	for _, p := range s.parts {
		share, ok := soakShares[p.name]
		if !ok {
			share = soakDefaultShare
		}
		require.Equal(t, share, p.workers, "workers of %s", p.name)
		want += share
	}
	require.Equal(t, want, s.Workers())

	more, err := NewSoakWorkload(WorkloadNames(), want+len(s.parts)+1)
	require.NoError(t, err)
	require.Equal(t, want+len(s.parts)+1, more.Workers())
	for i, p := range more.parts {
		require.Greater(t, p.workers, s.parts[i].workers, "extra workers are dealt to every workload")
	}
}

// TestSoakWorkload_EachWorkloadSeesItsOwnWorkersAndOperations runs two
// fake workloads in a soak: each sees workers numbered from 0, its
// operations come back tagged and numbered by the run's worker, what
// its Final records joins the history tagged, and its checker gets only
// its own operations.
func TestSoakWorkload_EachWorkloadSeesItsOwnWorkersAndOperations(t *testing.T) {
	locals := map[string]map[int]bool{"a": {}, "b": {}}
	step := func(name string) func(env *Env, w *Worker) Op {
		return func(env *Env, w *Worker) Op {
			locals[name][w.ID] = true
			return Op{Process: w.ID, F: "put", Key: name + "/1", Status: OK}
		}
	}
	checked := map[string][]Op{}
	check := func(name string) func(ops []Op) CheckResult {
		return func(ops []Op) CheckResult {
			checked[name] = ops
			return CheckResult{Checker: name, Verdict: Valid, Summary: "fine"}
		}
	}
	a := &fakeWorkload{name: "a", StepFunc: step("a"), CheckFunc: check("a"),
		FinalFunc: func(env *Env) error {
			env.History.Add(Op{Process: -1, F: "read", Status: OK, Call: env.History.Now(), Return: env.History.Now()})
			return nil
		}}
	b := &fakeWorkload{name: "b", StepFunc: step("b"), CheckFunc: check("b")}
	s, err := newSoak([]Workload{a, b}, 0)
	require.NoError(t, err)
	s.Interval = 0 // no cluster to sample
	env := &Env{History: NewHistory(), kv: newKVClient(time.Second)}
	defer env.kv.close()
	ctx := context.Background()
	require.NoError(t, s.Setup(ctx, env))
	for id := range s.Workers() {
		w := &Worker{ID: id, Rng: rand.New(rand.NewPCG(1, uint64(id)))}
		for range 2 {
			op := s.Step(ctx, env, w)
			require.Equal(t, id, op.Process, "an operation carries the run's worker")
			require.True(t, strings.HasPrefix(op.Key, op.W+"/"), "operation %+v is tagged with the workload that made it", op)
			env.History.Add(op)
		}
	}
	require.NoError(t, s.Final(ctx, env))
	require.Len(t, locals["a"], soakDefaultShare)
	require.Len(t, locals["b"], soakDefaultShare)
	for _, name := range []string{"a", "b"} {
		for i := range soakDefaultShare {
			require.True(t, locals[name][i], "workload %s sees worker %d", name, i)
		}
	}

	res := s.Check(env.History.Ops())
	require.Equal(t, Unsure, res.Verdict, "nothing was sampled, so the resources cannot be judged: %+v", res)
	require.Len(t, checked["a"], 2*soakDefaultShare+1, "a's checker gets its operations and its final read")
	require.Len(t, checked["b"], 2*soakDefaultShare)
	for _, op := range checked["a"] {
		require.Equal(t, "a", op.W)
	}
	var names []string
	for _, c := range s.Checks() {
		names = append(names, c.Checker)
	}
	require.Equal(t, []string{"a", "b", "key-prefixes", "resources"}, names)
}

// TestWireRecorder_NotesPrefixesAndLiveData sends a workload's kinds of
// requests through the recorder.
func TestWireRecorder_NotesPrefixesAndLiveData(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	defer srv.Close()
	live := &liveData{size: map[string]int{}}
	rec := &wireRecorder{next: http.DefaultTransport, live: live, prefixes: map[string]bool{}}
	kv := &kvClient{timeout: 5 * time.Second, hc: &http.Client{Transport: rec}}
	ctx := context.Background()

	kv.put(ctx, &Op{Key: "reg/1", Value: "12345"}, srv.URL)
	kv.put(ctx, &Op{Key: "reg/2", Value: "1"}, srv.URL)
	kv.put(ctx, &Op{Key: "reg/1", Value: "12"}, srv.URL) // an overwrite
	kv.del(ctx, &Op{Key: "reg/2"}, srv.URL)
	kv.scanAll(ctx, srv.URL, "set/")
	env := &Env{kv: kv}
	env.txn(ctx, srv.URL, api.TxnRequest{
		Compare: []api.TxnCompare{{Key: "bank/0"}},
		Ops:     []api.TxnOp{{Op: "put", Key: "la/7", Value: []byte("1 2 3")}, {Op: "get", Key: "odd"}},
	})
	require.Equal(t, []string{"(none)", "bank", "la", "reg", "set"}, rec.prefixList())
	keys, bytes := live.figures()
	require.Equal(t, 2, keys, "reg/1 and la/7 are live")
	require.Equal(t, int64(len("reg/1")+2+len("la/7")+5), bytes)
}

func TestParseMetrics_SumsOverLabels(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 123
go_goroutines_other 7
process_open_fds 42 1700000000000
kvd_state_bytes{group="1"} 1.5e+06
kvd_state_bytes{group="2",note="a } b"} 500000
`
	m, err := parseMetrics(strings.NewReader(text), "go_goroutines", "process_open_fds", "kvd_state_bytes", "absent")
	require.NoError(t, err)
	require.Equal(t, map[string]float64{"go_goroutines": 123, "process_open_fds": 42, "kvd_state_bytes": 2e6}, m)
}

func TestProcStatus_ReadsThisProcess(t *testing.T) {
	st, err := procStatus(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	require.Positive(t, st["VmRSS"], "VmRSS in kB")
}

// soakSeries makes samples of one resource on node n1 every 10 s for
// seconds, value(t) giving the figure and pid(t) the process, with the
// cluster's live keys growing as keys(t).
func soakSeries(seconds float64, resource string, value func(t float64) float64, pid func(t float64) int, keys func(t float64) float64) []ResourceSample {
	var out []ResourceSample
	for t := 0.0; t <= seconds; t += 10 {
		out = append(out,
			ResourceSample{T: t, Node: "n1", Pid: pid(t), Values: map[string]float64{resource: value(t)}},
			ResourceSample{T: t, Node: clusterNode, Values: map[string]float64{"live_keys": keys(t)}})
	}
	return out
}

func judged(t *testing.T, j *ResourceJudgement, resource string) SeriesFigures {
	t.Helper()
	for _, f := range j.Series {
		if f.Resource == resource && f.Node == "n1" {
			require.True(t, f.Judged, "%s was judged", resource)
			return f
		}
	}
	t.Fatalf("no series for %s", resource)
	return SeriesFigures{}
}

// TestJudgeResources_NoiseAndRestartsAreBounded: figures that wobble,
// warm up in the first quarter, and fall back at every restart (a
// process every 40 s, as under the mixed nemesis) stay bounded.
func TestJudgeResources_NoiseAndRestartsAreBounded(t *testing.T) {
	const run = 1800.0
	rng := rand.New(rand.NewPCG(1, 2))
	restartEvery40s := func(t float64) int { return 1000 + int(t/40) }
	noKeys := func(float64) float64 { return 0 }
	cases := []struct {
		resource string
		value    func(t float64) float64
	}{
		// Goroutines: 80 at start, up to 180 with a process's age, ±30.
		{"goroutines", func(t float64) float64 { return 80 + 100*math.Min(math.Mod(t, 40)/30, 1) + rng.Float64()*60 - 30 }},
		// Memory: a process warms up from 18 to 50 MiB over its life.
		{"rss", func(t float64) float64 { return 18 + 32*math.Min(math.Mod(t, 40)/40, 1) + rng.Float64()*10 }},
		// Transaction records: 100 to 700 as faults come and go.
		{"txn_records", func(t float64) float64 { return 100 + rng.Float64()*600 }},
	}
	for _, c := range cases {
		samples := soakSeries(run, c.resource, c.value, restartEvery40s, noKeys)
		if c.resource == "txn_records" {
			for i := range samples {
				if samples[i].Node == "n1" {
					samples[i].Node = clusterNode
					samples[i].Values["live_keys"] = 0
				}
			}
		}
		j := JudgeResources(samples, run)
		res := j.CheckResult()
		require.Equal(t, Valid, res.Verdict, "%s: %+v", c.resource, res)
	}
}

// TestJudgeResources_LeaksAreUnbounded: a leak of goroutines, memory or
// disk that a long-lived process or the disk keeps is caught.
func TestJudgeResources_LeaksAreUnbounded(t *testing.T) {
	const run = 1800.0
	onePid := func(float64) int { return 1 }
	noKeys := func(float64) float64 { return 0 }
	cases := []struct {
		resource string
		value    func(t float64) float64
	}{
		// A goroutine every 3 s that never ends: 600 more.
		{"goroutines", func(t float64) float64 { return 150 + t/3 }},
		// 100 KiB a second: 176 MiB over half an hour.
		{"rss", func(t float64) float64 { return 45 + t*100/1024 }},
		// A Raft log that is never truncated: 3 MiB a minute, half what
		// the soak's clients write into one (6 to 7 MiB a minute).
		{"raft_log", func(t float64) float64 { return 5 + math.Min(t, 300)*13/300 + t*50/1024 }},
	}
	for _, c := range cases {
		j := JudgeResources(soakSeries(run, c.resource, c.value, onePid, noKeys), run)
		f := judged(t, j, c.resource)
		require.True(t, f.Unbounded, "%s: %+v", c.resource, f)
		require.Equal(t, Invalid, j.CheckResult().Verdict)
	}
}

// TestJudgeResources_LiveDataIsAllowedFor: a data directory that grows
// with the keys the clients keep is bounded; the same growth with no
// more keys is not.
func TestJudgeResources_LiveDataIsAllowedFor(t *testing.T) {
	const run = 1800.0
	onePid := func(float64) int { return 1 }
	keys := func(t float64) float64 { return 45 * t } // the set workload's inserts
	// 20 MiB of logs and snapshots, then 1000 bytes per key.
	dir := func(t float64) float64 { return 20 + keys(t)*1000/(1<<20) }
	j := JudgeResources(soakSeries(run, "data_dir", dir, onePid, keys), run)
	require.False(t, judged(t, j, "data_dir").Unbounded, "%+v", judged(t, j, "data_dir"))

	j = JudgeResources(soakSeries(run, "data_dir", dir, onePid, func(float64) float64 { return 100 }), run)
	require.True(t, judged(t, j, "data_dir").Unbounded, "%+v", judged(t, j, "data_dir"))
}

// TestJudgeResources_DiskWarmsUp: a short run does not judge the disk,
// whose Raft logs grow until snapshots come.
func TestJudgeResources_DiskWarmsUp(t *testing.T) {
	grow := func(t float64) float64 { return 1 + t/10 }
	samples := soakSeries(180, "raft_log", grow, func(float64) int { return 1 }, func(float64) float64 { return 0 })
	j := JudgeResources(samples, 180)
	require.Equal(t, 1, j.WarmingUp)
	require.Equal(t, Unsure, j.CheckResult().Verdict, "nothing else to judge")
}

func TestJudgeResources_TooShortIsUnknown(t *testing.T) {
	samples := soakSeries(30, "goroutines", func(float64) float64 { return 100 }, func(float64) int { return 1 }, func(float64) float64 { return 0 })
	res := JudgeResources(samples, 30).CheckResult()
	require.Equal(t, Unsure, res.Verdict, fmt.Sprintf("%+v", res))
}
