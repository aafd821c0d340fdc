package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

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
