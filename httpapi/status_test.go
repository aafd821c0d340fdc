package httpapi_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
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

	var groupRequests uint64
	for _, n := range all.Nodes {
		for _, g := range n.Status.Groups {
			require.NotNil(t, g.Traffic, "group %d on %s", g.Group, n.Node)
			require.Positive(t, g.DiskBytes, "group %d on %s", g.Group, n.Node)
			groupRequests += g.Traffic.Requests
		}
	}
	require.GreaterOrEqual(t, groupRequests, uint64(20), "each put counted in its group")

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
	for _, q := range []string{"nodes=", "nodes=all&nodes=xyz"} {
		r = do(t, "GET", c.URL(leader)+"/v1/status?"+q, nil)
		require.Equal(t, 400, r.Status, q)
		r = do(t, "GET", c.URL(leader)+"/v1/events?"+q, nil)
		require.Equal(t, 400, r.Status, q)
	}
}

// GET /v1/events?nodes=all merges every node's events, the newest first:
// each group's leader says it became leader, a leadership transfer adds
// its new leader's event, and the map changes a node made (a slot move)
// are there with their epoch.
func TestAPI_EventsOfAllNodes(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	events := func() api.Events {
		t.Helper()
		var ev api.Events
		r := do(t, "GET", c.URL(0)+"/v1/events?nodes=all", nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.NoError(t, json.Unmarshal(r.Body, &ev))
		for i := 1; i < len(ev.Events); i++ {
			require.False(t, ev.Events[i].Time.After(ev.Events[i-1].Time), "the newest first")
		}
		return ev
	}
	has := func(ev api.Events, kind, text string) bool {
		for _, e := range ev.Events {
			if e.Kind == kind && strings.Contains(e.Text, text) {
				return true
			}
		}
		return false
	}
	for g := 1; g <= 2; g++ {
		l := testcluster.NodeID(c.Leader(kvd.GroupID(g)))
		require.Eventually(t, func() bool {
			return has(events(), "leader", fmt.Sprintf("group %d: %s became leader", g, l))
		}, 10*time.Second, 50*time.Millisecond)
	}
	old := c.Leader(1)
	to := testcluster.NodeID((old + 1) % 3)
	r := do(t, "POST", c.URL(0)+"/v1/admin/groups/1/leader?wait=10s", []byte(`{"node":"`+to+`"}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.Eventually(t, func() bool { return has(events(), "leader", "group 1: "+to+" became leader") }, 10*time.Second, 50*time.Millisecond)

	r = do(t, "POST", c.URL(0)+"/v1/admin/moves", []byte(`{"slots":[[0,3]],"to":2}`))
	require.Contains(t, []int{200, 202}, r.Status, "%s", r.Body)
	require.Eventually(t, func() bool { return has(events(), "map", "map epoch") }, 20*time.Second, 100*time.Millisecond)

	r = do(t, "GET", c.URL(0)+"/v1/events?nodes=every", nil)
	require.Equal(t, 400, r.Status)
}

// A GET of a key with a TTL says when it ends (X-Kvd-Expires), on every
// node, the leader's answer forwarded too; a key without one has no such
// header.
func TestAPI_GetSaysWhenATTLEnds(t *testing.T) {
	c := testcluster.New(t, 3, 1)
	before := time.Now()
	r := do(t, "PUT", c.URL(0)+"/v1/kv/ttl?ttl=1h", []byte("v"))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	for i := range 3 {
		r = do(t, "GET", c.URL(i)+"/v1/kv/ttl", nil)
		require.Equal(t, 200, r.Status)
		exp, err := time.Parse(time.RFC3339Nano, r.Header.Get(api.HeaderExpires))
		require.NoError(t, err, "node %d: header %q", i, r.Header.Get(api.HeaderExpires))
		require.WithinDuration(t, before.Add(time.Hour), exp, time.Minute)
	}
	r = do(t, "PUT", c.URL(0)+"/v1/kv/ttl", []byte("v")) // permanent again
	require.Equal(t, 200, r.Status)
	r = do(t, "GET", c.URL(0)+"/v1/kv/ttl", nil)
	require.Equal(t, 200, r.Status)
	require.Empty(t, r.Header.Get(api.HeaderExpires))
}
