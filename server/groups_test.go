package server_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

func httpPut(t *testing.T, url, key, val string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("PUT", url+"/v1/kv/"+key, strings.NewReader(val))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func httpGet(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp.Header
}

func TestGroups_WritesLandInTheOwningGroupOnly(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	m := c.Node(0).Map()
	keys := map[string]kvd.GroupID{}
	for i := range 90 {
		k := fmt.Sprintf("key-%d", i)
		gid, _ := m.GroupOf(kvd.Slot(k))
		keys[k] = gid
		resp := httpPut(t, c.URL(i%3), k, k)
		require.Equal(t, 200, resp.StatusCode)
	}
	for k, gid := range keys {
		for n := range 3 {
			for g := kvd.GroupID(1); g <= 3; g++ {
				grp, ok := c.Node(n).Group(g)
				require.True(t, ok)
				if g == gid {
					require.Eventually(t, func() bool {
						_, err := grp.Store().Get(k)
						return err == nil
					}, 5*time.Second, 10*time.Millisecond, "%s missing from group %d on node %d", k, g, n)
				} else {
					_, err := grp.Store().Get(k)
					require.ErrorIs(t, err, kvd.ErrNotFound, "%s (group %d) found in group %d", k, gid, g)
				}
			}
		}
	}
}

func TestGroups_FollowerReadsSeeTheLatestAcknowledgedWrite(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	for i := range 60 {
		k := fmt.Sprintf("f%d", i)
		v := fmt.Sprintf("v%d", i)
		require.Equal(t, 200, httpPut(t, c.URL(i%3), k, v).StatusCode)
		for n := range 3 {
			status, body, hdr := httpGet(t, c.URL(n)+"/v1/kv/"+k+"?consistency=follower")
			require.Equal(t, 200, status, "node %d: %s", n, body)
			require.Equal(t, v, body, "follower read on node %d missed an acknowledged write", n)
			// A node that hosts the key's group serves the read itself.
			require.Equal(t, testcluster.NodeID(n), hdr.Get(api.HeaderNode))
		}
	}
}

func TestGroups_LeadershipSpreadsAndTransportIsShared(t *testing.T) {
	c := testcluster.New(t, 3, 3, func(cfg *server.Config) { cfg.LeaderBalanceInterval = 200 * time.Millisecond })
	// Group g's preferred leader is node g-1; the balancer hands
	// leadership back to it.
	require.Eventually(t, func() bool {
		for g := kvd.GroupID(1); g <= 3; g++ {
			grp, _ := c.Node(int(g) - 1).Group(g)
			if !grp.IsLeader() {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "each node should lead its preferred group")
	for i := range 30 {
		require.Equal(t, 200, httpPut(t, c.URL(0), fmt.Sprintf("t%d", i), "x").StatusCode)
	}
	for n := range 3 {
		st := c.Node(n).RaftTransportStats()
		// Three groups, two peers: one dialed session per peer carries
		// every group's streams.
		require.Equal(t, 2, st.Outbound, "node %d: %+v", n, st)
		require.Equal(t, 2, st.Inbound, "node %d: %+v", n, st)
		require.Greater(t, st.Streams, 4, "node %d: %+v", n, st)
	}
}

func TestGroups_LosingOneNodeLeavesEveryGroupServing(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	c.Stop(1)
	for g := kvd.GroupID(1); g <= 3; g++ {
		c.Leader(g) // every group elects among the two survivors
	}
	m := c.Node(0).Map()
	seen := map[kvd.GroupID]bool{}
	for i := 0; len(seen) < 3 || i < 30; i++ {
		k := fmt.Sprintf("after-%d", i)
		gid, _ := m.GroupOf(kvd.Slot(k))
		seen[gid] = true
		node := []int{0, 2}[i%2]
		resp := httpPut(t, c.URL(node), k, "v")
		require.Equal(t, 200, resp.StatusCode, "write to group %d via node %d", gid, node)
		status, body, _ := httpGet(t, c.URL(2-node)+"/v1/kv/"+k)
		require.Equal(t, 200, status)
		require.Equal(t, "v", body)
	}
	status, _, _ := httpGet(t, c.URL(0)+"/v1/kv?limit=1000")
	require.Equal(t, 200, status)
}
