package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

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
