package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// Nemesis injects one kind of fault. Start injects it and says what it
// did; Stop heals it. A nemesis that cannot run on this cluster says why
// in Applicable, and the run reports it as skipped, never as passed.
type Nemesis interface {
	Name() string
	Applicable(c *Cluster) error
	Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error)
	Stop(ctx context.Context, c *Cluster) error
}

// Nemeses returns the nemesis called name; "mixed" draws a different
// applicable one for each fault window.
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
		return &pauseNemesis{leader: true}, nil
	case "partition", "partition-halves":
		return &partitionNemesis{mode: "halves"}, nil
	case "partition-leader":
		return &partitionNemesis{mode: "isolate-leader"}, nil
	case "partition-ring":
		return &partitionNemesis{mode: "majority-ring"}, nil
	case "restart":
		return &restartNemesis{}, nil
	case "mixed":
		return &mixedNemesis{all: []Nemesis{
			&killNemesis{}, &killNemesis{leader: true}, &pauseNemesis{}, &pauseNemesis{leader: true},
			&partitionNemesis{mode: "halves"}, &partitionNemesis{mode: "isolate-leader"},
			&partitionNemesis{mode: "majority-ring"}, &restartNemesis{},
		}}, nil
	}
	return nil, fmt.Errorf("unknown nemesis %q (kill, kill-leader, pause, pause-leader, partition, partition-leader, partition-ring, restart, mixed, none)", name)
}

// randomLeader returns the node leading a random group, or a random node.
func randomLeader(c *Cluster, rng *rand.Rand) int {
	g := uint64(1 + rng.IntN(c.Groups()))
	for _, i := range rng.Perm(c.Size()) {
		if !c.Nodes[i].Running() {
			continue
		}
		if l := c.LeaderAsSeenBy(i, g); l >= 0 {
			return l
		}
	}
	return rng.IntN(c.Size())
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
func (n *killNemesis) Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n.victim = rng.IntN(c.Size())
	if n.leader {
		n.victim = randomLeader(c, rng)
	}
	return "SIGKILL " + c.Nodes[n.victim].ID, c.Kill(n.victim)
}
func (n *killNemesis) Stop(ctx context.Context, c *Cluster) error {
	if c.Nodes[n.victim].Running() {
		return nil
	}
	return c.Start(n.victim)
}

// pauseNemesis SIGSTOPs a node (or a group's leader) and SIGCONTs it.
type pauseNemesis struct {
	leader bool
	victim int
}

func (n *pauseNemesis) Name() string {
	if n.leader {
		return "pause-leader"
	}
	return "pause"
}
func (n *pauseNemesis) Applicable(c *Cluster) error { return nil }
func (n *pauseNemesis) Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n.victim = rng.IntN(c.Size())
	if n.leader {
		n.victim = randomLeader(c, rng)
	}
	return "SIGSTOP " + c.Nodes[n.victim].ID, c.Pause(n.victim)
}
func (n *pauseNemesis) Stop(ctx context.Context, c *Cluster) error { return c.Resume(n.victim) }

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
func (n *partitionNemesis) Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
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
		l := randomLeader(c, rng)
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
func (n *partitionNemesis) Stop(ctx context.Context, c *Cluster) error {
	c.Heal()
	return nil
}

// restartNemesis restarts every node in turn with SIGTERM, waiting for
// each to be ready again: a rolling restart.
type restartNemesis struct{}

func (n *restartNemesis) Name() string                { return "restart" }
func (n *restartNemesis) Applicable(c *Cluster) error { return nil }
func (n *restartNemesis) Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
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
func (n *restartNemesis) Stop(ctx context.Context, c *Cluster) error { return nil }

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
func (n *mixedNemesis) Start(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	var ok []Nemesis
	for _, m := range n.all {
		if m.Applicable(c) == nil {
			ok = append(ok, m)
		}
	}
	n.current = ok[rng.IntN(len(ok))]
	desc, err := n.current.Start(ctx, c, rng)
	return n.current.Name() + ": " + desc, err
}
func (n *mixedNemesis) Stop(ctx context.Context, c *Cluster) error {
	if n.current == nil {
		return nil
	}
	return n.current.Stop(ctx, c)
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
