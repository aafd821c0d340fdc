package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
	"github.com/kvd-project/kvd/txn"
)

// The node's core serves the coordinator of transactions, the HTTP
// handlers (package node asserts that) and, through local, the
// in-process store.
var _ txn.Groups = (*Server)(nil)

// groupFor returns the local replica of the group that owns key. A routed
// request must name that group at the current epoch and reach a node that
// hosts it; an unrouted one for a group hosted elsewhere gets a
// NotLeaderError naming the group's preferred leader, to be forwarded.
func (s *Server) groupFor(ctx context.Context, key string, rt kvd.Route) (*replication.Group, error) {
	m := s.Map()
	gid, ok := m.GroupOf(kvd.Slot(key))
	if !ok {
		return nil, fmt.Errorf("slot %d has no group: %w", kvd.Slot(key), kvd.ErrUnavailable)
	}
	if rt.Direct {
		if rt.Group != gid || rt.Epoch < m.Epoch {
			return nil, fmt.Errorf("%w: key %q belongs to group %d at epoch %d (asked: group %d, epoch %d)", kvd.ErrWrongGroup, key, gid, m.Epoch, rt.Group, rt.Epoch)
		}
		return s.replica(gid)
	}
	if g, ok := s.servingReplica(gid); ok {
		return g, nil
	}
	return nil, &kvd.NotLeaderError{Group: gid, Leader: s.leaderOrPreferred(ctx, gid)}
}

// A request that no router placed (rt.Direct unset) and that meets a
// slot move, in the group that no longer (or not yet) serves the key's
// slot, waits for the move to pass and is placed again, for at most
// moveWait: the refusals it meets promise that nothing was applied.
const moveWait = 3 * time.Second

// movedAway tells whether err is a group's refusal of a key because its
// slot moved, or is being handed over.
func movedAway(err error) bool {
	return errors.Is(err, kvd.ErrWrongGroup) || (errors.Is(err, kvd.ErrUnavailable) && strings.Contains(err.Error(), "is being handed")) || store.Paused(err)
}

// placed runs op, again while a slot move refuses it (see moveWait),
// unless the request was routed by a client, which places it again
// itself.
func placed[T any](ctx context.Context, rt kvd.Route, op func() (T, error)) (T, error) {
	until := time.Now().Add(moveWait)
	for attempt := 0; ; attempt++ {
		out, err := op()
		if err == nil || rt.Direct || !movedAway(err) || time.Now().After(until) || hopBackoff.Wait(ctx, attempt) != nil {
			return out, err
		}
	}
}

// Get reads key at consistency c, settling a transaction's lock on it
// first (see settle).
func (s *Server) Get(ctx context.Context, key string, c kvd.Consistency, rt kvd.Route) (kvd.Item, error) {
	it, _, err := s.GetExpiring(ctx, key, c, rt)
	return it, err
}

// GetExpiring is Get with when the item's TTL ends (zero: none), read
// with it.
func (s *Server) GetExpiring(ctx context.Context, key string, c kvd.Consistency, rt kvd.Route) (kvd.Item, time.Time, error) {
	r, err := placed(ctx, rt, func() (expiringItem, error) { return s.get(ctx, key, c, rt) })
	return r.Item, r.expires, err
}

// expiringItem is an item and when its TTL ends.
type expiringItem struct {
	kvd.Item
	expires time.Time
}

// get is one attempt of GetExpiring.
func (s *Server) get(ctx context.Context, key string, c kvd.Consistency, rt kvd.Route) (_ expiringItem, err error) {
	start := time.Now()
	g, err := s.groupFor(ctx, key, rt)
	if err != nil {
		return expiringItem{}, err
	}
	defer func() {
		if err == nil || errors.Is(err, kvd.ErrNotFound) { // served here
			s.countRequest(g.ID(), start)
		}
	}()
	if err := g.ReadBarrier(ctx, c); err != nil {
		return expiringItem{}, err
	}
	if err := g.Store().Readable(key); err != nil {
		return expiringItem{}, fmt.Errorf("get %q in group %d: %w", key, g.ID(), err)
	}
	for attempt := 0; attempt < 5; attempt++ {
		it, expires, found, lock, err := g.Store().GetLockedExpiring(key)
		if err != nil {
			return expiringItem{}, err
		}
		if lock != nil && c != kvd.Stale {
			// A transaction intends to change the key: its record
			// decides what a linearizable read returns.
			settled, err := s.settle(ctx, g, *lock)
			if err != nil {
				return expiringItem{}, fmt.Errorf("get %q: %w", key, err)
			}
			if settled {
				continue // resolved here: read again
			}
		}
		if !found {
			return expiringItem{}, fmt.Errorf("get %q: %w", key, kvd.ErrNotFound)
		}
		return expiringItem{Item: it, expires: expires}, nil
	}
	return expiringItem{}, fmt.Errorf("get %q: the key keeps changing hands: %w", key, kvd.ErrUnavailable)
}

// settle finds out the fate of the transaction holding lock on a key of
// group g. A pending transaction has not committed: the key's committed
// value stands (settled false). A committed one is resolved here first,
// and this replica waits until it has applied the resolution (settled
// true: read again). An aborted one is resolved in the background.
func (s *Server) settle(ctx context.Context, g *replication.Group, lock store.Lock) (bool, error) {
	st, err := txn.Recover(ctx, s, lock)
	if err != nil {
		return false, err
	}
	switch st {
	case store.TxnCommitted:
		res, err := txn.Resolve(ctx, s, lock.Txn, g.ID(), true)
		if err != nil {
			return false, err
		}
		s.metrics.txnRecoveries.Add(1)
		return true, g.WaitApplied(ctx, res.Version)
	case store.TxnAborted:
		s.coord.ResolveLater(lock.Txn, g.ID(), false)
	}
	return false, nil
}

// lockWait bounds how long a plain write waits for a transaction's lock.
const lockWait = time.Second

// proposeWrite proposes a plain write, waiting a little for transactions
// that hold the key's lock (helping expired ones along), then giving up
// with kvd.ErrConflict.
func (s *Server) proposeWrite(ctx context.Context, g *replication.Group, cmd store.Cmd) (store.Result, error) {
	until := time.Now().Add(lockWait)
	for attempt := 0; ; attempt++ {
		res, err := s.propose(ctx, g, cmd)
		if err != nil || !errors.Is(res.Err, kvd.ErrConflict) {
			return res, err
		}
		if time.Now().After(until) {
			return res, nil
		}
		if res.Locks != nil {
			now := time.Now().UnixNano()
			locks := res.Locks.Reads
			if res.Locks.Write != nil {
				locks = append(locks, *res.Locks.Write)
			}
			for _, l := range locks {
				if l.Deadline < now {
					s.settle(ctx, g, l)
				}
			}
		}
		if lockBackoff.Wait(ctx, attempt) != nil {
			return res, nil
		}
	}
}

// register registers an idempotent write's key in its home group (see
// txn.Register), on the replica that will propose the write: a follower
// answers not-leader first, as its proposal would, so a write that is
// forwarded registers once, at the leader.
func (s *Server) register(ctx context.Context, g *replication.Group, idem *kvd.Idem) error {
	if idem == nil {
		return nil
	}
	if !g.IsLeader() {
		return &kvd.NotLeaderError{Group: g.ID(), Leader: g.LeaderID()}
	}
	return txn.Register(ctx, s, idem, g.ID())
}

// writeFailure explains a write the store refused.
func writeFailure(op, key string, res store.Result) error {
	if errors.Is(res.Err, kvd.ErrPreconditionFailed) {
		return fmt.Errorf("%s %q: current version %d: %w", op, key, res.Version, res.Err)
	}
	if strings.HasPrefix(res.Err.Error(), fmt.Sprintf("%s %q: ", op, key)) {
		return res.Err // the store named the write already
	}
	return fmt.Errorf("%s %q: %w", op, key, res.Err)
}

// Put writes key if o.Cond holds and returns its new version; o's
// idempotency key, if any, makes the write idempotent.
func (s *Server) Put(ctx context.Context, key string, value []byte, o kvd.WriteOptions, rt kvd.Route) (kvd.Version, error) {
	idem, err := kvd.PutIdem(o, key, value)
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	res, err := s.write(ctx, "put", store.Cmd{Kind: store.CmdPut, Key: key, Value: value, Cond: o.Cond, TTL: int64(o.TTL), Idem: idem}, rt)
	return res.Version, err
}

// Delete removes key if o.Cond holds; deleted is false if it was absent.
func (s *Server) Delete(ctx context.Context, key string, o kvd.WriteOptions, rt kvd.Route) (bool, kvd.Version, error) {
	idem, err := kvd.DeleteIdem(o, key)
	if err != nil {
		return false, 0, fmt.Errorf("delete %q: %w", key, err)
	}
	res, err := s.write(ctx, "delete", store.Cmd{Kind: store.CmdDelete, Key: key, Cond: o.Cond, Idem: idem}, rt)
	return res.Deleted, res.Version, err
}

// write proposes a plain write of cmd.Key in the group that owns it,
// registering its idempotency key first, and explains a refusal.
func (s *Server) write(ctx context.Context, op string, cmd store.Cmd, rt kvd.Route) (store.Result, error) {
	return placed(ctx, rt, func() (store.Result, error) { return s.writeOnce(ctx, op, cmd, rt) })
}

// writeOnce is one attempt of write.
func (s *Server) writeOnce(ctx context.Context, op string, cmd store.Cmd, rt kvd.Route) (_ store.Result, err error) {
	start := time.Now()
	g, err := s.groupFor(ctx, cmd.Key, rt)
	if err != nil {
		return store.Result{}, err
	}
	defer func() {
		if !errors.Is(err, kvd.ErrNotLeader) { // proposed here, not sent on
			s.countRequest(g.ID(), start)
		}
	}()
	if err := s.register(ctx, g, cmd.Idem); err != nil {
		return store.Result{}, fmt.Errorf("%s %q: %w", op, cmd.Key, err)
	}
	res, err := s.proposeWrite(ctx, g, cmd)
	if err != nil {
		return store.Result{}, err
	}
	if res.Err != nil {
		return store.Result{}, writeFailure(op, cmd.Key, res)
	}
	return res, nil
}

// Scan reads a page from every group and merges them in key order. The
// page is exact: of all matching keys, the first Limit that fit in
// o.MaxBytes (at least one), and the key after them as next. A routed
// scan (rt.Direct) reads rt.Group alone.
func (s *Server) Scan(ctx context.Context, o kvd.ScanOptions, c kvd.Consistency, rt kvd.Route) ([]kvd.Item, string, error) {
	if o.MaxBytes <= 0 || o.MaxBytes > s.cfg.Limits.MaxScanBytes {
		o.MaxBytes = s.cfg.Limits.MaxScanBytes
	}
	m := s.Map()
	if rt.Direct {
		if _, ok := m.Group(rt.Group); !ok || rt.Epoch < m.Epoch {
			return nil, "", fmt.Errorf("%w: group %d at epoch %d is not in the map (epoch %d)", kvd.ErrWrongGroup, rt.Group, rt.Epoch, m.Epoch)
		}
		g, err := s.replica(rt.Group)
		if err != nil {
			return nil, "", err
		}
		return s.scanLocal(ctx, g, o, c, rt.Slots)
	}
	// Each group reads its share of the byte cap, so that the pages held
	// at once stay within it however many groups there are (every page
	// holds at least one item, so the scan always moves on, and may pass
	// its share with it); the merged page is then cut to the cap itself.
	total := o.MaxBytes
	o.MaxBytes = max(o.MaxBytes/max(len(m.Groups), 1), 1)
	for attempt := 0; ; attempt++ {
		items, next, err := kvd.ScanGroups(len(m.Groups), o.Limit, total, func(i int) ([]kvd.Item, string, error) {
			return s.scanGroup(ctx, m.Groups[i], m.Epoch, o, c)
		})
		if !inTransit(err) || attempt >= 8 {
			return items, next, err
		}
		// Slots are changing hands: read again with the map as it is
		// once the move has gone on.
		if hopBackoff.Wait(ctx, attempt) != nil {
			return nil, "", err
		}
		m = s.Map()
	}
}

// errSlotsInTransit means a group did not serve exactly the slots the
// scan's map gives it: slots are changing hands between groups.
var errSlotsInTransit = fmt.Errorf("%w: %s", kvd.ErrUnavailable, api.SlotsInTransit)

// inTransit tells whether err is errSlotsInTransit, here or from another
// node (where only its text travels).
func inTransit(err error) bool {
	return errors.Is(err, errSlotsInTransit) || (errors.Is(err, kvd.ErrUnavailable) && strings.Contains(err.Error(), api.SlotsInTransit))
}

// scanLocal scans g's replica at consistency c. Write locks in the range
// are settled first, so the scan never misses a committed transaction.
// If want is set, the group must serve exactly those slots (see
// kvd.Route.Slots), before and after it reads.
func (s *Server) scanLocal(ctx context.Context, g *replication.Group, o kvd.ScanOptions, c kvd.Consistency, want *kvd.SlotSet) ([]kvd.Item, string, error) {
	if err := g.ReadBarrier(ctx, c); err != nil {
		return nil, "", err
	}
	served := func() error {
		if want == nil {
			return nil
		}
		if got := g.Store().ServedSlots(); got != *want {
			return fmt.Errorf("scan group %d (it serves slots %v, the scan's map gives it %v): %w", g.ID(), got.Ranges(), want.Ranges(), errSlotsInTransit)
		}
		return nil
	}
	if err := served(); err != nil {
		return nil, "", err
	}
	if c != kvd.Stale {
		locks, err := g.Store().WriteLocks(o)
		if err != nil {
			return nil, "", err
		}
		seen := map[string]bool{}
		for _, l := range locks {
			if seen[l.Txn] {
				continue
			}
			seen[l.Txn] = true
			if _, err := s.settle(ctx, g, l); err != nil {
				return nil, "", err
			}
		}
	}
	items, next, err := g.Store().Scan(o)
	if err == nil {
		err = served()
	}
	if err != nil {
		return nil, "", err
	}
	return items, next, nil
}

// scanGroup reads one group's page: locally when this node may serve it at
// c, else from the group's leader (linearizable) or the replica the
// leader hint names, following hints for a few hops.
func (s *Server) scanGroup(ctx context.Context, grp kvd.Group, epoch uint64, o kvd.ScanOptions, c kvd.Consistency) ([]kvd.Item, string, error) {
	var want kvd.SlotSet
	want.AddRanges(grp.Slots)
	if g, ok := s.servingReplica(grp.ID); ok && (c != kvd.Linearizable || g.IsLeader()) {
		return s.scanLocal(ctx, g, o, c, &want)
	}
	target := s.leaderOrPreferred(ctx, grp.ID)
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		var items []kvd.Item
		var next string
		if g, ok := s.servingReplica(grp.ID); ok && target == s.id {
			items, next, err = s.scanLocal(ctx, g, o, c, &want)
		} else if target == s.id {
			err = &kvd.NotLeaderError{Group: grp.ID}
		} else {
			items, next, err = s.remoteScan(ctx, target, grp.ID, epoch, &want, o, c)
		}
		if err == nil {
			return items, next, nil
		}
		hint := kvd.LeaderHint(err)
		if !errors.Is(err, kvd.ErrNotLeader) || ctx.Err() != nil {
			return nil, "", err
		}
		if hint == "" || hint == target {
			if hopBackoff.Wait(ctx, attempt) != nil {
				return nil, "", err
			}
			s.forgetLeader(grp.ID)
			hint = s.leaderOrPreferred(ctx, grp.ID)
		}
		target = hint
	}
	return nil, "", fmt.Errorf("scan group %d: %w", grp.ID, err)
}
