package txn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

func TestIdempotent_AConflictIsNotRememberedARetryRuns(t *testing.T) {
	m, c := newTestCoord(t, 2)
	ctx := context.Background()
	release := make(chan struct{})
	done := pauseAfterPrepare(t, m, c, release, nil)
	c2 := newCoord(m)
	defer c2.Close()
	req := Request{Ops: []Op{put("g1/a", "mine"), put("g2/c", "mine")}}
	idem := &kvd.Idem{Key: "K", FP: []byte("fp")}
	_, err := c2.Do(ctx, req, idem)
	require.ErrorIs(t, err, kvd.ErrConflict, "the lock is held")
	close(release)
	require.NoError(t, <-done)
	resp, err := c2.Do(ctx, req, idem)
	require.NoError(t, err, "the retry runs: the conflict applied nothing and was not remembered")
	require.True(t, resp.Committed)
	v, _ := m.value(t, "g1/a")
	require.Equal(t, "mine", v)
	again, err := c2.Do(ctx, req, idem)
	require.NoError(t, err)
	require.Equal(t, resp.Results, again.Results, "and now the outcome is remembered")
}

// An idempotency key is registered in its home group when the request
// writes elsewhere, so a reuse is caught whichever groups it writes.
func TestIdempotent_AKeyReusedInAnotherGroupIsRefused(t *testing.T) {
	m, c := newTestCoord(t, 3)
	ctx := context.Background()
	idem := func(fp string) *kvd.Idem { return &kvd.Idem{Key: "g3/token", FP: []byte(fp)} }
	first := Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "1")}}
	r1, err := c.Do(ctx, first, idem("first"))
	require.NoError(t, err)
	m.mu.Lock()
	require.Equal(t, uint64(1), m.index[3], "registered in group 3, the key's home")
	m.mu.Unlock()
	r2, err := c.Do(ctx, first, idem("first"))
	require.NoError(t, err, "the same request again")
	require.Equal(t, r1.Results, r2.Results)

	_, err = c.Do(ctx, Request{Ops: []Op{put("g2/x", "2")}}, idem("second"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "a one-group transaction in another group")
	_, err = c.Do(ctx, Request{Ops: []Op{put("g1/x", "2"), put("g2/y", "2")}}, idem("third"))
	require.ErrorIs(t, err, kvd.ErrIdempotencyMismatch, "a cross-group transaction")
	for _, k := range []string{"g2/x", "g1/x", "g2/y"} {
		_, ok := m.value(t, k)
		require.False(t, ok, "%s: refused before anything was written", k)
		require.False(t, m.locked(t, k), "%s: nor locked", k)
	}
	require.NoError(t, Register(ctx, m, idem("first"), 1))
	require.ErrorIs(t, Register(ctx, m, idem("fourth"), 2), kvd.ErrIdempotencyMismatch)
	require.NoError(t, Register(ctx, m, idem("fourth"), 3), "in the home group the write's own record decides")

	// A home group that cannot be reached does not stop the write (its own
	// group still answers its retries); a caller that is gone does.
	m.setFault(func(g kvd.GroupID, cmd store.Cmd) (error, error) {
		if g == 3 {
			return fmt.Errorf("group 3 is down: %w", kvd.ErrUnavailable), nil
		}
		return nil, nil
	})
	require.NoError(t, Register(ctx, m, &kvd.Idem{Key: "g3/other", FP: []byte("x")}, 1))
	gone, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, Register(gone, m, &kvd.Idem{Key: "g3/other", FP: []byte("x")}, 1), kvd.ErrUnavailable)
	m.setFault(nil)
}

// The outcome of an idempotent transaction whose caller gave up is still
// recorded when it finishes, so a repeat gets it without waiting for the
// deadline.
func TestIdempotent_OutcomeRecordedAfterTheCallerLeft(t *testing.T) {
	m, c := newTestCoord(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hangUpDuringPrepare(m, cancel)
	req := Request{Ops: []Op{put("g1/a", "1"), put("g2/b", "2")}}
	idem := &kvd.Idem{Key: "g1/token", FP: []byte("fp")}
	_, err := c.Do(ctx, req, idem)
	if err != nil {
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
	}
	m.setFault(nil)
	rctx, rcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer rcancel()
	resp, err := c.Do(rctx, req, idem) // the fake clock stands still: no deadline passes
	require.NoError(t, err)
	require.True(t, resp.Committed)
	require.Len(t, resp.Results, 2)
	for i, r := range resp.Results {
		require.NotZero(t, r.Version, "result %d carries its version", i)
	}
}

func TestIdempotent_ARepeatTakesOverAnAbortedFirstAttempt(t *testing.T) {
	m, c := newTestCoord(t, 2)
	ctx := context.Background()
	req := Request{Ops: []Op{put("g1/a", "v"), put("g2/b", "v")}}
	idem := &kvd.Idem{Key: "K2", FP: []byte("fp")}
	// The first attempt's coordinator dies after prepare.
	c.cfg.AfterPrepare = func(string) error { return errors.New("coordinator died") }
	_, err := c.Do(ctx, req, idem)
	require.Error(t, err)
	// Past its deadline, a repeat aborts it through its record and runs.
	m.advance(10 * time.Second)
	c2 := newCoord(m)
	defer c2.Close()
	resp, err := c2.Do(ctx, req, idem)
	if errors.Is(err, kvd.ErrConflict) {
		// The dead attempt's locks were still there; the repeat settled
		// them on its way out and released the key: retry.
		resp, err = c2.Do(ctx, req, idem)
	}
	require.NoError(t, err)
	require.True(t, resp.Committed)
	m.settled(t, "g2/b")
	v, _ := m.value(t, "g2/b")
	require.Equal(t, "v", v)
}
