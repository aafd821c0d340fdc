package server

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
	"github.com/kvd-project/kvd/txn"
)

// The node-to-node endpoints that serve peers' repairs and integrity
// checks, and the operator's view of transactions.

// replica returns this node's replica of g if it serves g (see
// servingReplica), else kvd.ErrWrongGroup.
func (s *Server) replica(g kvd.GroupID) (*replication.Group, error) {
	grp, ok := s.servingReplica(g)
	if !ok {
		return nil, fmt.Errorf("%w: node %s hosts no serving replica of group %d", kvd.ErrWrongGroup, s.id, g)
	}
	return grp, nil
}

// LogEntry returns entry index of this node's log of group g, which it
// must have applied (a peer's repair of a damaged entry).
func (s *Server) LogEntry(ctx context.Context, g kvd.GroupID, index uint64) (api.LogEntry, error) {
	grp, err := s.replica(g)
	if err != nil {
		return api.LogEntry{}, err
	}
	l, err := grp.LogEntry(index)
	if err != nil {
		return api.LogEntry{}, err
	}
	return api.LogEntry{Index: l.Index, Term: l.Term, Type: uint8(l.Type), Data: l.Data}, nil
}

// lazyWriter calls start for the real writer on the first write.
type lazyWriter struct {
	start func() io.Writer
	w     io.Writer
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if l.w == nil {
		l.w = l.start()
	}
	return l.w.Write(p)
}

// WriteSnapshot streams a snapshot of this node's replica of group g,
// taken once it has applied minIndex (a peer's repair); start gives the
// writer, just before the first byte.
func (s *Server) WriteSnapshot(ctx context.Context, g kvd.GroupID, minIndex uint64, start func() io.Writer) error {
	grp, err := s.replica(g)
	if err != nil {
		return err
	}
	return grp.WriteSnapshot(ctx, minIndex, &lazyWriter{start: start})
}

// HashAt returns the state hash this node's replica of group g recorded
// at index (the leader's integrity check).
func (s *Server) HashAt(ctx context.Context, g kvd.GroupID, index uint64) (uint64, error) {
	grp, err := s.replica(g)
	if err != nil {
		return 0, err
	}
	return grp.HashAt(ctx, index)
}

// GroupTxns returns the transaction records and locks of this node's
// replica of group g.
func (s *Server) GroupTxns(ctx context.Context, g kvd.GroupID) (api.GroupTxns, error) {
	grp, err := s.replica(g)
	if err != nil {
		return api.GroupTxns{}, err
	}
	// A follower read: what every acknowledged write left behind.
	if err := grp.ReadBarrier(ctx, kvd.Follower); err != nil {
		return api.GroupTxns{}, err
	}
	recs, err := grp.Store().Records()
	if err != nil {
		return api.GroupTxns{}, err
	}
	locks, err := grp.Store().Locks()
	if err != nil {
		return api.GroupTxns{}, err
	}
	out := api.GroupTxns{Records: map[string]api.TxnRecord{}, Locks: []api.TxnLockHeld{}}
	for id, r := range recs {
		ar := api.TxnRecord{State: string(r.State), Deadline: r.Deadline}
		for _, p := range r.Participants {
			ar.Participants = append(ar.Participants, uint64(p))
		}
		out.Records[id] = ar
	}
	for _, l := range locks {
		out.Locks = append(out.Locks, api.TxnLockHeld{Txn: l.Txn, Key: l.Key, Write: l.Write, RecordGroup: uint64(l.RecordGroup), Deadline: l.Deadline})
	}
	return out, nil
}

// groupTxnsAnywhere reads group g's transactions from this node's replica,
// or from a member.
func (s *Server) groupTxnsAnywhere(ctx context.Context, grp kvd.Group) (api.GroupTxns, error) {
	if _, ok := s.hosted()[grp.ID]; ok {
		if out, err := s.GroupTxns(ctx, grp.ID); err == nil {
			return out, nil
		}
	}
	var out api.GroupTxns
	if err := s.askMembers(ctx, grp.ID, "/v1/internal/txns?"+groupQuery(grp.ID), &out); err != nil {
		return api.GroupTxns{}, fmt.Errorf("transactions of group %d: %w", grp.ID, err)
	}
	return out, nil
}

// Txns lists the transactions that hold locks or records in any group.
func (s *Server) Txns(ctx context.Context) (api.TxnList, error) {
	list, _ := s.txns(ctx)
	return list, nil
}

// txns lists the transactions, and the deadline of each (Unix ns).
func (s *Server) txns(ctx context.Context) (api.TxnList, map[string]int64) {
	m := s.Map()
	per := make([]api.GroupTxns, len(m.Groups))
	errs := make([]error, len(m.Groups))
	var wg sync.WaitGroup
	for i, grp := range m.Groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			per[i], errs[i] = s.groupTxnsAnywhere(ctx, grp)
		}()
	}
	wg.Wait()
	byID := map[string]*api.TxnInfo{}
	info := func(id string) *api.TxnInfo {
		t := byID[id]
		if t == nil {
			t = &api.TxnInfo{ID: id}
			byID[id] = t
		}
		return t
	}
	var out api.TxnList
	read := map[uint64]bool{}
	deadlines := map[string]int64{}
	for i, grp := range m.Groups {
		if errs[i] != nil {
			out.Unreached = append(out.Unreached, uint64(grp.ID))
			continue
		}
		read[uint64(grp.ID)] = true
		for id, r := range per[i].Records {
			t := info(id)
			t.State, t.RecordGroup, t.Participants = r.State, uint64(grp.ID), r.Participants
			t.Deadline = time.Unix(0, r.Deadline).UTC().Format(time.RFC3339Nano)
			deadlines[id] = max(deadlines[id], r.Deadline)
		}
		for _, l := range per[i].Locks {
			t := info(l.Txn)
			deadlines[l.Txn] = max(deadlines[l.Txn], l.Deadline)
			if t.RecordGroup == 0 {
				t.RecordGroup = l.RecordGroup
				t.Deadline = time.Unix(0, l.Deadline).UTC().Format(time.RFC3339Nano)
			}
			t.Locks = append(t.Locks, api.TxnLock{Group: uint64(grp.ID), Key: l.Key, Write: l.Write})
		}
	}
	for _, t := range byID {
		if t.State == "" {
			t.State = "unknown" // its record group could not be read
			if read[t.RecordGroup] {
				t.State = string(store.TxnAbsent)
			}
		}
		out.Txns = append(out.Txns, *t)
	}
	sort.Slice(out.Txns, func(i, j int) bool { return out.Txns[i].ID < out.Txns[j].ID })
	if out.Txns == nil {
		out.Txns = []api.TxnInfo{}
	}
	return out, deadlines
}

// AbortTxn aborts transaction id unless it has committed, then finishes
// it in every group (kvd.ErrNotFound if nothing holds it).
func (s *Server) AbortTxn(ctx context.Context, id string) (api.TxnInfo, error) {
	list, deadlines := s.txns(ctx)
	var t *api.TxnInfo
	for i := range list.Txns {
		if list.Txns[i].ID == id {
			t = &list.Txns[i]
		}
	}
	if t == nil {
		if len(list.Unreached) > 0 {
			return api.TxnInfo{}, fmt.Errorf("transaction %s: not found in the groups read, and groups %v could not be read: %w", id, list.Unreached, kvd.ErrUnavailable)
		}
		return api.TxnInfo{}, fmt.Errorf("transaction %s holds no lock and no record: %w", id, kvd.ErrNotFound)
	}
	gs := s
	m := s.Map()
	rg := kvd.GroupID(t.RecordGroup)
	state := store.TxnAborted // without a record group it cannot have committed
	if _, ok := m.Group(rg); ok && rg != 0 {
		var err error
		if state, err = txn.ForceAbort(ctx, gs, id, rg, deadlines[id]); err != nil {
			return api.TxnInfo{}, err
		}
	}
	commit := state == store.TxnCommitted
	targets := map[kvd.GroupID]bool{}
	for _, l := range t.Locks {
		targets[kvd.GroupID(l.Group)] = true
	}
	for _, p := range t.Participants {
		targets[kvd.GroupID(p)] = true
	}
	for g := range targets {
		if _, ok := m.Group(g); !ok {
			continue
		}
		if _, err := txn.Resolve(ctx, gs, id, g, commit); err != nil {
			return api.TxnInfo{}, fmt.Errorf("transaction %s is %s; resolving it in group %d: %w", id, state, g, err)
		}
	}
	// The record stays until its deadline (the janitor forgets it then):
	// a prepare still on its way must find it aborted.
	s.log.Info("operator finished a transaction", "txn", id, "state", state)
	t.State = string(state)
	return *t, nil
}
