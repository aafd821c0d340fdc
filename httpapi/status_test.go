package httpapi_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// GET /v1/status?nodes=all gathers every node's status at once, each
// with the client requests it served and their latencies; a stopped node
// is listed as down with the reason. Other values of nodes are refused.
func TestAPI_StatusOfAllNodes(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	leader := c.Leader(1)
	for i := range 20 {
		r := do(t, "PUT", c.URL(leader)+fmt.Sprintf("/v1/kv/st%d", i), []byte("v"))
		require.Equal(t, 200, r.Status, "%s", r.Body)
	}
	var all api.NodesStatus
	r := do(t, "GET", c.URL(leader)+"/v1/status?nodes=all", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.NoError(t, json.Unmarshal(r.Body, &all))
	require.Len(t, all.Nodes, 3)
	for _, n := range all.Nodes {
		require.True(t, n.Up, "%s: %s", n.Node, n.Error)
		require.NotNil(t, n.Status)
		require.Equal(t, n.Node, n.Status.Node)
		require.NotEmpty(t, n.Status.Groups)
		require.NotNil(t, n.Status.Traffic)
		tr := n.Status.Traffic
		require.Len(t, tr.LatencyCounts, len(tr.LatencyBounds))
		if n.Node == testcluster.NodeID(leader) {
			require.GreaterOrEqual(t, tr.Requests, uint64(20), "the puts are counted")
			require.LessOrEqual(t, tr.LatencyCounts[len(tr.LatencyCounts)-1], tr.Requests)
			require.Positive(t, tr.LatencyCounts[len(tr.LatencyCounts)-1])
		}
	}

	down := (leader + 1) % 3
	c.Stop(down)
	start := time.Now()
	r = do(t, "GET", c.URL(leader)+"/v1/status?nodes=all", nil)
	require.Equal(t, 200, r.Status)
	require.Less(t, time.Since(start), 5*time.Second, "a dead node is waited for a bounded time")
	require.NoError(t, json.Unmarshal(r.Body, &all))
	for _, n := range all.Nodes {
		if n.Node == testcluster.NodeID(down) {
			require.False(t, n.Up)
			require.NotEmpty(t, n.Error)
		} else {
			require.True(t, n.Up, "%s: %s", n.Node, n.Error)
		}
	}

	r = do(t, "GET", c.URL(leader)+"/v1/status?nodes=some", nil)
	require.Equal(t, 400, r.Status)
	require.Contains(t, string(r.Body), `"code"`)
}
