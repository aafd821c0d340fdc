package jepsen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/failpoint"
)

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
	// holders gathers the transactions seen holding locks on a or b.
	holders map[string]bool
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
	p := &janitorProbe{done: make(chan Op, 1)}
	n.probes++
	// Names of one length with a fixed difference hash to slots with a
	// fixed difference (CRC-32 is linear): b's suffix is searched for.
	p.a = fmt.Sprintf("%s%d/a", janitorPrefix, n.probes)
	p.ga = groupOf(cl, p.a)
	for i := 0; i < 1000 && (p.gb == p.ga || p.gb == 0); i++ {
		p.b = fmt.Sprintf("%s%d/b%d", janitorPrefix, n.probes, i)
		p.gb = groupOf(cl, p.b)
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
		classifyWrite(&op, env.admin.do(context.Background(), http.MethodPost, node+"/v1/txn", body, "Content-Type", "application/json"))
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
	out := p.outcome()
	var notes []string
	switch {
	case out.Status == OK:
		notes = append(notes, "the probe's transaction committed")
	case fired:
		notes = append(notes, fmt.Sprintf("the probe's transaction got %s (%s)", out.Status, out.Error))
	default:
		notes = append(notes, fmt.Sprintf("the probe's transaction got %s (%s) though the node did not crash", out.Status, out.Error))
	}

	// What the crash left, listed without reading the keys. A record
	// still pending once its coordinator died was never decided by it;
	// recovery can then only abort it.
	undecided := false
	list, err := listTxns(ctx, c, -1)
	if err != nil {
		notes = append(notes, "could not list the transactions: "+err.Error())
	} else {
		locks, pending := p.left(list)
		undecided = fired && out.Status != OK && pending > 0
		notes = append(notes, fmt.Sprintf("%d locks and %d pending records left", locks, pending))
	}

	// Past the deadline, the janitors must clear them.
	if note := n.awaitJanitors(ctx, c, p); note != "" {
		notes = append(notes, note)
	}

	// Then the keys: both written or neither.
	got := p.readKeys(ctx, env)
	n.judgeKeys(p, out, got, undecided)
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

// outcome waits for the answer to p's transaction.
func (p *janitorProbe) outcome() Op {
	select {
	case out := <-p.done:
		return out
	case <-time.After(time.Minute): // the request has a timeout: cannot happen
		return Op{Status: Unknown, Error: "no answer"}
	}
}

// left counts the locks list shows on p's keys, and the records still
// pending of the transactions that held them (p.holders gathers those
// seen so far).
func (p *janitorProbe) left(list api.TxnList) (locks, pending int) {
	if p.holders == nil {
		p.holders = map[string]bool{}
	}
	for _, t := range list.Txns {
		for _, l := range t.Locks {
			if l.Key == p.a || l.Key == p.b {
				p.holders[t.ID] = true
				locks++
			}
		}
	}
	for _, t := range list.Txns {
		if p.holders[t.ID] && t.State == "pending" {
			pending++
		}
	}
	return locks, pending
}

// awaitJanitors waits until p's transaction is past its deadline, then
// until none of its locks and pending records is left, for 20 s at most;
// a failure if some are. It says how soon they were gone, or "".
func (n *crashCoordinatorNemesis) awaitJanitors(ctx context.Context, c *Cluster, p *janitorProbe) string {
	due := p.sent.Add(TxnTimeout + JanitorGrace + 2*JanitorPeriod)
	sleepCtx(ctx, time.Until(due))
	var locks, pending int
	var err error
	for give := time.Now().Add(20 * time.Second); ; {
		var list api.TxnList
		list, err = listTxns(ctx, c, -1)
		if err == nil {
			if locks, pending = p.left(list); locks == 0 && pending == 0 {
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
		return fmt.Sprintf("none left %v after it began", time.Since(p.sent).Round(100*time.Millisecond))
	}
	return ""
}

// readKeys reads p's two keys linearizably, from each node in turn, until
// each is read or 40 tries failed.
func (p *janitorProbe) readKeys(ctx context.Context, env *Env) [2]Op {
	var got [2]Op
	for i, k := range []string{p.a, p.b} {
		for attempt := 0; ctx.Err() == nil && attempt < 40; attempt++ {
			got[i] = Op{Key: k}
			env.admin.get(ctx, &got[i], env.NodeURL(attempt%env.Cluster.Size()), string(kvd.Linearizable))
			if got[i].Status == OK {
				break
			}
			sleepCtx(ctx, 250*time.Millisecond)
		}
	}
	return got
}

// judgeKeys fails the probe unless its keys, as read in got, were written
// together or not at all, as the transaction's outcome out (and whether
// it was left undecided) allows.
func (n *crashCoordinatorNemesis) judgeKeys(p *janitorProbe, out Op, got [2]Op, undecided bool) {
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
}

// Checks implements Checker: the janitor probe's verdict.
func (n *crashCoordinatorNemesis) Checks() []CheckResult {
	if n.probes == 0 && n.fired == 0 {
		return nil
	}
	return checkOver(n.res, "janitor-probe", fmt.Sprintf("%d janitor probes; the crash point fired %d times", n.probes, n.fired))
}
