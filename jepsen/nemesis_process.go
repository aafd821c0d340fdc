package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

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
