package server_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/testcluster"
)

func TestGroups_PlannedLeaderMovesFailNoRequest(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var moves atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
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
	var mu sync.Mutex
	var fails []string
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("w%d-%d", w, i)
				n := (w + i) % 3
				resp := httpPut(t, c.URL(n), k, "v")
				if resp.StatusCode != 200 {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("put via node %d: %d", n, resp.StatusCode))
					mu.Unlock()
					continue
				}
				for _, cons := range []kvd.Consistency{kvd.Follower, kvd.Linearizable} {
					for r := range 3 {
						status, body, _ := httpGet(t, c.URL(r)+"/v1/kv/"+k+"?consistency="+string(cons))
						if status != 200 {
							mu.Lock()
							fails = append(fails, fmt.Sprintf("%s get via node %d: %d %s", cons, r, status, body))
							mu.Unlock()
						}
					}
				}
			}
		}()
	}
	time.Sleep(6 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d leader moves", moves.Load())
	require.Greater(t, moves.Load(), int64(5))
	require.Empty(t, fails)
}
