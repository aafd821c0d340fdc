package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

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
