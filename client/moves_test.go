package client_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// While slots move between groups (to a group created after the client
// read the map), the router's writes land and its scans see every key
// exactly once.
func TestClient_ScansAndWritesAcrossMoves(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	cl := newClient(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	const n = 200
	for i := range n {
		_, err := cl.Put(ctx, fmt.Sprintf("s/%03d", i), []byte("v"))
		require.NoError(t, err)
	}
	gc, err := cl.CreateGroup(ctx, api.GroupRequest{})
	require.NoError(t, err)
	var scans, writes atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 2)
	go func() {
		for {
			select {
			case <-stop:
				errs <- nil
				return
			default:
			}
			p, err := cl.Scan(ctx, kvd.ScanOptions{Prefix: "s/", Limit: 1000})
			if err != nil {
				errs <- fmt.Errorf("scan: %w", err)
				return
			}
			seen := map[string]bool{}
			for _, it := range p.Items {
				if seen[it.Key] {
					errs <- fmt.Errorf("scan returned %s twice", it.Key)
					return
				}
				seen[it.Key] = true
			}
			if len(seen) != n {
				errs <- fmt.Errorf("scan returned %d keys of %d", len(seen), n)
				return
			}
			scans.Add(1)
		}
	}()
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				errs <- nil
				return
			default:
			}
			if _, err := cl.Put(ctx, fmt.Sprintf("s/%03d", i%n), []byte(fmt.Sprint(i))); err != nil {
				errs <- fmt.Errorf("put: %w", err)
				return
			}
			writes.Add(1)
		}
	}()
	for _, r := range [][2]int{{0, 511}, {512, 700}} {
		started, err := cl.StartMove(ctx, api.MoveRequest{Slots: [][2]int{r}, To: gc.Group})
		require.NoError(t, err)
		mi, err := cl.WaitMove(ctx, started.ID)
		require.NoError(t, err)
		require.Equal(t, kvd.MoveDone, mi.State)
		t.Logf("move %v done at %v: %d scans, %d writes", r, time.Now().Format("15:04:05.000"), scans.Load(), writes.Load())
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	require.Positive(t, scans.Load())
	require.Positive(t, writes.Load())
	t.Logf("%d scans and %d writes across two moves", scans.Load(), writes.Load())
}
