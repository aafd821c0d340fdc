package client_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
)

// adminRequest is what a fake node saw of an admin request.
type adminRequest struct {
	Method string
	Path   string // as sent, escaped
	Query  string
	Body   string
	// ContentLength is the request's, -1 for a chunked body.
	ContentLength int64
}

// fakeNode serves a fixed cluster map and answers /v1/admin/ requests
// with AdminFunc, recording them. It stands in for the server, whose
// admin handlers are tested with the server.
type fakeNode struct {
	id  string
	srv *httptest.Server
	cl  *fakeMap

	// AdminFunc answers an admin request; nil answers 500.
	AdminFunc func(w http.ResponseWriter, r adminRequest)

	// mu protects seen.
	mu   sync.Mutex
	seen []adminRequest
}

// fakeMap is the cluster map the fake nodes serve.
type fakeMap struct {
	// mu protects cl.
	mu sync.Mutex
	cl api.Cluster
}

func (m *fakeMap) get() api.Cluster {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cl
}

func (m *fakeMap) set(cl api.Cluster) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cl = cl
}

func (f *fakeNode) requests() []adminRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]adminRequest(nil), f.seen...)
}

// fakeCluster starts one fake node per id, all serving the same map: one
// group of every node, owning every slot, led by the first.
func fakeCluster(t *testing.T, ids ...string) []*fakeNode {
	t.Helper()
	var cl api.Cluster
	m := &fakeMap{}
	nodes := make([]*fakeNode, len(ids))
	for i, id := range ids {
		f := &fakeNode{id: id, cl: m}
		f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/cluster" {
				answer(w, http.StatusOK, m.get())
				return
			}
			b, _ := io.ReadAll(r.Body)
			ar := adminRequest{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, Body: string(b), ContentLength: r.ContentLength}
			f.mu.Lock()
			f.seen = append(f.seen, ar)
			f.mu.Unlock()
			if f.AdminFunc == nil {
				answer(w, http.StatusInternalServerError, api.Error{Error: api.ErrorDetail{Code: api.CodeInternal, Message: "no answer set"}})
				return
			}
			f.AdminFunc(w, ar)
		}))
		t.Cleanup(f.srv.Close)
		nodes[i] = f
		addr := strings.TrimPrefix(f.srv.URL, "http://")
		cl.Nodes = append(cl.Nodes, api.Node{ID: id, HTTP: addr, Raft: addr, State: "active"})
	}
	cl.Epoch = 1
	cl.Replicas = len(ids)
	cl.Groups = []api.Group{{ID: 1, Members: ids, Learners: []string{}, Leader: ids[0], Slots: [][2]int{{0, kvd.SlotCount - 1}}}}
	m.set(cl)
	return nodes
}

func answer(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

func fakeClient(t *testing.T, seed *fakeNode) *client.Client {
	t.Helper()
	cfg := client.DefaultConfig(seed.srv.URL)
	cfg.Timeout = 5 * time.Second
	cl, err := client.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestClient_Admin_RequestShapes(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(*client.Client) (any, error)
		// want is the request the node must see (Query "" for none).
		want adminRequest
		// wait marks a change the node is told how long to wait for.
		wait   bool
		status int
		answer any
	}{
		{
			name: "add node",
			call: func(c *client.Client) (any, error) {
				return c.AddNode(ctx, api.NodeRequest{ID: "n4", HTTP: "10.0.0.4:7070", Raft: "10.0.0.4:7071"})
			},
			want:   adminRequest{Method: "POST", Path: "/v1/admin/nodes", Body: `{"id":"n4","http":"10.0.0.4:7070","raft":"10.0.0.4:7071"}`},
			status: 200,
			answer: api.NodeChange{Node: api.Node{ID: "n4", HTTP: "10.0.0.4:7070", Raft: "10.0.0.4:7071", State: "joining"}, State: api.ChangeDone, Epoch: 1},
		},
		{
			name:   "remove node",
			call:   func(c *client.Client) (any, error) { return c.RemoveNode(ctx, "n4", false) },
			want:   adminRequest{Method: "DELETE", Path: "/v1/admin/nodes/n4"},
			status: 200,
			answer: api.NodeChange{Node: api.Node{ID: "n4"}, State: api.ChangeDone, Epoch: 1},
		},
		{
			name:   "remove node, forced, leaving",
			call:   func(c *client.Client) (any, error) { return c.RemoveNode(ctx, "n3", true) },
			want:   adminRequest{Method: "DELETE", Path: "/v1/admin/nodes/n3", Query: "force=true"},
			status: 202,
			answer: api.NodeChange{Node: api.Node{ID: "n3", State: "leaving"}, State: api.ChangeInProgress, Epoch: 1, Groups: []uint64{1, 2}},
		},
		{
			name:   "remove node, id escaped",
			call:   func(c *client.Client) (any, error) { return c.RemoveNode(ctx, "a/b c?", false) },
			want:   adminRequest{Method: "DELETE", Path: "/v1/admin/nodes/a%2Fb%20c%3F"},
			status: 200,
			answer: api.NodeChange{Node: api.Node{ID: "a/b c?"}, State: api.ChangeDone, Epoch: 1},
		},
		{
			name:   "add member, done",
			call:   func(c *client.Client) (any, error) { return c.AddMember(ctx, 2, "n4") },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/groups/2/members", Body: `{"node":"n4"}`},
			status: 200,
			answer: api.MembershipChange{Group: 2, Node: "n4", State: api.ChangeDone, Epoch: 1, Members: []string{"n1", "n2", "n4"}, Learners: []string{}},
		},
		{
			name:   "add member, in progress",
			call:   func(c *client.Client) (any, error) { return c.AddMember(ctx, 2, "n4") },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/groups/2/members", Body: `{"node":"n4"}`},
			status: 202,
			answer: api.MembershipChange{Group: 2, Node: "n4", State: api.ChangeInProgress, Epoch: 1, Members: []string{"n1", "n2"}, Learners: []string{"n4"}, Message: "catching up"},
		},
		{
			name:   "remove member",
			call:   func(c *client.Client) (any, error) { return c.RemoveMember(ctx, 3, "n/2") },
			want:   adminRequest{Method: "DELETE", Path: "/v1/admin/groups/3/members/n%2F2"},
			status: 202,
			answer: api.MembershipChange{Group: 3, Node: "n/2", State: api.ChangeInProgress, Epoch: 1, Members: []string{"n1", "n/2"}, Learners: []string{}},
		},
		{
			name:   "transfer leader",
			call:   func(c *client.Client) (any, error) { return c.TransferLeader(ctx, 1, "n2") },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/groups/1/leader", Body: `{"node":"n2"}`},
			status: 200,
			answer: api.MembershipChange{Group: 1, Node: "n2", State: api.ChangeDone, Epoch: 1, Members: []string{"n1", "n2"}, Learners: []string{}, Leader: "n2"},
		},
		{
			name: "create group on nodes",
			call: func(c *client.Client) (any, error) {
				return c.CreateGroup(ctx, api.GroupRequest{Members: []string{"n4", "n5", "n6"}})
			},
			want:   adminRequest{Method: "POST", Path: "/v1/admin/groups", Body: `{"members":["n4","n5","n6"]}`},
			wait:   true,
			status: 200,
			answer: api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 1, Members: []string{"n4", "n5", "n6"}, Leader: "n4"},
		},
		{
			name:   "create group, named, nodes chosen by the cluster",
			call:   func(c *client.Client) (any, error) { return c.CreateGroup(ctx, api.GroupRequest{ID: 7}) },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/groups", Body: `{"id":7}`},
			wait:   true,
			status: 202,
			answer: api.GroupChange{Group: 7, State: api.ChangeInProgress, Epoch: 1, Members: []string{"n1", "n2", "n3"}, Message: "electing a leader"},
		},
		{
			name:   "delete group",
			call:   func(c *client.Client) (any, error) { return c.DeleteGroup(ctx, 4) },
			want:   adminRequest{Method: "DELETE", Path: "/v1/admin/groups/4"},
			wait:   true,
			status: 200,
			answer: api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 1},
		},
		{
			name:   "list moves",
			call:   func(c *client.Client) (any, error) { return c.Moves(ctx) },
			want:   adminRequest{Method: "GET", Path: "/v1/admin/moves"},
			status: 200,
			answer: api.MoveList{Epoch: 1, Moves: []api.MoveInfo{
				{ID: "m1", Slots: [][2]int{{0, 99}}, From: 1, To: 2, State: "copying", Attempt: 1, Started: "2025-01-02T03:04:05Z", Updated: "2025-01-02T03:04:06Z",
					Progress: &api.MoveProgress{KeysCopied: 1200, BytesCopied: 1 << 20, CatchUpRounds: 0}},
				{ID: "m0", Slots: [][2]int{{200, 200}, {300, 310}}, From: 2, To: 1, State: "failed", Attempt: 3, Error: "group 2 has no leader"},
			}},
		},
		{
			name:   "rebalance, dry run",
			call:   func(c *client.Client) (any, error) { return c.Rebalance(ctx, true) },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/rebalance", Body: `{"dry_run":true}`},
			status: 200,
			answer: api.RebalancePlan{DryRun: true, Epoch: 1,
				Before: []api.GroupLoad{{Group: 1, Slots: 1024, Keys: 100, Bytes: 4000}, {Group: 2}},
				After:  []api.GroupLoad{{Group: 1, Slots: 512, Keys: 50, Bytes: 2000}, {Group: 2, Slots: 512, Keys: 50, Bytes: 2000}},
				Moves:  []api.PlannedMove{{Slots: [][2]int{{512, 1023}}, From: 1, To: 2, Keys: 50, Bytes: 2000}}},
		},
		{
			name:   "rebalance",
			call:   func(c *client.Client) (any, error) { return c.Rebalance(ctx, false) },
			want:   adminRequest{Method: "POST", Path: "/v1/admin/rebalance", Body: `{"dry_run":false}`},
			status: 200,
			answer: api.RebalancePlan{Epoch: 1, Moves: []api.PlannedMove{{ID: "r1", Slots: [][2]int{{512, 1023}}, From: 1, To: 2}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := fakeCluster(t, "n1")
			nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, tc.status, tc.answer) }
			c := fakeClient(t, nodes[0])
			got, err := tc.call(c)
			require.NoError(t, err)
			require.Equal(t, tc.answer, got)
			seen := nodes[0].requests()
			require.Len(t, seen, 1)
			r := seen[0]
			q, err := url.ParseQuery(r.Query)
			require.NoError(t, err)
			if strings.Contains(tc.want.Path, "/members") || tc.want.Method == "DELETE" || tc.wait {
				// The node is told how long it may wait before answering
				// 202: less than the call has left.
				d, err := time.ParseDuration(q.Get("wait"))
				require.NoError(t, err, "query %q", r.Query)
				require.Greater(t, d, time.Second)
				require.Less(t, d, 5*time.Second)
				q.Del("wait")
			}
			r.Query = q.Encode()
			require.Equal(t, tc.want.Method, r.Method)
			require.Equal(t, tc.want.Path, r.Path)
			require.Equal(t, tc.want.Query, r.Query)
			if tc.want.Body == "" {
				require.Empty(t, r.Body)
			} else {
				require.JSONEq(t, tc.want.Body, r.Body)
			}
		})
	}
}

func TestClient_Admin_AcceptedWithoutStateIsInProgress(t *testing.T) {
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusAccepted, map[string]any{"group": 1, "node": "n4", "epoch": 1})
	}
	c := fakeClient(t, nodes[0])
	ch, err := c.AddMember(context.Background(), 1, "n4")
	require.NoError(t, err)
	require.Equal(t, api.ChangeInProgress, ch.State)

	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusOK, map[string]any{"node": map[string]string{"id": "n4"}, "epoch": 1})
	}
	nc, err := c.AddNode(context.Background(), api.NodeRequest{ID: "n4", HTTP: "h:1", Raft: "h:2"})
	require.NoError(t, err)
	require.Equal(t, api.ChangeDone, nc.State)
}

func TestClient_Admin_ErrorsMapToSentinels(t *testing.T) {
	tests := []struct {
		status int
		code   string
		want   error
	}{
		{http.StatusConflict, api.CodeConflict, kvd.ErrConflict},
		{http.StatusNotFound, api.CodeNotFound, kvd.ErrNotFound},
		{http.StatusBadRequest, api.CodeInvalidRequest, kvd.ErrInvalid},
		{http.StatusTooManyRequests, api.CodeOverloaded, kvd.ErrOverloaded},
		{http.StatusGatewayTimeout, api.CodeUnknownOutcome, kvd.ErrUnknownOutcome},
		// A change answered with another 5xx may have been made.
		{http.StatusInternalServerError, api.CodeInternal, kvd.ErrUnknownOutcome},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			for _, n := range nodes {
				n.AdminFunc = func(w http.ResponseWriter, r adminRequest) {
					answer(w, tc.status, api.Error{Error: api.ErrorDetail{Code: tc.code, Message: "n4 already hosts group 1"}})
				}
			}
			c := fakeClient(t, nodes[0])
			_, err := c.AddMember(context.Background(), 1, "n4")
			require.ErrorIs(t, err, tc.want)
			var ce *client.Error
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.status, ce.Status)
			require.Equal(t, "n4 already hosts group 1", ce.Message)
			require.Len(t, nodes[0].requests(), 1)
			require.Empty(t, nodes[1].requests(), "an answer other than 503 is final")
		})
	}
}

func TestClient_Admin_MovesOnOnlyWhenNothingWasDone(t *testing.T) {
	ctx := context.Background()
	done := func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusOK, api.MembershipChange{Group: 1, Node: "n9", State: api.ChangeDone, Epoch: 1})
	}

	t.Run("503 unavailable", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			answer(w, http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}})
		}
		nodes[1].AdminFunc = done
		c := fakeClient(t, nodes[0])
		_, err := c.RemoveMember(ctx, 1, "n9")
		require.NoError(t, err)
		require.Len(t, nodes[0].requests(), 1)
		require.Len(t, nodes[1].requests(), 1)
	})

	t.Run("every node 503", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		for _, n := range nodes {
			n.AdminFunc = func(w http.ResponseWriter, r adminRequest) {
				answer(w, http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}})
			}
		}
		c := fakeClient(t, nodes[0])
		_, err := c.TransferLeader(ctx, 1, "n2")
		require.ErrorIs(t, err, kvd.ErrUnavailable)
		require.NotErrorIs(t, err, kvd.ErrUnknownOutcome)
	})

	t.Run("connection refused", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[1].AdminFunc = done
		c := fakeClient(t, nodes[1])
		nodes[0].srv.Close() // the group's leader, asked first
		_, err := c.AddMember(ctx, 1, "n9")
		require.NoError(t, err)
		require.Len(t, nodes[1].requests(), 1)
	})

	t.Run("no answer after sending", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			// The request arrived; the connection dies before an answer.
			conn, _, err := w.(http.Hijacker).Hijack()
			require.NoError(t, err)
			conn.Close()
		}
		nodes[1].AdminFunc = done
		c := fakeClient(t, nodes[0])
		_, err := c.AddMember(ctx, 1, "n9")
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
		require.Len(t, nodes[0].requests(), 1)
		require.Empty(t, nodes[1].requests(), "a change that may have been made is not sent again")
	})

	t.Run("reads move on after any failure", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}
		nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, api.TxnList{}) }
		c := fakeClient(t, nodes[0])
		_, err := c.Txns(ctx)
		require.NoError(t, err)
		require.Len(t, nodes[1].requests(), 1)
	})
}

func TestClient_Admin_WaitIsAtMostAMinute(t *testing.T) {
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusAccepted, api.MembershipChange{Group: 1, Node: "n4", State: api.ChangeInProgress, Epoch: 1})
	}
	c := fakeClient(t, nodes[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := c.AddMember(ctx, 1, "n4")
	require.NoError(t, err)
	require.Equal(t, "wait=1m0s", nodes[0].requests()[0].Query, "a node refuses a longer wait")
}

func TestClient_Admin_NewerEpochRefreshesTheMap(t *testing.T) {
	nodes := fakeCluster(t, "n1")
	c := fakeClient(t, nodes[0])
	require.Equal(t, uint64(1), c.CachedMap().Epoch)
	// The change moves the map to epoch 2.
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		cl := nodes[0].cl.get()
		cl.Epoch = 2
		cl.Nodes = append(cl.Nodes, api.Node{ID: "n4", HTTP: "127.0.0.1:1", Raft: "127.0.0.1:2", State: "joining"})
		nodes[0].cl.set(cl)
		answer(w, http.StatusOK, api.NodeChange{Node: api.Node{ID: "n4", State: "joining"}, State: api.ChangeDone, Epoch: 2})
	}
	_, err := c.AddNode(context.Background(), api.NodeRequest{ID: "n4", HTTP: "127.0.0.1:1", Raft: "127.0.0.1:2"})
	require.NoError(t, err)
	m := c.CachedMap()
	require.Equal(t, uint64(2), m.Epoch, "the client refreshed its map")
	require.Len(t, m.Nodes, 2)
}

func TestClient_StartMove(t *testing.T) {
	ctx := context.Background()
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		var req api.MoveRequest
		require.NoError(t, json.Unmarshal([]byte(r.Body), &req))
		answer(w, http.StatusAccepted, api.MoveStarted{ID: req.ID, IDs: []string{req.ID}, Epoch: 1})
	}
	c := fakeClient(t, nodes[0])

	// Without an id, the client names the move.
	st, err := c.StartMove(ctx, api.MoveRequest{Slots: [][2]int{{0, 99}, {200, 200}}, To: 2})
	require.NoError(t, err)
	require.Regexp(t, `^[0-9a-f]{32}$`, st.ID)
	require.Equal(t, []string{st.ID}, st.IDs)
	require.Equal(t, uint64(1), st.Epoch)
	seen := nodes[0].requests()
	require.Len(t, seen, 1)
	require.Equal(t, "POST", seen[0].Method)
	require.Equal(t, "/v1/admin/moves", seen[0].Path)
	require.Empty(t, seen[0].Query, "a move is answered once recorded: no wait")
	require.JSONEq(t, `{"slots":[[0,99],[200,200]],"to":2,"id":"`+st.ID+`"}`, seen[0].Body)

	st2, err := c.StartMove(ctx, api.MoveRequest{Slots: [][2]int{{0, 99}}, To: 2})
	require.NoError(t, err)
	require.NotEqual(t, st.ID, st2.ID, "every move its own id")

	// An id given is kept.
	st, err = c.StartMove(ctx, api.MoveRequest{Slots: [][2]int{{5, 5}}, To: 3, ID: "mine"})
	require.NoError(t, err)
	require.Equal(t, "mine", st.ID)
	require.JSONEq(t, `{"slots":[[5,5]],"to":3,"id":"mine"}`, nodes[0].requests()[2].Body)

	// Slots of several owners make several moves.
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusAccepted, api.MoveStarted{ID: "mine", IDs: []string{"mine", "mine-2"}, Epoch: 1})
	}
	st, err = c.StartMove(ctx, api.MoveRequest{Slots: [][2]int{{0, 1023}}, To: 3, ID: "mine"})
	require.NoError(t, err)
	require.Equal(t, api.MoveStarted{ID: "mine", IDs: []string{"mine", "mine-2"}, Epoch: 1}, st)
}

func TestClient_StartMove_ErrorsMapToSentinels(t *testing.T) {
	tests := []struct {
		status int
		code   string
		want   error
	}{
		{http.StatusBadRequest, api.CodeInvalidRequest, kvd.ErrInvalid},
		{http.StatusNotFound, api.CodeNotFound, kvd.ErrNotFound},
		{http.StatusConflict, api.CodeConflict, kvd.ErrConflict},
		{http.StatusGatewayTimeout, api.CodeUnknownOutcome, kvd.ErrUnknownOutcome},
		// The move may have started, though a repeat would be harmless.
		{http.StatusInternalServerError, api.CodeInternal, kvd.ErrUnknownOutcome},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			for _, n := range nodes {
				n.AdminFunc = func(w http.ResponseWriter, r adminRequest) {
					answer(w, tc.status, api.Error{Error: api.ErrorDetail{Code: tc.code, Message: "slot 7 is already moving"}})
				}
			}
			c := fakeClient(t, nodes[0])
			st, err := c.StartMove(context.Background(), api.MoveRequest{Slots: [][2]int{{0, 9}}, To: 2})
			require.ErrorIs(t, err, tc.want)
			var ce *client.Error
			require.ErrorAs(t, err, &ce)
			require.Equal(t, "slot 7 is already moving", ce.Message)
			require.NotEmpty(t, st.ID, "the id to look the move up with")
			require.Contains(t, err.Error(), st.ID)
			require.Contains(t, err.Error(), "0-9")
			require.Len(t, nodes[0].requests(), 1)
			require.Empty(t, nodes[1].requests(), "an answer other than 503 is final")
		})
	}
}

// hangUp is an admin answer that drops the connection after the request
// arrived: whether it was acted on is unknown.
func hangUp(w http.ResponseWriter, r adminRequest) {
	conn, _, _ := w.(http.Hijacker).Hijack()
	conn.Close()
}

func TestClient_StartMove_RepeatsWithTheSameID(t *testing.T) {
	nodes := fakeCluster(t, "n1", "n2")
	nodes[0].AdminFunc = hangUp
	nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusAccepted, map[string]any{"id": "x", "epoch": 1})
	}
	c := fakeClient(t, nodes[0])
	st, err := c.StartMove(context.Background(), api.MoveRequest{Slots: [][2]int{{0, 99}}, To: 2})
	require.NoError(t, err, "a named move is safe to send again")
	require.Equal(t, []string{"x"}, st.IDs, "an answer without ids names one move")
	first, second := nodes[0].requests(), nodes[1].requests()
	require.Len(t, first, 1)
	require.Len(t, second, 1)
	require.Equal(t, first[0].Body, second[0].Body, "the repeat carries the same id")

	t.Run("no node answers", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		nodes[0].AdminFunc = hangUp
		nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			answer(w, http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}})
		}
		c := fakeClient(t, nodes[0])
		st, err := c.StartMove(context.Background(), api.MoveRequest{Slots: [][2]int{{0, 99}}, To: 2, ID: "m7"})
		require.ErrorIs(t, err, kvd.ErrUnknownOutcome, "the first node may have started it")
		require.NotErrorIs(t, err, kvd.ErrUnavailable, "which promises nothing was done")
		require.Equal(t, "m7", st.ID)
		require.Len(t, nodes[1].requests(), 1)
	})

	t.Run("every node refuses at once", func(t *testing.T) {
		nodes := fakeCluster(t, "n1", "n2")
		for _, n := range nodes {
			n.AdminFunc = func(w http.ResponseWriter, r adminRequest) {
				answer(w, http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}})
			}
		}
		c := fakeClient(t, nodes[0])
		_, err := c.StartMove(context.Background(), api.MoveRequest{Slots: [][2]int{{0, 99}}, To: 2})
		require.ErrorIs(t, err, kvd.ErrUnavailable)
		require.NotErrorIs(t, err, kvd.ErrUnknownOutcome)
	})
}

func TestClient_CreateGroupAndRebalance_RepeatOnlyWhenHarmless(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(*client.Client) error
		// repeated: sent on to the second node after the first hung up.
		repeated bool
	}{
		{"create group, named", func(c *client.Client) error {
			_, err := c.CreateGroup(ctx, api.GroupRequest{ID: 4, Members: []string{"n1"}})
			return err
		}, true},
		{"create group, unnamed", func(c *client.Client) error {
			_, err := c.CreateGroup(ctx, api.GroupRequest{Members: []string{"n1"}})
			return err
		}, false},
		{"delete group", func(c *client.Client) error { _, err := c.DeleteGroup(ctx, 4); return err }, false},
		{"rebalance, dry run", func(c *client.Client) error { _, err := c.Rebalance(ctx, true); return err }, true},
		{"rebalance", func(c *client.Client) error { _, err := c.Rebalance(ctx, false); return err }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			nodes[0].AdminFunc = hangUp
			nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { answer(w, http.StatusOK, map[string]any{"epoch": 1}) }
			c := fakeClient(t, nodes[0])
			err := tc.call(c)
			require.Len(t, nodes[0].requests(), 1)
			if tc.repeated {
				require.NoError(t, err)
				require.Len(t, nodes[1].requests(), 1)
				return
			}
			require.ErrorIs(t, err, kvd.ErrUnknownOutcome)
			require.Empty(t, nodes[1].requests(), "a change that may have been made is not sent again")
		})
	}
}

func TestClient_DeleteGroup_Refusals(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   error
	}{
		{http.StatusConflict, api.CodeConflict, kvd.ErrConflict},
		{http.StatusNotFound, api.CodeNotFound, kvd.ErrNotFound},
	} {
		nodes := fakeCluster(t, "n1")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			answer(w, tc.status, api.Error{Error: api.ErrorDetail{Code: tc.code, Message: "group 3 owns 100 slots"}})
		}
		c := fakeClient(t, nodes[0])
		_, err := c.DeleteGroup(context.Background(), 3)
		require.ErrorIs(t, err, tc.want)
		require.Contains(t, err.Error(), "delete group 3")
	}
}

// movesInTurn answers GET /v1/admin/moves with the lists in turn, the
// last one for ever after.
func movesInTurn(t *testing.T, lists ...any) func(w http.ResponseWriter, r adminRequest) {
	var mu sync.Mutex
	n := 0
	return func(w http.ResponseWriter, r adminRequest) {
		if r.Method != "GET" || r.Path != "/v1/admin/moves" {
			t.Errorf("unexpected %s %s", r.Method, r.Path)
		}
		mu.Lock()
		l := lists[min(n, len(lists)-1)]
		n++
		mu.Unlock()
		if e, ok := l.(api.Error); ok {
			answer(w, http.StatusServiceUnavailable, e)
			return
		}
		answer(w, http.StatusOK, l)
	}
}

func TestClient_WaitMove(t *testing.T) {
	mv := func(state string) api.MoveInfo {
		return api.MoveInfo{ID: "m1", Slots: [][2]int{{0, 99}}, From: 1, To: 2, State: state, Attempt: 1}
	}
	other := api.MoveInfo{ID: "m0", Slots: [][2]int{{500, 500}}, From: 2, To: 1, State: "done"}
	list := func(mvs ...api.MoveInfo) api.MoveList { return api.MoveList{Epoch: 3, Moves: mvs} }

	t.Run("done", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		copying := mv("copying")
		copying.Progress = &api.MoveProgress{KeysCopied: 10, BytesCopied: 100}
		nodes[0].AdminFunc = movesInTurn(t,
			list(other, mv("pending")), list(other, copying),
			api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}}, // retried
			list(other, mv("handing_off")), list(other, mv("done")))
		c := fakeClient(t, nodes[0])
		start := time.Now()
		info, err := c.WaitMove(context.Background(), "m1")
		require.NoError(t, err)
		require.Equal(t, mv("done"), info)
		require.Len(t, nodes[0].requests(), 5)
		require.GreaterOrEqual(t, time.Since(start), 4*200*time.Millisecond, "polled every 200 ms")
	})

	t.Run("failed", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		failed := mv("failed")
		failed.Error = "group 2 refused the copy: disk full"
		nodes[0].AdminFunc = movesInTurn(t, list(mv("copying")), list(failed))
		c := fakeClient(t, nodes[0])
		info, err := c.WaitMove(context.Background(), "m1")
		require.ErrorIs(t, err, kvd.ErrConflict)
		require.Contains(t, err.Error(), "group 2 refused the copy: disk full")
		require.Equal(t, failed, info)
	})

	t.Run("ctx ends first", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		nodes[0].AdminFunc = movesInTurn(t, list(mv("catching_up")))
		c := fakeClient(t, nodes[0])
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		info, err := c.WaitMove(ctx, "m1")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Contains(t, err.Error(), "still catching_up")
		require.Equal(t, mv("catching_up"), info, "the move as last seen")
	})

	t.Run("not listed", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		nodes[0].AdminFunc = movesInTurn(t, list(other))
		c := fakeClient(t, nodes[0])
		_, err := c.WaitMove(context.Background(), "m1")
		require.ErrorIs(t, err, kvd.ErrNotFound)
		require.Greater(t, len(nodes[0].requests()), 2, "a node's map may lag: the move is looked for a while")
	})

	t.Run("listed late", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		nodes[0].AdminFunc = movesInTurn(t, list(other), list(other), list(mv("done")))
		c := fakeClient(t, nodes[0])
		info, err := c.WaitMove(context.Background(), "m1")
		require.NoError(t, err)
		require.Equal(t, "done", info.State)
	})

	t.Run("a refusal ends the wait", func(t *testing.T) {
		nodes := fakeCluster(t, "n1")
		nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
			answer(w, http.StatusForbidden, api.Error{Error: api.ErrorDetail{Code: api.CodeForbidden, Message: "no"}})
		}
		c := fakeClient(t, nodes[0])
		_, err := c.WaitMove(context.Background(), "m1")
		require.ErrorIs(t, err, kvd.ErrForbidden)
		require.Len(t, nodes[0].requests(), 1)
	})
}
