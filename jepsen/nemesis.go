package jepsen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/failpoint"
)

// Nemesis injects one kind of fault. Run calls Start, holds the fault,
// calls Stop, waits, and again: one fault at a time, and Stop follows
// every Start, even one that failed. Both run on the run's goroutine.
// A nemesis that cannot run on this cluster says why in Applicable, and
// the run reports it as skipped, never as passed.
//
// A nemesis may also implement Holder (its faults last a time of their
// own) and Checker (it probes the cluster itself and judges what it saw).
//
// Leader-transfer storms (moving a group's leadership on purpose, again
// and again) are missing: kvd has no endpoint to transfer leadership yet
// (it comes with membership changes), so no nemesis can ask for one.
type Nemesis interface {
	// Name names the nemesis.
	Name() string
	// Applicable returns why the nemesis cannot run on c, or nil.
	Applicable(c *Cluster) error
	// Start injects the fault and says what it did. An error means the
	// fault was not (fully) applied: the run proves nothing about it.
	Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error)
	// Stop heals the fault and says what it found in doing so (whether a
	// crash point fired, what a probe saw), or "". An error means it
	// could not heal.
	Stop(ctx context.Context, env *Env) (string, error)
}

// Holder is a nemesis whose faults must last a time of their own (a pause
// longer than a transaction's deadline, say).
type Holder interface {
	// Hold returns how long to hold the fault Start just injected, given
	// the run's hold, or 0 to use the run's. A fault with a hold of its
	// own is held in full, even past the run's duration (the clients run
	// on until it heals): cut short, it would not be the fault it claims.
	Hold(def time.Duration) time.Duration
}

// Checker is a nemesis that probes the cluster itself, with keys of its
// own that no workload touches, and judges what it saw.
type Checker interface {
	// Checks returns its verdicts over the whole run, none if it never
	// probed. Run calls it once, after the final reads, and adds the
	// results to the run's checks: an invalid one fails the run.
	Checks() []CheckResult
}

// NemesisNames lists the nemeses NemesisByName knows.
func NemesisNames() []string {
	return []string{"kill", "kill-leader", "pause", "pause-leader", "pause-long", "pause-minority",
		"partition", "partition-leader", "partition-ring", "slow-link", "restart", "wipe-state", "crash-coordinator",
		"mixed", "none"}
}

// NemesisByName returns a fresh nemesis called name; "mixed" draws a
// different applicable one for each fault window.
func NemesisByName(name string) (Nemesis, error) {
	switch name {
	case "none":
		return nil, nil
	case "kill":
		return &killNemesis{}, nil
	case "kill-leader":
		return &killNemesis{leader: true}, nil
	case "pause":
		return &pauseNemesis{}, nil
	case "pause-leader":
		return &pauseNemesis{leader: true, probe: &deposedProbe{}}, nil
	case "pause-long":
		return &pauseLongNemesis{}, nil
	case "pause-minority":
		return &pauseMinorityNemesis{}, nil
	case "partition", "partition-halves":
		return &partitionNemesis{mode: "halves"}, nil
	case "partition-leader":
		return &partitionNemesis{mode: "isolate-leader"}, nil
	case "partition-ring":
		return &partitionNemesis{mode: "majority-ring"}, nil
	case "slow-link":
		return &slowLinkNemesis{}, nil
	case "restart":
		return &restartNemesis{}, nil
	case "wipe-state":
		return &wipeStateNemesis{}, nil
	case "crash-coordinator":
		return &crashCoordinatorNemesis{}, nil
	case "mixed":
		m := &mixedNemesis{}
		for _, n := range NemesisNames() {
			if n != "mixed" && n != "none" {
				nem, _ := NemesisByName(n)
				m.all = append(m.all, nem)
			}
		}
		return m, nil
	}
	return nil, fmt.Errorf("unknown nemesis %q (%s)", name, strings.Join(NemesisNames(), ", "))
}

// randomLeader returns the node leading a random group, and the group; or
// a random node and group 0 when no running node knows a leader.
func randomLeader(c *Cluster, rng *rand.Rand) (int, uint64) {
	g := uint64(1 + rng.IntN(c.Groups()))
	for _, i := range rng.Perm(c.Size()) {
		if !c.Nodes[i].Running() {
			continue
		}
		if l := c.LeaderAsSeenBy(i, g); l >= 0 {
			return l, g
		}
	}
	return rng.IntN(c.Size()), 0
}

// leaderNote says which group a victim leads, if known.
func leaderNote(g uint64) string {
	if g == 0 {
		return " (no leader known: a random node)"
	}
	return fmt.Sprintf(" (leader of group %d)", g)
}

// killNemesis SIGKILLs a node (or a group's leader) and restarts it on
// Stop.
type killNemesis struct {
	leader bool
	victim int
}

func (n *killNemesis) Name() string {
	if n.leader {
		return "kill-leader"
	}
	return "kill"
}
func (n *killNemesis) Applicable(c *Cluster) error { return nil }
func (n *killNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victim = rng.IntN(c.Size())
	if n.leader {
		n.victim, _ = randomLeader(c, rng)
	}
	return "SIGKILL " + c.Nodes[n.victim].ID, c.Kill(n.victim)
}
func (n *killNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	if env.Cluster.Nodes[n.victim].Running() {
		return "", nil
	}
	return "", env.Cluster.Start(n.victim)
}

// pauseNemesis SIGSTOPs a node (or a group's leader) and SIGCONTs it. As
// pause-leader it probes the paused leader with reads it must not answer
// from its old state (see deposedProbe).
type pauseNemesis struct {
	leader bool
	probe  *deposedProbe
	victim int
}

func (n *pauseNemesis) Name() string {
	if n.leader {
		return "pause-leader"
	}
	return "pause"
}
func (n *pauseNemesis) Applicable(c *Cluster) error { return nil }
func (n *pauseNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victim = rng.IntN(c.Size())
	var g uint64
	note := ""
	if n.leader {
		n.victim, g = randomLeader(c, rng)
		note = leaderNote(g)
	}
	desc := "SIGSTOP " + c.Nodes[n.victim].ID + note
	if err := c.Pause(n.victim); err != nil {
		return desc, err
	}
	if n.probe != nil && g != 0 {
		// Nothing from the others reaches it until its probe is answered:
		// it wakes believing it still leads, as a leader cut off would,
		// rather than learn the new term from messages queued for it.
		c.CutRaft(c.LinksOf(n.victim))
		desc += ", its Raft links cut; " + n.probe.start(ctx, env, n.victim, g)
	}
	return desc, nil
}
func (n *pauseNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	if err := env.Cluster.Resume(n.victim); err != nil {
		return "", err
	}
	if n.probe != nil {
		defer env.Cluster.Heal()
		return n.probe.finish(), nil
	}
	return "", nil
}

// Checks implements Checker: the deposed-leader probe's verdict.
func (n *pauseNemesis) Checks() []CheckResult {
	if n.probe == nil {
		return nil
	}
	return n.probe.checks()
}

// Probe reads sent to a deposed leader.
const (
	// probeKeys is the number of keys a deposed-leader probe writes, and
	// probeReads the number of reads it queues at the paused leader, each
	// on a connection of its own.
	probeKeys  = 3
	probeReads = 8
	// probePrefix starts the probe's keys, which no workload uses.
	probePrefix = "nemesis/probe/"
)

// deposedProbe catches a deposed leader serving linearizable reads from
// its old state. With group g's leader paused, it waits until another
// node leads g, writes new values to a few keys of g through that node,
// and once they are acknowledged sends linearizable reads of those keys
// to the paused node, each on its own connection: they wait in its
// socket. Its Raft links are cut meanwhile (by the nemesis), so when it
// resumes it still believes it leads g until it finds no quorum; every
// read it answers with 200 must show the acknowledged write or a later
// one.
type deposedProbe struct {
	// The current window's probe, if one is out.
	victim  string
	writes  map[string]probeWrite // by key
	answers chan probeAnswer
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// Over the run.
	windows, reads, ok, okByVictim, refused, unanswered int
	res                                                 CheckResult
}

// probeWrite is an acknowledged write of a probe.
type probeWrite struct {
	value   string
	version uint64
}

// probeAnswer is the answer to one probe read.
type probeAnswer struct {
	key     string
	status  int
	value   string
	version uint64
	served  string
	err     error
}

// start runs the probe against victim, the paused leader of group g, and
// says what it did. It never fails the fault: a probe that could not be
// set up says so and checks nothing.
func (p *deposedProbe) start(ctx context.Context, env *Env, victim int, g uint64) string {
	c := env.Cluster
	p.victim, p.writes = c.Nodes[victim].ID, map[string]probeWrite{}
	wctx, cancel := context.WithTimeout(ctx, 10*ElectionTimeout)
	defer cancel()
	next := -1
	for next < 0 && wctx.Err() == nil {
		for j := range c.Size() {
			if j == victim || !c.Nodes[j].Running() {
				continue
			}
			if l := c.LeaderAsSeenBy(j, g); l >= 0 && l != victim {
				next = l
				break
			}
		}
		if next < 0 {
			sleepCtx(wctx, 100*time.Millisecond)
		}
	}
	if next < 0 {
		return fmt.Sprintf("probe: no other node took over group %d within %v", g, 10*ElectionTimeout)
	}
	cl, err := c.ClusterMap(next)
	if err != nil {
		return "probe: cluster map: " + err.Error()
	}
	keys := keysOfGroup(cl, g, probeKeys, func(i int) string { return fmt.Sprintf("%s%d", probePrefix, i) })
	p.windows++
	value := fmt.Sprintf("window-%d", p.windows)
	var versions []string
	for _, k := range keys {
		for attempt := 0; attempt < 5 && wctx.Err() == nil; attempt++ {
			op := Op{Key: k, Value: value}
			env.kv.put(wctx, &op, c.Nodes[next].URL())
			if op.Status == OK {
				p.writes[k] = probeWrite{value: value, version: op.Version}
				versions = append(versions, strconv.FormatUint(op.Version, 10))
				break
			}
			if op.Status == Unknown {
				break // it may still apply, later: probe the other keys
			}
			sleepCtx(wctx, 200*time.Millisecond)
		}
	}
	if len(p.writes) == 0 {
		return fmt.Sprintf("probe: %s leads group %d, but no write through it was acknowledged", c.Nodes[next].ID, g)
	}

	// The reads: each on a connection of its own, so that every one waits
	// in the paused node's socket rather than behind another.
	var acked []string
	for k := range p.writes {
		acked = append(acked, k)
	}
	sort.Strings(acked)
	rctx, rcancel := context.WithCancel(context.Background())
	p.cancel = rcancel
	p.answers = make(chan probeAnswer, probeReads)
	wrote := make(chan struct{}, probeReads)
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	for i := range probeReads {
		key := acked[i%len(acked)]
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.answers <- probeRead(rctx, hc, c.Nodes[victim].URL(), key, wrote)
		}()
	}
	queued := 0
	timeout := time.After(5 * time.Second)
wait:
	for queued < probeReads {
		select {
		case <-wrote:
			queued++
		case <-timeout:
			break wait
		}
	}
	return fmt.Sprintf("probe: %s took over group %d; wrote %d keys through it (versions %s); %d linearizable reads queued at %s",
		c.Nodes[next].ID, g, len(p.writes), strings.Join(versions, ", "), queued, p.victim)
}

// probeRead reads key at node linearizably, telling wrote once the
// request is sent.
func probeRead(ctx context.Context, hc *http.Client, node, key string, wrote chan<- struct{}) probeAnswer {
	a := probeAnswer{key: key}
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
		select {
		case wrote <- struct{}{}:
		default: // a retry on a new connection: counted once
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet,
		keyURL(node, key)+"?consistency="+string(kvd.Linearizable), nil)
	if err != nil {
		a.err = err
		return a
	}
	resp, err := hc.Do(req)
	if err != nil {
		a.err = err
		return a
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.err = err
		return a
	}
	a.status, a.served = resp.StatusCode, resp.Header.Get(api.HeaderNode)
	if a.status == http.StatusOK {
		a.value = string(b)
		if a.version, err = strconv.ParseUint(strings.Trim(resp.Header.Get("ETag"), `"`), 10, 64); err != nil {
			a.err = fmt.Errorf("bad ETag %q", resp.Header.Get("ETag"))
		}
	}
	return a
}

// finish collects the answers of the reads start queued, once the node
// is resumed, judges them, and says what they were.
func (p *deposedProbe) finish() string {
	if p.answers == nil {
		return ""
	}
	defer func() { p.answers, p.cancel = nil, nil }()
	// The node answers within its request timeout once it runs again;
	// give it a generous bound, then give up on the rest.
	stop := time.AfterFunc(15*time.Second, p.cancel)
	p.wg.Wait()
	stop.Stop()
	p.cancel()
	close(p.answers)
	var ok, mine, refused, none, stale int
	codes := map[int]int{}
	for a := range p.answers {
		p.reads++
		switch reason := p.judge(a); {
		case reason != "":
			stale++
			p.res.fail("window %d: a linearizable read of %s queued at %s while it was paused was answered %s", p.windows, a.key, p.victim, reason)
		case a.err != nil:
			none++
		case a.status == http.StatusOK:
			ok++
			if a.served == p.victim {
				mine++
			}
		default:
			refused++
			codes[a.status]++
		}
	}
	p.ok += ok
	p.okByVictim += mine
	p.refused += refused
	p.unanswered += none
	var why []string
	for code, k := range codes {
		why = append(why, fmt.Sprintf("%d×%d", k, code))
	}
	sort.Strings(why)
	out := fmt.Sprintf("probe: %d reads answered 200 (%d by %s itself), %d refused %v, %d unanswered", ok, mine, p.victim, refused, why, none)
	if stale > 0 {
		out += fmt.Sprintf(", %d STALE", stale)
	}
	return out
}

// judge returns why an answer is a stale read, or "".
func (p *deposedProbe) judge(a probeAnswer) string {
	w := p.writes[a.key]
	switch {
	case a.err != nil:
		return ""
	case a.status == http.StatusNotFound:
		return fmt.Sprintf("404 by %s after the write of version %d was acknowledged", a.served, w.version)
	case a.status != http.StatusOK:
		return ""
	case a.version < w.version:
		return fmt.Sprintf("version %d (%q) by %s after the write of version %d was acknowledged", a.version, a.value, a.served, w.version)
	case a.version == w.version && a.value != w.value:
		return fmt.Sprintf("%q at version %d by %s, but version %d is %q", a.value, a.version, a.served, w.version, w.value)
	}
	return ""
}

func (p *deposedProbe) checks() []CheckResult {
	if p.windows == 0 {
		return nil
	}
	res := p.res
	res.Checker = "deposed-leader-probe"
	if res.Verdict == "" {
		res.Verdict = Valid
	}
	res.Summary = fmt.Sprintf("%d probes, %d linearizable reads queued at a paused leader: %d answered 200 (%d by the paused node itself), %d refused, %d unanswered",
		p.windows, p.reads, p.ok, p.okByVictim, p.refused, p.unanswered)
	return []CheckResult{res}
}

// keysOfGroup returns the first n names name(0), name(1), ... that group
// g owns in cluster map cl.
func keysOfGroup(cl api.Cluster, g uint64, n int, name func(int) string) []string {
	var out []string
	for i := 0; len(out) < n && i < 100000; i++ {
		k := name(i)
		if owner, ok := cl.GroupOf(kvd.Slot(k)); ok && owner == g {
			out = append(out, k)
		}
	}
	return out
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// pauseLongNemesis SIGSTOPs a node (or a group's leader) for twice the
// transaction deadline, so that the transactions it coordinates expire
// and are finished by the others while it sleeps. So that it sleeps in
// the middle of some, the answers to its node-to-node HTTP are slowed
// first, until the transaction list shows one under way: its prepares at
// other groups' leaders are applied, and it stops before it learns so.
// Every transaction that holds
// locks or a pending record once it sleeps must be finished (decided and
// its locks resolved) by the others before it resumes.
type pauseLongNemesis struct {
	victim int
	// held lists the transactions holding locks or a pending record once
	// the victim slept.
	held map[string]bool

	// Over the run.
	windows, seen, finished int
	res                     CheckResult
}

// unfinished returns the transactions of list that hold locks, or whose
// record is not decided.
func unfinished(list api.TxnList) map[string]bool {
	out := map[string]bool{}
	for _, t := range list.Txns {
		if len(t.Locks) > 0 || (t.State != "committed" && t.State != "aborted") {
			out[t.ID] = true
		}
	}
	return out
}

func (n *pauseLongNemesis) Name() string                { return "pause-long" }
func (n *pauseLongNemesis) Applicable(c *Cluster) error { return nil }
func (n *pauseLongNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victim, n.held = rng.IntN(c.Size()), nil
	note := ""
	if rng.IntN(2) == 0 {
		var g uint64
		n.victim, g = randomLeader(c, rng)
		note = leaderNote(g)
	}
	id := c.Nodes[n.victim].ID
	// Slow the answers until a transaction stays under way from one look
	// at the list to the next (the others' finish in milliseconds: one
	// that lasts is most likely the victim's), or for a few seconds.
	const slow, slowMax = 500 * time.Millisecond, 5 * time.Second
	c.SlowHTTPAnswers(c.LinksFrom(n.victim), slow)
	began := time.Now()
	var before map[string]bool
look:
	for other := (n.victim + 1) % c.Size(); time.Since(began) < slowMax && ctx.Err() == nil; {
		if list, err := c.Txns(ctx, other); err == nil {
			now := unfinished(list)
			for id := range now {
				if before[id] {
					break look
				}
			}
			before = now
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	slowFor := time.Since(began).Round(10 * time.Millisecond)
	err := c.Pause(n.victim)
	c.SlowHTTP(nil, 0)
	desc := fmt.Sprintf("answers to %s's HTTP delayed %v for %v, then SIGSTOP %s%s for %v, twice the transaction deadline",
		id, slow, slowFor, id, note, n.Hold(0))
	if err != nil {
		return desc, err
	}
	n.windows++
	list, err := listTxns(ctx, c, n.victim)
	if err != nil {
		return desc + "; could not list the transactions: " + err.Error(), nil
	}
	n.held = unfinished(list)
	n.seen += len(n.held)
	return fmt.Sprintf("%s; %d transactions unfinished once it slept", desc, len(n.held)), nil
}
func (n *pauseLongNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	note := ""
	if len(n.held) > 0 {
		list, err := listTxns(ctx, c, n.victim)
		if err != nil {
			note = "could not list the transactions before it resumed: " + err.Error()
		} else {
			now := unfinished(list)
			var still []string
			for id := range n.held {
				if now[id] {
					still = append(still, id)
				}
			}
			sort.Strings(still)
			n.finished += len(n.held) - len(still)
			note = fmt.Sprintf("the others finished %d of them before it resumed", len(n.held)-len(still))
			if len(still) > 0 {
				n.res.fail("window %d: transactions %v were unfinished when %s stopped and still are %v later, past their deadline",
					n.windows, still, c.Nodes[n.victim].ID, n.Hold(0))
			}
		}
	}
	return note, c.Resume(n.victim)
}

// Hold implements Holder: twice the transaction deadline.
func (n *pauseLongNemesis) Hold(def time.Duration) time.Duration { return 2 * TxnTimeout }

// Checks implements Checker: whether the others finished what the
// sleeper left.
func (n *pauseLongNemesis) Checks() []CheckResult {
	if n.windows == 0 {
		return nil
	}
	res := n.res
	res.Checker = "pause-long-recovery"
	if res.Verdict == "" {
		res.Verdict = Valid
	}
	res.Summary = fmt.Sprintf("%d long pauses left %d transactions unfinished; the others finished %d of them while the node slept",
		n.windows, n.seen, n.finished)
	return []CheckResult{res}
}

// pauseMinorityNemesis SIGSTOPs as many nodes as a quorum can spare
// (at least one) for several election timeouts, and SIGCONTs them.
type pauseMinorityNemesis struct {
	victims []int
}

func (n *pauseMinorityNemesis) Name() string                { return "pause-minority" }
func (n *pauseMinorityNemesis) Applicable(c *Cluster) error { return nil }
func (n *pauseMinorityNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victims = rng.Perm(c.Size())[:max(1, (c.Size()-1)/2)]
	sort.Ints(n.victims)
	var ids []string
	for _, i := range n.victims {
		ids = append(ids, c.Nodes[i].ID)
		if err := c.Pause(i); err != nil {
			return "SIGSTOP " + strings.Join(ids, ", "), err
		}
	}
	return "SIGSTOP " + strings.Join(ids, ", "), nil
}
func (n *pauseMinorityNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	var errs []error
	for _, i := range n.victims {
		errs = append(errs, env.Cluster.Resume(i))
	}
	return "", errors.Join(errs...)
}

// Hold implements Holder: at least three election timeouts, so the
// paused nodes' groups elect new leaders without them.
func (n *pauseMinorityNemesis) Hold(def time.Duration) time.Duration {
	if def >= 3*ElectionTimeout {
		return 0
	}
	return 3 * ElectionTimeout
}

// partitionNemesis cuts node-to-node links; clients still reach every
// node.
type partitionNemesis struct {
	mode string
}

func (n *partitionNemesis) Name() string { return "partition-" + n.mode }
func (n *partitionNemesis) Applicable(c *Cluster) error {
	if n.mode == "majority-ring" && c.Size() < 5 {
		return fmt.Errorf("a majority ring needs at least 5 nodes (have %d): with fewer every node sees every other", c.Size())
	}
	return nil
}
func (n *partitionNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	ids := func(ns []int) []string {
		var out []string
		for _, i := range ns {
			out = append(out, c.Nodes[i].ID)
		}
		return out
	}
	switch n.mode {
	case "halves":
		perm := rng.Perm(c.Size())
		a, b := perm[:c.Size()/2], perm[c.Size()/2:]
		sort.Ints(a)
		sort.Ints(b)
		c.Partition(a, b)
		return fmt.Sprintf("partition %v | %v", ids(a), ids(b)), nil
	case "isolate-leader":
		l, _ := randomLeader(c, rng)
		var rest []int
		for i := range c.Size() {
			if i != l {
				rest = append(rest, i)
			}
		}
		c.Partition([]int{l}, rest)
		return fmt.Sprintf("isolate leader %s", c.Nodes[l].ID), nil
	default: // majority ring: each node keeps its two ring neighbours
		size := c.Size()
		perm := rng.Perm(size)
		pos := make([]int, size)
		for p, i := range perm {
			pos[i] = p
		}
		var cut [][2]int
		for i := range size {
			for j := range size {
				d := (pos[i] - pos[j] + size) % size
				if i != j && d != 1 && d != size-1 {
					cut = append(cut, [2]int{i, j})
				}
			}
		}
		c.CutLinks(cut)
		return fmt.Sprintf("majority ring %v", ids(perm)), nil
	}
}
func (n *partitionNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	env.Cluster.Heal()
	return "", nil
}

// slowLinkNemesis delays the node-to-node HTTP requests out of one node
// by 300 to 800 ms (drawn per fault), on every link or on the one link to
// the leader of a group it does not lead. That node's work at other
// groups' leaders arrives late: as a transactions' coordinator, its
// prepare at the record group may land after readers looked for the
// record. The answers are not delayed: a delay both ways makes most of
// that node's requests outlast the request timeout, and the transactions
// this fault is after would not begin.
type slowLinkNemesis struct{}

func (n *slowLinkNemesis) Name() string                { return "slow-link" }
func (n *slowLinkNemesis) Applicable(c *Cluster) error { return nil }
func (n *slowLinkNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	i := rng.IntN(c.Size())
	d := time.Duration(300+rng.IntN(501)) * time.Millisecond
	if rng.IntN(2) == 0 {
		for _, g := range rng.Perm(c.Groups()) {
			if l := c.LeaderAsSeenBy(i, uint64(g+1)); l >= 0 && l != i {
				c.SlowHTTPRequests([][2]int{{i, l}}, d)
				return fmt.Sprintf("HTTP requests from %s to %s (leader of group %d) delayed %v", c.Nodes[i].ID, c.Nodes[l].ID, g+1, d), nil
			}
		}
	}
	c.SlowHTTPRequests(c.LinksFrom(i), d)
	return fmt.Sprintf("HTTP requests from %s to every other node delayed %v", c.Nodes[i].ID, d), nil
}
func (n *slowLinkNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	env.Cluster.SlowHTTP(nil, 0)
	return "", nil
}

// restartNemesis restarts every node in turn with SIGTERM, waiting for
// each to be ready again: a rolling restart.
type restartNemesis struct{}

func (n *restartNemesis) Name() string                { return "restart" }
func (n *restartNemesis) Applicable(c *Cluster) error { return nil }
func (n *restartNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	for _, i := range rng.Perm(c.Size()) {
		if err := c.Terminate(i, 30*time.Second); err != nil {
			return "rolling restart", fmt.Errorf("SIGTERM %s: %w", c.Nodes[i].ID, err)
		}
		if err := c.Start(i); err != nil {
			return "rolling restart", err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.WaitReady(wctx, i)
		cancel()
		if err != nil {
			return "rolling restart", err
		}
	}
	return "rolling restart (SIGTERM each node in turn)", nil
}
func (n *restartNemesis) Stop(ctx context.Context, env *Env) (string, error) { return "", nil }

// wipeStateNemesis stops a node, with SIGKILL or SIGTERM (drawn per
// fault), deletes its groups' state machines (state.db; the Raft logs and
// snapshots stay) and restarts it at once: each replica must rebuild its
// state from its snapshot, its log and its peers before it serves, and
// then serve what was acknowledged. After SIGTERM the state was closed
// cleanly and would have been used as it was: the deletion alone forces
// the rebuild (kvd rebuilds a state not closed cleanly anyway).
type wipeStateNemesis struct {
	victim int
}

func (n *wipeStateNemesis) Name() string                { return "wipe-state" }
func (n *wipeStateNemesis) Applicable(c *Cluster) error { return nil }
func (n *wipeStateNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victim = rng.IntN(c.Size())
	id := c.Nodes[n.victim].ID
	stop := "SIGKILL " + id
	if rng.IntN(2) == 0 {
		stop = "SIGTERM " + id
		if err := c.Terminate(n.victim, 30*time.Second); err != nil {
			return stop, err
		}
	} else if err := c.Kill(n.victim); err != nil {
		return stop, err
	}
	files, err := c.WipeState(n.victim)
	desc := fmt.Sprintf("%s, deleted its %d state.db files, restarted it", stop, files)
	if err != nil {
		return desc, err
	}
	if files == 0 {
		return desc, fmt.Errorf("%s has no state.db under %s", id, c.Nodes[n.victim].DataDir)
	}
	return desc, c.Start(n.victim)
}
func (n *wipeStateNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	if !c.Nodes[n.victim].Running() {
		if err := c.Start(n.victim); err != nil {
			return "", err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitReady(wctx, n.victim); err != nil {
		return "", fmt.Errorf("after its state was wiped: %w", err)
	}
	return c.Nodes[n.victim].ID + " ready again", nil
}

// janitorPrefix starts the keys of the janitor probe, which no workload
// uses.
const janitorPrefix = "nemesis/janitor/"

// crashCoordinatorNemesis arms the failpoint between a transaction's
// prepare and its decision on a random node, once: the next cross-group
// transaction that node coordinates (the workload's, or the probe's
// below) leaves it dead with locks held and its record pending. Stop
// restarts it, or disarms the failpoint if it never fired.
//
// With two groups or more it also runs a janitor probe: it sends the
// armed node a transaction of its own, writing two keys of two groups
// that nothing else reads, so the locks it leaves behind can only be
// cleared by the group leaders' janitors. Stop waits past the deadline,
// checks (without reading the keys, which would recover them) that the
// locks are gone, then reads both keys: written together or not at all.
type crashCoordinatorNemesis struct {
	victim int
	probe  *janitorProbe // this window's, if any

	// Over the run.
	probes, fired int
	res           CheckResult
}

// janitorProbe is one transaction the nemesis sent to an armed node.
type janitorProbe struct {
	a, b   string
	ga, gb uint64
	value  string
	sent   time.Time
	// done receives the transaction's outcome.
	done chan Op
}

func (n *crashCoordinatorNemesis) Name() string { return "crash-coordinator" }
func (n *crashCoordinatorNemesis) Applicable(c *Cluster) error {
	if !c.Failpoints {
		return errors.New("the kvd binary has no failpoints (build it with -tags failpoints)")
	}
	return nil
}
func (n *crashCoordinatorNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	c := env.Cluster
	n.victim, n.probe = rng.IntN(c.Size()), nil
	id := c.Nodes[n.victim].ID
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitReady(wctx, n.victim); err != nil {
		return "arm " + failpoint.TxnBeforeDecision + " on " + id, err
	}
	if err := c.ArmFailpoint(wctx, n.victim, failpoint.TxnBeforeDecision, "crash-once"); err != nil {
		return "arm " + failpoint.TxnBeforeDecision + " on " + id, err
	}
	desc := fmt.Sprintf("armed %s (crash-once) on %s", failpoint.TxnBeforeDecision, id)
	if c.Groups() < 2 {
		return desc + "; no janitor probe with one group", nil
	}
	cl, err := c.ClusterMap(n.victim)
	if err != nil {
		return desc + "; janitor probe: cluster map: " + err.Error(), nil
	}
	group := func(k string) uint64 { g, _ := cl.GroupOf(kvd.Slot(k)); return g }
	p := &janitorProbe{done: make(chan Op, 1)}
	n.probes++
	// Names of one length with a fixed difference hash to slots with a
	// fixed difference (CRC-32 is linear): b's suffix is searched for.
	p.a = fmt.Sprintf("%s%d/a", janitorPrefix, n.probes)
	p.ga = group(p.a)
	for i := 0; i < 1000 && (p.gb == p.ga || p.gb == 0); i++ {
		p.b = fmt.Sprintf("%s%d/b%d", janitorPrefix, n.probes, i)
		p.gb = group(p.b)
	}
	if p.ga == 0 || p.gb == p.ga || p.gb == 0 {
		return desc + "; janitor probe: found no keys in two groups", nil
	}
	p.value, p.sent = fmt.Sprintf("probe-%d", n.probes), time.Now()
	n.probe = p
	body, _ := json.Marshal(api.TxnRequest{Ops: []api.TxnOp{
		{Op: "put", Key: p.a, Value: []byte(p.value)}, {Op: "put", Key: p.b, Value: []byte(p.value)}}})
	node := c.Nodes[n.victim].URL()
	go func() {
		op := Op{F: "txn", Node: node}
		classifyWrite(&op, env.kv.do(context.Background(), http.MethodPost, node+"/v1/txn", body, "Content-Type", "application/json"))
		p.done <- op
	}()
	return fmt.Sprintf("%s; janitor probe: a transaction writing %s (group %d) and %s (group %d) sent to it", desc, p.a, p.ga, p.b, p.gb), nil
}

func (n *crashCoordinatorNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	c := env.Cluster
	id := c.Nodes[n.victim].ID
	var notes []string
	fired := !c.Nodes[n.victim].Running()
	if !fired {
		err := c.DisarmFailpoint(ctx, n.victim, failpoint.TxnBeforeDecision)
		if fired = !c.Nodes[n.victim].Running(); !fired && err != nil {
			return "did not fire", err
		}
	}
	if fired {
		n.fired++
		notes = append(notes, "fired: "+id+" crashed; restarted")
		if err := c.Start(n.victim); err != nil {
			return strings.Join(notes, "; "), err
		}
	} else {
		notes = append(notes, "did not fire (disarmed)")
	}
	if n.probe != nil {
		notes = append(notes, n.checkJanitor(ctx, env, fired))
	}
	return strings.Join(notes, "; "), nil
}

// checkJanitor finishes this window's janitor probe and says what it saw.
func (n *crashCoordinatorNemesis) checkJanitor(ctx context.Context, env *Env, fired bool) string {
	c, p := env.Cluster, n.probe
	n.probe = nil
	var out Op
	select {
	case out = <-p.done:
	case <-time.After(time.Minute): // the request has a timeout: cannot happen
		out = Op{Status: Unknown, Error: "no answer"}
	}
	var notes []string
	switch {
	case out.Status == OK:
		notes = append(notes, "the probe's transaction committed")
	case fired:
		notes = append(notes, fmt.Sprintf("the probe's transaction got %s (%s)", out.Status, out.Error))
	default:
		notes = append(notes, fmt.Sprintf("the probe's transaction got %s (%s) though the node did not crash", out.Status, out.Error))
	}

	// What the crash left, listed without reading the keys: the locks on
	// the probe's keys, and the records of the transactions that held
	// them (ids gathers those seen so far).
	ids := map[string]bool{}
	left := func(list api.TxnList) (locks, pending int) {
		for _, t := range list.Txns {
			for _, l := range t.Locks {
				if l.Key == p.a || l.Key == p.b {
					ids[t.ID] = true
					locks++
				}
			}
		}
		for _, t := range list.Txns {
			if ids[t.ID] && t.State == "pending" {
				pending++
			}
		}
		return locks, pending
	}
	// A record still pending once its coordinator died was never
	// decided by it; recovery can then only abort it.
	undecided := false
	list, err := listTxns(ctx, c, -1)
	if err != nil {
		notes = append(notes, "could not list the transactions: "+err.Error())
	} else {
		locks, pending := left(list)
		undecided = fired && out.Status != OK && pending > 0
		notes = append(notes, fmt.Sprintf("%d locks and %d pending records left", locks, pending))
	}

	// Past the deadline, the janitors must clear them.
	due := p.sent.Add(TxnTimeout + JanitorGrace + 2*JanitorPeriod)
	sleepCtx(ctx, time.Until(due))
	var locks, pending int
	for give := time.Now().Add(20 * time.Second); ; {
		list, err = listTxns(ctx, c, -1)
		if err == nil {
			if locks, pending = left(list); locks == 0 && pending == 0 {
				break
			}
		}
		if time.Now().After(give) || ctx.Err() != nil {
			if err != nil {
				n.res.fail("janitor probe %s: could not list the transactions %v after it began: %v", p.a, time.Since(p.sent).Round(time.Second), err)
			} else {
				n.res.fail("janitor probe %s: %d locks and %d pending records still there %v after the transaction began (deadline %v)",
					p.a, locks, pending, time.Since(p.sent).Round(time.Second), TxnTimeout)
			}
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	if locks == 0 && pending == 0 && err == nil {
		notes = append(notes, fmt.Sprintf("none left %v after it began", time.Since(p.sent).Round(100*time.Millisecond)))
	}

	// Then the keys: both written or neither.
	var got [2]Op
	for i, k := range []string{p.a, p.b} {
		for attempt := 0; ctx.Err() == nil && attempt < 40; attempt++ {
			got[i] = Op{Key: k}
			env.kv.get(ctx, &got[i], env.NodeURL(attempt%c.Size()), string(kvd.Linearizable))
			if got[i].Status == OK {
				break
			}
			sleepCtx(ctx, 250*time.Millisecond)
		}
	}
	show := func(o Op) string {
		switch {
		case o.Status != OK:
			return "unread"
		case !o.Found:
			return "absent"
		}
		return fmt.Sprintf("%q", o.Value)
	}
	switch {
	case got[0].Status != OK || got[1].Status != OK:
		n.res.fail("janitor probe %s: could not read the keys after the run healed", p.a)
	case got[0].Found != got[1].Found || (got[0].Found && (got[0].Value != p.value || got[1].Value != p.value)):
		n.res.fail("janitor probe: the transaction was not atomic: %s is %s and %s is %s", p.a, show(got[0]), p.b, show(got[1]))
	case out.Status == OK && !got[0].Found:
		n.res.fail("janitor probe: the transaction writing %s and %s committed, but neither is there", p.a, p.b)
	case out.Status == Fail && got[0].Found:
		n.res.fail("janitor probe: the transaction writing %s and %s failed (%s), but both are there", p.a, p.b, out.Error)
	case undecided && got[0].Found:
		n.res.fail("janitor probe: the transaction writing %s and %s was left pending by its crashed coordinator, which can only be aborted, but both are there", p.a, p.b)
	}
	what := "neither written"
	if got[0].Found || got[1].Found {
		what = "both written"
	}
	if got[0].Found != got[1].Found {
		what = "ONE written"
	}
	notes = append(notes, "keys: "+what)
	return "janitor probe: " + strings.Join(notes, ", ")
}

// listTxns lists the transactions, from a running node other than skip
// that could read every group, trying each in turn for a while.
func listTxns(ctx context.Context, c *Cluster, skip int) (api.TxnList, error) {
	var lastErr error
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		i := attempt % c.Size()
		if i == skip || !c.Nodes[i].Running() {
			continue
		}
		list, err := c.Txns(ctx, i)
		if err == nil && len(list.Unreached) == 0 {
			return list, nil
		}
		if err == nil {
			err = fmt.Errorf("%s could not read groups %v", c.Nodes[i].ID, list.Unreached)
		}
		lastErr = err
		sleepCtx(ctx, 250*time.Millisecond)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return api.TxnList{}, lastErr
}

// Checks implements Checker: the janitor probe's verdict.
func (n *crashCoordinatorNemesis) Checks() []CheckResult {
	if n.probes == 0 && n.fired == 0 {
		return nil
	}
	res := n.res
	res.Checker = "janitor-probe"
	if res.Verdict == "" {
		res.Verdict = Valid
	}
	res.Summary = fmt.Sprintf("%d janitor probes; the crash point fired %d times", n.probes, n.fired)
	return []CheckResult{res}
}

// mixedNemesis draws one applicable nemesis per fault window.
type mixedNemesis struct {
	all     []Nemesis
	current Nemesis
}

func (n *mixedNemesis) Name() string { return "mixed" }
func (n *mixedNemesis) Applicable(c *Cluster) error {
	for _, m := range n.all {
		if m.Applicable(c) == nil {
			return nil
		}
	}
	return fmt.Errorf("no nemesis applies")
}
func (n *mixedNemesis) Start(ctx context.Context, env *Env, rng *rand.Rand) (string, error) {
	var ok []Nemesis
	for _, m := range n.all {
		if m.Applicable(env.Cluster) == nil {
			ok = append(ok, m)
		}
	}
	n.current = ok[rng.IntN(len(ok))]
	desc, err := n.current.Start(ctx, env, rng)
	return n.current.Name() + ": " + desc, err
}
func (n *mixedNemesis) Stop(ctx context.Context, env *Env) (string, error) {
	if n.current == nil {
		return "", nil
	}
	return n.current.Stop(ctx, env)
}

// Hold implements Holder for the nemesis drawn last.
func (n *mixedNemesis) Hold(def time.Duration) time.Duration {
	if h, ok := n.current.(Holder); ok {
		return h.Hold(def)
	}
	return 0
}

// Checks implements Checker: the checks of every nemesis drawn.
func (n *mixedNemesis) Checks() []CheckResult {
	var out []CheckResult
	for _, m := range n.all {
		if ck, ok := m.(Checker); ok {
			out = append(out, ck.Checks()...)
		}
	}
	return out
}

// skipped lists the nemeses a mixed run cannot apply on c, with why.
func (n *mixedNemesis) skipped(c *Cluster) []string {
	var out []string
	for _, m := range n.all {
		if err := m.Applicable(c); err != nil {
			out = append(out, m.Name()+": "+err.Error())
		}
	}
	return out
}
