package load

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRun_CountsEveryOperationOnceAndSummarises(t *testing.T) {
	var seen [1000]atomic.Int32
	r := Run(context.Background(), 8, len(seen), 0, nil, func(_ context.Context, i int) error {
		seen[i].Add(1)
		if i%100 == 0 {
			return errors.New("boom")
		}
		return nil
	})
	for i := range seen {
		require.Equal(t, int32(1), seen[i].Load(), "op %d", i)
	}
	require.Equal(t, int64(990), r.Ops)
	require.Equal(t, int64(10), r.Errors)
	require.EqualError(t, r.FirstErr, "boom")
	require.LessOrEqual(t, r.P50, r.P99)
	require.LessOrEqual(t, r.P99, r.Max)
	require.Positive(t, r.OpsPerSec)
}

func TestRun_StopsAfterItsDurationAndReportsProgress(t *testing.T) {
	var ticks atomic.Int32
	start := time.Now()
	r := Run(context.Background(), 4, 0, 1500*time.Millisecond, func(done, _ int64, _ time.Duration) {
		ticks.Add(1)
	}, func(ctx context.Context, i int) error {
		select {
		case <-time.After(time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	require.Less(t, time.Since(start), 10*time.Second)
	require.Zero(t, r.Errors, "operations cut off by the end of the run are not failures")
	require.Positive(t, r.Ops)
	require.GreaterOrEqual(t, ticks.Load(), int32(1))
}
