package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

func TestGroups_PlannedLeaderMovesFailNoRequest(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var moves atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(150 * time.Millisecond):
			}
			for n := range 3 {
				if g, ok := c.Node(n).Group(1); ok && g.IsLeader() {
					if g.TransferLeadershipTo(testcluster.NodeID((n+1)%3)) == nil {
						moves.Add(1)
					}
				}
			}
		}
	}()
	var mu sync.Mutex // protects fails
	var fails []string
	fail := func(format string, args ...any) {
		mu.Lock()
		fails = append(fails, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := fmt.Sprintf("w%d-%d", w, i)
				n := (w + i) % 3
				if resp := httpPut(t, c.URL(n), k, "v"); resp.StatusCode != 200 {
					fail("put via node %d: %d", n, resp.StatusCode)
					continue
				}
				for _, cons := range []kvd.Consistency{kvd.Follower, kvd.Linearizable} {
					for r := range 3 {
						if status, body, _ := httpGet(t, c.URL(r)+"/v1/kv/"+k+"?consistency="+string(cons)); status != 200 {
							fail("%s get via node %d: %d %s", cons, r, status, body)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d leader moves", moves.Load())
	require.Greater(t, moves.Load(), int64(5))
	require.Empty(t, fails)
}
