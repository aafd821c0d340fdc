package txn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// errContended means a read-only transaction kept seeing its keys change.
var errContended = errors.New("read-only transaction contended")

// readOnlyAttempts bounds the lock-free attempts of a read-only
// transaction before it falls back to read locks.
const readOnlyAttempts = 5

// readOnly serves a transaction without writes without taking locks.
//
// Within one group a single linearizable read of every key is an atomic
// snapshot. Across groups it reads every group (round 1), then reads the
// versions again (round 2): if no key changed and none carried a write
// lock in either round, every value read was current at any moment
// between the end of round 1 and the start of round 2, a moment inside
// the transaction's lifetime, which is its serialization point. A write
// lock is settled through its record first (a committed transaction is
// resolved, so its values are seen), then the reads start over.
func (c *Coordinator) readOnly(ctx context.Context, req Request, parts map[kvd.GroupID]*part) (Response, error) {
	keysOf := map[kvd.GroupID][]string{}
	for g, p := range parts {
		seen := map[string]bool{}
		for _, cmp := range p.compares {
			if !seen[cmp.Key] {
				seen[cmp.Key] = true
				keysOf[g] = append(keysOf[g], cmp.Key)
			}
		}
		for _, op := range p.ops {
			if !seen[op.Key] {
				seen[op.Key] = true
				keysOf[g] = append(keysOf[g], op.Key)
			}
		}
		sort.Strings(keysOf[g])
	}
	for attempt := 0; attempt < readOnlyAttempts; attempt++ {
		first, err := c.readAll(ctx, keysOf)
		if err != nil {
			return Response{}, err
		}
		if settled, err := c.settleLocks(ctx, first); err != nil || settled {
			if err != nil {
				return Response{}, err
			}
			continue
		}
		if len(keysOf) > 1 {
			second, err := c.readAll(ctx, keysOf)
			if err != nil {
				return Response{}, err
			}
			if !unchanged(first, second) {
				if _, err := c.settleLocks(ctx, second); err != nil {
					return Response{}, err
				}
				continue
			}
		}
		return answerReadOnly(req, first)
	}
	return Response{}, errContended
}

// readAll reads every group's keys in parallel.
func (c *Coordinator) readAll(ctx context.Context, keysOf map[kvd.GroupID][]string) (map[string]store.KeyState, error) {
	out := map[string]store.KeyState{}
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for g, keys := range keysOf {
		wg.Add(1)
		go func() {
			defer wg.Done()
			states, err := c.g.Read(ctx, g, keys)
			if failpoint.Mutant(failpoint.MutantReadOnlyTxnIgnoresLocks) {
				for i := range states {
					states[i].Lock = nil // planted bug: the committed value under a prepared lock
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("read group %d: %w", g, err)
				}
				return
			}
			for _, st := range states {
				out[st.Key] = st
			}
		}()
	}
	wg.Wait()
	return out, firstErr
}

// settleLocks settles the transactions holding write locks on the keys
// read; it reports whether there were any (the reads must then be made
// again).
func (c *Coordinator) settleLocks(ctx context.Context, states map[string]store.KeyState) (bool, error) {
	done := map[string]bool{}
	any := false
	for _, st := range states {
		if st.Lock == nil || done[st.Lock.Txn] {
			continue
		}
		any = true
		done[st.Lock.Txn] = true
		state, err := Recover(ctx, c.g, *st.Lock)
		if err != nil {
			return true, err
		}
		if state == store.TxnCommitted || state == store.TxnAborted {
			g, err := c.g.GroupOf(st.Key)
			if err != nil {
				return true, err
			}
			if _, err := Resolve(ctx, c.g, st.Lock.Txn, g, state == store.TxnCommitted); err != nil {
				return true, err
			}
		}
	}
	if any {
		return true, nil
	}
	return false, nil
}

// unchanged reports whether two reads agree on every key's version and
// neither saw a write lock.
func unchanged(a, b map[string]store.KeyState) bool {
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.Version != y.Version || x.Found != y.Found || x.Lock != nil || y.Lock != nil {
			return false
		}
	}
	return true
}

// answerReadOnly evaluates the compares and the gets on a snapshot.
func answerReadOnly(req Request, snap map[string]store.KeyState) (Response, error) {
	var failed []int
	for i, cmp := range req.Compares {
		st := snap[cmp.Key]
		var ok bool
		switch {
		case cmp.Version != nil:
			ok = st.Version == *cmp.Version
		case cmp.Exists != nil:
			ok = st.Found == *cmp.Exists
		default:
			ok = st.Found && bytes.Equal(st.Value, cmp.Value)
		}
		if !ok {
			failed = append(failed, i)
		}
	}
	if len(failed) > 0 {
		return compareFailed(failed)
	}
	resp := Response{Committed: true, Results: make([]OpResult, len(req.Ops))}
	for i, op := range req.Ops {
		st := snap[op.Key]
		resp.Results[i] = OpResult{Op: op.Op, Key: op.Key, Found: st.Found, Value: st.Value, Version: st.Version}
	}
	return resp, nil
}
