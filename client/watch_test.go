package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

func TestWatch_ResumesAcrossDisconnectsAndFailoverWithoutLossOrDuplicates(t *testing.T) {
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) { cfg.LeaderBalanceInterval = 0 })
	watcherClient := newClient(t, c, nil)
	writer := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := watcherClient.Watch(ctx, "wr/", "")
	require.NoError(t, err)
	defer w.Close()

	const n = 150
	acked := map[string]kvd.Version{}
	done := make(chan error, 1)
	go func() {
		for i := range n {
			k := fmt.Sprintf("wr/%03d", i)
			v, err := writer.Put(ctx, k, []byte("x"), kvd.WithIdempotencyKey("watch-test-"+k))
			if err != nil {
				done <- fmt.Errorf("put %s: %w", k, err)
				return
			}
			acked[k] = v
			switch i {
			case 40:
				c.Stop(0) // the node the watch streams from
			case 80:
				c.Restart(0)
			case 100:
				c.Stop(c.Leader(2)) // a leader fails over
			}
		}
		done <- nil
	}()
	seen := map[string][]kvd.Version{}
	for count := 0; count < n; {
		ev, err := w.Next(ctx)
		require.NoError(t, err)
		require.Equal(t, "put", ev.Type)
		seen[ev.Key] = append(seen[ev.Key], ev.Version)
		count++
	}
	require.NoError(t, <-done)
	for k, v := range acked {
		require.Equal(t, []kvd.Version{v}, seen[k], "%s: missed or repeated", k)
	}
	require.Len(t, seen, n)
}

func TestWatch_TooOldACursorIsCompacted(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.Replication.Store.HistoryMax = 10 })
	cl := newClient(t, c, nil)
	ctx := context.Background()
	w, err := cl.Watch(ctx, "", "")
	require.NoError(t, err)
	_, err = cl.Put(ctx, "first", []byte("1"))
	require.NoError(t, err)
	ev, err := w.Next(ctx)
	require.NoError(t, err)
	w.Close()
	for i := range 30 {
		_, err := cl.Put(ctx, fmt.Sprintf("k%d", i), []byte("x"))
		require.NoError(t, err)
	}
	_, err = cl.Watch(ctx, "", ev.Cursor)
	require.ErrorIs(t, err, kvd.ErrCompacted)
	var ce *client.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, 410, ce.Status)
}

// A watch on a quiet prefix keeps a cursor that follows the history
// forward (progress marks), so after other keys pushed the history past
// its last event it still resumes without loss instead of being compacted.
func TestWatch_AQuietPrefixResumesAfterUnrelatedChurn(t *testing.T) {
	c := testcluster.New(t, 3, 1, func(cfg *server.Config) {
		cfg.LeaderBalanceInterval = 0
		cfg.Replication.Store.HistoryMax = 50
	})
	cl := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := cl.Watch(ctx, "quiet/", "")
	require.NoError(t, err)
	defer w.Close()
	_, err = cl.Put(ctx, "quiet/1", []byte("x"))
	require.NoError(t, err)
	ev, err := w.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "quiet/1", ev.Key)
	for i := range 120 {
		_, err := cl.Put(ctx, fmt.Sprintf("busy/%d", i), []byte("y"))
		require.NoError(t, err)
	}
	time.Sleep(6 * time.Second) // a progress mark goes out
	// Break the stream: every node restarts in turn.
	for i := range 3 {
		c.Stop(i)
		c.Restart(i)
	}
	_, err = cl.Put(ctx, "quiet/2", []byte("z"))
	require.NoError(t, err)
	ev, err = w.Next(ctx)
	require.NoError(t, err, "resumed, not compacted")
	require.Equal(t, "quiet/2", ev.Key)
}
