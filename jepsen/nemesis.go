package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/kvd-project/kvd/api"
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
// and again) are missing; the membership nemesis moves a group's
// leadership once per move, to the replica it added.
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

// Preparer is a nemesis that shapes the cluster before the workload sets
// up (the move nemesis needs two groups that own slots).
type Preparer interface {
	// Prepare shapes the cluster and says what it did. An error ends the
	// run before it begins.
	Prepare(ctx context.Context, env *Env) (string, error)
}

// Checker is a nemesis that probes the cluster itself, with keys of its
// own that no workload touches, and judges what it saw.
type Checker interface {
	// Checks returns its verdicts over the whole run, none if it never
	// probed. Run calls it once, after the final reads, and adds the
	// results to the run's checks: an invalid one fails the run.
	Checks() []CheckResult
}

// checkOver returns a Checker's verdict over a run: res, which holds the
// failures it noted as it went (none: valid), named checker and summed
// up in summary.
func checkOver(res CheckResult, checker, summary string) []CheckResult {
	res.Checker, res.Summary = checker, summary
	if res.Verdict == "" {
		res.Verdict = Valid
	}
	return []CheckResult{res}
}

// NemesisNames lists the nemeses NemesisByName knows.
func NemesisNames() []string {
	return []string{"kill", "kill-leader", "pause", "pause-leader", "pause-long", "pause-minority",
		"partition", "partition-leader", "partition-ring", "slow-link", "restart", "wipe-state", "crash-coordinator",
		"membership", "move", "mixed", "none"}
}

// notMixed are the names mixed does not draw: itself, none, membership,
// which changes the cluster's nodes (a fresh node has no link proxies for
// the partitions to cut, and a soak's samples follow nodes), and move,
// which mixes kills and partitions in itself and changes which group
// owns each key.
var notMixed = map[string]bool{"mixed": true, "none": true, "membership": true, "move": true}

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
	case "membership":
		return newMembershipNemesis(), nil
	case "move":
		return newMoveNemesis(), nil
	case "mixed":
		m := &mixedNemesis{}
		for _, n := range NemesisNames() {
			if !notMixed[n] {
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

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
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
