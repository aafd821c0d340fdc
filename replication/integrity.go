package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// Integrity checks, every Config.IntegrityInterval:
//
//   - every replica scrubs its state (store.DB.Verify): every value's seal
//     and the state hash recomputed from disk. Damage found starts a
//     repair (see repair.go).
//   - the leader proposes a CmdHashCheck, which records the state hash at
//     its index on every replica, then asks each other replica for its
//     hash at that index (etcd's corruption check). Replicas whose hash
//     differs from the majority's raise the alarm: in the log, the
//     metrics and the replica's Health. Which copy is right cannot be
//     decided by the hash alone, so nothing is repaired automatically.

// IntegrityCheck is the outcome of the last cross-replica hash check this
// replica led, or of its last scrub.
type IntegrityCheck struct {
	// At is when the check ended.
	At time.Time `json:"at"`
	// Index is the log index the hashes were compared at (0: a scrub
	// only).
	Index uint64 `json:"index,omitempty"`
	// OK is false when a replica's hash differed, or the scrub found
	// damage.
	OK bool `json:"ok"`
	// Hashes are the hashes each replica reported, by node.
	Hashes map[string]string `json:"hashes,omitempty"`
	// Alarm explains a failed check.
	Alarm string `json:"alarm,omitempty"`
	// Unreached lists replicas that did not answer.
	Unreached []string `json:"unreached,omitempty"`
}

func (g *Group) runIntegrity() {
	every := g.cfg.IntegrityInterval
	if every <= 0 {
		return
	}
	t := time.NewTimer(every/2 + rand.N(every/2+1))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-g.ctx.Done():
			return
		}
		g.CheckIntegrity(g.ctx)
		t.Reset(every)
	}
}

// CheckIntegrity scrubs this replica's state and, on the leader, compares
// the replicas' state hashes. It returns the outcome, also kept for
// Health.
func (g *Group) CheckIntegrity(ctx context.Context) IntegrityCheck {
	c := IntegrityCheck{OK: true}
	if err := g.Serving(); err == nil {
		if _, err := g.db.Verify(); errors.Is(err, store.ErrCorrupt) {
			c.OK, c.Alarm = false, fmt.Sprintf("scrub: %v", err)
		}
	}
	if c.OK && g.IsLeader() {
		c = g.compareHashes(ctx)
	}
	c.At = time.Now()
	if c.OK {
		g.stats.checksOK.Add(1)
	} else {
		g.stats.checksFailed.Add(1)
		g.log.Error("integrity check failed", "index", c.Index, "alarm", c.Alarm, "hashes", c.Hashes)
	}
	g.health.mu.Lock()
	g.health.check = &c
	g.health.mu.Unlock()
	return c
}

func (g *Group) compareHashes(ctx context.Context) IntegrityCheck {
	c := IntegrityCheck{OK: true, Hashes: map[string]string{}}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := g.Propose(pctx, store.Cmd{Kind: store.CmdHashCheck})
	cancel()
	if err != nil {
		c.Alarm = fmt.Sprintf("hash check not proposed: %v", err) // not a failure of integrity
		return c
	}
	c.Index = res.Version
	c.Hashes[g.cfg.NodeID] = fmt.Sprintf("%016x", res.Hash)
	if g.cfg.Remote == nil {
		return c
	}
	for _, peer := range g.repairPeers() {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		h, err := g.cfg.Remote.HashAt(hctx, peer, g.id, c.Index)
		cancel()
		if err != nil {
			c.Unreached = append(c.Unreached, peer)
			continue
		}
		c.Hashes[peer] = fmt.Sprintf("%016x", h)
	}
	count := map[string]int{}
	for _, h := range c.Hashes {
		count[h]++
	}
	if len(count) <= 1 {
		return c
	}
	// The hash most replicas hold; the others are the odd ones out.
	best, n := "", 0
	for h, k := range count {
		if k > n || (k == n && h < best) {
			best, n = h, k
		}
	}
	var odd []string
	for node, h := range c.Hashes {
		if h != best {
			odd = append(odd, node)
		}
	}
	sort.Strings(odd)
	c.OK = false
	c.Alarm = fmt.Sprintf("state hashes differ at index %d: %v disagree with the majority", c.Index, odd)
	return c
}

// HashAt returns the state hash this replica recorded at index, waiting
// (within ctx) until it has applied it. It serves a peer's hash check.
func (g *Group) HashAt(ctx context.Context, index uint64) (uint64, error) {
	if err := g.WaitApplied(ctx, index); err != nil {
		return 0, err
	}
	at, h, err := g.db.HashCheck()
	if err != nil {
		return 0, err
	}
	if at != index {
		return 0, fmt.Errorf("group %d: no hash recorded at index %d (the last is at %d): %w", g.id, index, at, kvd.ErrNotFound)
	}
	return h, nil
}

// LogEntry returns entry index of the local log, once this replica has
// applied it (so it is committed), checked: it serves a peer's repair.
func (g *Group) LogEntry(index uint64) (*raft.Log, error) {
	// Committed here (raft's commit index on a follower only covers what
	// its log shares with the leader's): at that index every replica's
	// committed entry is this one.
	if index == 0 || index > g.db.AppliedIndex() || index > g.raft.CommitIndex() {
		return nil, fmt.Errorf("group %d: entry %d is not committed and applied here (applied %d, commit %d): %w",
			g.id, index, g.db.AppliedIndex(), g.raft.CommitIndex(), kvd.ErrNotFound)
	}
	l, err := g.logs.readStored(index)
	if err != nil {
		return nil, fmt.Errorf("group %d: entry %d: %w", g.id, index, kvd.ErrNotFound)
	}
	if l.Type == raft.LogCommand {
		if _, err := store.DecodeBatch(l.Data); err != nil {
			return nil, fmt.Errorf("group %d: entry %d is damaged here too: %w", g.id, index, err)
		}
	}
	return l, nil
}

// WriteSnapshot streams a snapshot of this replica's state, taken once it
// has applied minIndex (waiting within ctx), to w: it serves a peer's
// repair. The replica must be serving.
func (g *Group) WriteSnapshot(ctx context.Context, minIndex uint64, w io.Writer) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := g.WaitApplied(wctx, minIndex)
	cancel()
	if err != nil {
		return err
	}
	if err := g.Serving(); err != nil {
		return err
	}
	s, err := g.db.Snapshot()
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.WriteTo(w)
	return err
}
