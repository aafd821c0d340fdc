package txn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// Replica is what the janitor reads of one group's local state.
type Replica interface {
	// ExpiredLocks returns, one per transaction, locks whose deadline is
	// before now (Unix ns).
	ExpiredLocks(now int64) ([]store.Lock, error)
	// Records returns the transaction records kept in this group.
	Records() (map[string]store.TxnRecord, error)
}

// Janitor finishes the transactions their coordinators left behind, for
// one group: it recovers the transactions of locks past their deadline
// and resolves them here, aborts this group's records that stayed pending
// past their deadline, resolves every participant of decided records and
// then forgets them. Run Sweep on the group's leader, periodically.
type Janitor struct {
	gs    Groups
	r     Replica
	group kvd.GroupID
	// Grace is how long after a deadline the janitor waits before acting,
	// so it does not race a coordinator that is merely slow.
	Grace time.Duration
	Now   func() time.Time
	// OnFinished, if set, is told of every transaction the janitor
	// finished (resolved or aborted) for its coordinator.
	OnFinished func()
	log        *slog.Logger
}

// NewJanitor returns the janitor of group g's replica r.
func NewJanitor(gs Groups, r Replica, g kvd.GroupID, log *slog.Logger) *Janitor {
	if log == nil {
		log = slog.Default()
	}
	return &Janitor{gs: gs, r: r, group: g, Grace: time.Second, Now: time.Now, log: log.With("group", g)}
}

// Sweep runs one pass. Errors are per transaction and do not stop the
// pass; the first is returned.
func (j *Janitor) Sweep(ctx context.Context) error {
	now := j.Now().Add(-j.Grace).UnixNano()
	var errs []error
	locks, err := j.r.ExpiredLocks(now)
	if err != nil {
		return fmt.Errorf("janitor: %w", err)
	}
	for _, l := range locks {
		if err := j.finishLock(ctx, l); err != nil {
			errs = append(errs, err)
		}
	}
	recs, err := j.r.Records()
	if err != nil {
		return fmt.Errorf("janitor: %w", err)
	}
	for id, rec := range recs {
		// Before its deadline (plus grace) a transaction belongs to its
		// coordinator: pending, it may still commit; decided, it is
		// being resolved, and a late prepare could still lock a key.
		if rec.Deadline >= now {
			continue
		}
		if err := j.finishRecord(ctx, id, rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// finishLock settles the transaction behind an expired lock held here.
func (j *Janitor) finishLock(ctx context.Context, l store.Lock) error {
	st, err := Recover(ctx, j.gs, l)
	if err != nil {
		return err
	}
	switch st {
	case store.TxnCommitted, store.TxnAborted:
		if _, err := Resolve(ctx, j.gs, l.Txn, j.group, st == store.TxnCommitted); err != nil {
			return err
		}
		j.finished()
		j.log.Info("resolved a transaction left behind", "txn", l.Txn, "state", st)
	}
	return nil
}

func (j *Janitor) finished() {
	if j.OnFinished != nil {
		j.OnFinished()
	}
}

// finishRecord aborts a pending record past its deadline, or resolves a
// decided one everywhere and forgets it.
func (j *Janitor) finishRecord(ctx context.Context, id string, rec store.TxnRecord) error {
	state := rec.State
	if state == store.TxnPending {
		st, err := Recover(ctx, j.gs, store.Lock{Txn: id, RecordGroup: j.group, Deadline: rec.Deadline})
		if err != nil {
			return err
		}
		state = st
		if state == store.TxnPending {
			return nil
		}
		j.finished()
		j.log.Info("aborted a transaction its coordinator left pending", "txn", id)
	}
	for _, g := range rec.Participants {
		if _, err := Resolve(ctx, j.gs, id, g, state == store.TxnCommitted); err != nil {
			return err
		}
	}
	return Forget(ctx, j.gs, id, j.group)
}
