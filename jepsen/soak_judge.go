package jepsen

import (
	"fmt"
	"sort"
	"strings"
)

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
