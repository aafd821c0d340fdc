package jepsen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/kvd-project/kvd/api"
)

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
	return checkOver(n.res, "pause-long-recovery", fmt.Sprintf("%d long pauses left %d transactions unfinished; the others finished %d of them while the node slept",
		n.windows, n.seen, n.finished))
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
