package jepsen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

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
	next := awaitOtherLeader(wctx, c, victim, g)
	if next < 0 {
		return fmt.Sprintf("probe: no other node took over group %d within %v", g, 10*ElectionTimeout)
	}
	cl, err := c.ClusterMap(next)
	if err != nil {
		return "probe: cluster map: " + err.Error()
	}
	keys := keysOfGroup(cl, g, probeKeys, func(i int) string { return fmt.Sprintf("%s%d", probePrefix, i) })
	p.windows++
	versions := p.write(wctx, env, c.Nodes[next].URL(), keys, fmt.Sprintf("window-%d", p.windows))
	if len(p.writes) == 0 {
		return fmt.Sprintf("probe: %s leads group %d, but no write through it was acknowledged", c.Nodes[next].ID, g)
	}
	queued := p.queueReads(c, c.Nodes[victim].URL())
	return fmt.Sprintf("probe: %s took over group %d; wrote %d keys through it (versions %s); %d linearizable reads queued at %s",
		c.Nodes[next].ID, g, len(p.writes), strings.Join(versions, ", "), queued, p.victim)
}

// awaitOtherLeader waits until a running node other than victim knows a
// leader of group g other than victim, and returns that leader, or -1 if
// none is known before ctx ends.
func awaitOtherLeader(ctx context.Context, c *Cluster, victim int, g uint64) int {
	next := -1
	for next < 0 && ctx.Err() == nil {
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
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	return next
}

// write writes value to each of keys through node, trying each a few
// times, and notes the acknowledged writes in p.writes. It returns their
// versions.
func (p *deposedProbe) write(ctx context.Context, env *Env, node string, keys []string, value string) []string {
	var versions []string
	for _, k := range keys {
		for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
			op := Op{Key: k, Value: value}
			env.admin.put(ctx, &op, node)
			if op.Status == OK {
				p.writes[k] = probeWrite{value: value, version: op.Version}
				versions = append(versions, strconv.FormatUint(op.Version, 10))
				break
			}
			if op.Status == Unknown {
				break // it may still apply, later: probe the other keys
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
	return versions
}

// queueReads sends probeReads linearizable reads of the acknowledged keys
// to node, the paused one of c, and returns how many were sent within 5
// seconds; finish collects their answers. Each read goes on a connection
// of its own, so that every one waits in the paused node's socket rather
// than behind another.
func (p *deposedProbe) queueReads(c *Cluster, node string) int {
	var acked []string
	for k := range p.writes {
		acked = append(acked, k)
	}
	sort.Strings(acked)
	rctx, rcancel := context.WithCancel(context.Background())
	p.cancel = rcancel
	p.answers = make(chan probeAnswer, probeReads)
	wrote := make(chan struct{}, probeReads)
	hc := c.secured(&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}, "")
	for i := range probeReads {
		key := acked[i%len(acked)]
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.answers <- probeRead(rctx, hc, node, key, wrote)
		}()
	}
	queued := 0
	timeout := time.After(5 * time.Second)
	for queued < probeReads {
		select {
		case <-wrote:
			queued++
		case <-timeout:
			return queued
		}
	}
	return queued
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
	return checkOver(p.res, "deposed-leader-probe", fmt.Sprintf("%d probes, %d linearizable reads queued at a paused leader: %d answered 200 (%d by the paused node itself), %d refused, %d unanswered",
		p.windows, p.reads, p.ok, p.okByVictim, p.refused, p.unanswered))
}
