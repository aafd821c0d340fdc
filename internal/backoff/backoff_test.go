package backoff

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPolicy_Delay_DoublesUpToMax(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		p    Policy
		n    int
		want time.Duration
	}{
		{Policy{Base: 10 * ms, Max: 320 * ms}, 0, 10 * ms},
		{Policy{Base: 10 * ms, Max: 320 * ms}, 1, 20 * ms},
		{Policy{Base: 10 * ms, Max: 320 * ms}, 5, 320 * ms},
		{Policy{Base: 10 * ms, Max: 320 * ms}, 6, 320 * ms},
		{Policy{Base: 10 * ms, Max: 320 * ms}, 1 << 20, 320 * ms},
		{Policy{Base: 100 * ms, Max: 5 * time.Second}, 5, 3200 * ms},
		{Policy{Base: 100 * ms, Max: 5 * time.Second}, 6, 5 * time.Second},
		{Policy{Base: 10 * ms, Max: 5 * ms}, 0, 5 * ms},
		{Policy{}, 3, 0},
		// Doubling stops at Max: it never overflows into a wait of zero
		// or less, however large Max and the attempt.
		{Policy{Base: time.Second, Max: math.MaxInt64}, 100, math.MaxInt64},
		{Policy{Base: 3 * time.Second, Max: math.MaxInt64 - 1}, 1 << 20, math.MaxInt64 - 1},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, tc.p.Delay(tc.n), "%+v attempt %d", tc.p, tc.n)
	}
}

func TestPolicy_Delay_IsBaseShiftedByTheCappedAttempt(t *testing.T) {
	// The loops this replaces waited base<<min(attempt, k) milliseconds.
	for _, c := range []struct{ base, k int }{{5, 4}, {10, 5}, {20, 4}, {50, 4}} {
		p := Policy{Base: time.Duration(c.base) * time.Millisecond, Max: time.Duration(c.base<<c.k) * time.Millisecond}
		for n := 0; n < 12; n++ {
			want := time.Duration(c.base<<min(n, c.k)) * time.Millisecond
			require.Equal(t, want, p.Delay(n), "base %d ms, cap 2^%d, attempt %d", c.base, c.k, n)
		}
	}
}

func TestPolicy_Wait_EndsWithTheContext(t *testing.T) {
	p := Policy{Base: time.Hour, Max: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, p.Wait(ctx, 0), context.Canceled)

	start := time.Now()
	require.NoError(t, Policy{Base: time.Millisecond, Max: time.Millisecond}.Wait(context.Background(), 0))
	require.GreaterOrEqual(t, time.Since(start), time.Millisecond)
}

func TestPolicy_Retry_UntilSuccess(t *testing.T) {
	p := Policy{Base: time.Millisecond, Max: 2 * time.Millisecond}
	calls := 0
	err := p.Retry(context.Background(), Always, func() error {
		calls++
		if calls < 4 {
			return errors.New("not yet")
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 4, calls)
}

func TestPolicy_Retry_StopsAtAnErrorRetryableRefuses(t *testing.T) {
	p := Policy{Base: time.Millisecond, Max: time.Millisecond}
	transient, final := errors.New("transient"), errors.New("final")
	calls := 0
	err := p.Retry(context.Background(), func(err error) bool { return errors.Is(err, transient) }, func() error {
		calls++
		if calls < 3 {
			return transient
		}
		return final
	})
	require.ErrorIs(t, err, final)
	require.Equal(t, 3, calls)
}

func TestPolicy_Retry_ReturnsTheLastErrorWhenTheContextEnds(t *testing.T) {
	p := Policy{Base: time.Millisecond, Max: 4 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	boom := errors.New("boom")
	calls := 0
	err := p.Retry(ctx, Always, func() error { calls++; return boom })
	require.ErrorIs(t, err, boom)
	require.Greater(t, calls, 1)
}

func TestPolicy_Retry_NeverRunsAfterTheContextEnded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Policy{}.Retry(ctx, Always, func() error {
		t.Fatal("try ran after the context ended")
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
}
