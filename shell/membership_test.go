package shell

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
)

func TestPrintCluster_ShowsStatesLearnersAndReplicas(t *testing.T) {
	var out bytes.Buffer
	printCluster(&out, api.Cluster{
		Epoch:    7,
		Replicas: 3,
		Nodes: []api.Node{
			{ID: "n1", HTTP: "127.0.0.1:7001", Raft: "127.0.0.1:7101", State: "active"},
			{ID: "n4", HTTP: "127.0.0.1:7004", Raft: "127.0.0.1:7104", State: "joining"},
			{ID: "n5", HTTP: "127.0.0.1:7005", Raft: "127.0.0.1:7105"},
		},
		Groups: []api.Group{
			{ID: 1, Members: []string{"n1"}, Learners: []string{"n4"}, Leader: "n1", Slots: [][2]int{{0, 511}}},
			{ID: 2, Members: []string{"n1"}, Learners: []string{}, Slots: [][2]int{{512, 1023}}},
			{ID: 3, Members: []string{"n1"}},
		},
	})
	want := `epoch 7, 3 nodes, 3 groups of 3 replicas

NODE  HTTP            RAFT            STATE
n1    127.0.0.1:7001  127.0.0.1:7101  active
n4    127.0.0.1:7004  127.0.0.1:7104  joining
n5    127.0.0.1:7005  127.0.0.1:7105  -

GROUP  LEADER  MEMBERS  LEARNERS  SLOTS
1      n1      n1       n4        0-511
2      (none)  n1       -         512-1023
3      (none)  n1       -         -
`
	require.Equal(t, want, out.String())

	out.Reset()
	printCluster(&out, api.Cluster{Epoch: 1})
	require.True(t, strings.HasPrefix(out.String(), "epoch 1, 0 nodes, 0 groups\n"), "no replication factor when the map has none: %q", out.String())
}

func TestPrintChanges(t *testing.T) {
	follow := `; it finishes on its own: follow it with "kvcli cluster"` + "\n"
	var out bytes.Buffer
	line := func(f func(io.Writer)) string {
		out.Reset()
		f(&out)
		return out.String()
	}
	tests := []struct {
		name, got, want string
	}{
		{"node added", line(func(w io.Writer) {
			printNodeChange(w, "add", api.NodeChange{Node: api.Node{ID: "n4"}, State: api.ChangeDone, Epoch: 5})
		}), "node n4 added (map epoch 5); it holds no replica yet: \"kvcli group add-member G n4\" adds one\n"},
		{"node removed", line(func(w io.Writer) {
			printNodeChange(w, "remove", api.NodeChange{Node: api.Node{ID: "n4"}, State: api.ChangeDone, Epoch: 9})
		}), "node n4 removed (map epoch 9)\n"},
		{"node leaving", line(func(w io.Writer) {
			printNodeChange(w, "remove", api.NodeChange{Node: api.Node{ID: "n3"}, State: api.ChangeInProgress, Epoch: 8, Groups: []uint64{1, 3}})
		}), "node n3 leaving: in progress (map epoch 8): its replicas of groups 1, 3 are being moved to other nodes, then it is removed" + follow},
		{"node leaving one group", line(func(w io.Writer) {
			printNodeChange(w, "remove", api.NodeChange{Node: api.Node{ID: "n3"}, State: api.ChangeInProgress, Epoch: 8, Groups: []uint64{2}})
		}), "node n3 leaving: in progress (map epoch 8): its replica of group 2 is being moved to other nodes, then it is removed" + follow},
		{"node leaving, groups unknown", line(func(w io.Writer) {
			printNodeChange(w, "remove", api.NodeChange{Node: api.Node{ID: "n3"}, State: api.ChangeInProgress, Epoch: 8, Message: "moving group 1 to n5 (see GET /v1/cluster)"})
		}), "node n3 leaving: in progress (map epoch 8): its replicas are being moved to other nodes, then it is removed" + follow},
		{"member added", line(func(w io.Writer) {
			printMembershipChange(w, "add-member", 2, "n4", api.MembershipChange{Group: 2, Node: "n4", State: api.ChangeDone, Epoch: 12, Members: []string{"n1", "n2", "n4"}})
		}), "n4 added to group 2, voting (map epoch 12); members n1,n2,n4\n"},
		{"member catching up", line(func(w io.Writer) {
			printMembershipChange(w, "add-member", 2, "n4", api.MembershipChange{Group: 2, Node: "n4", State: api.ChangeInProgress, Epoch: 11, Members: []string{"n1"}, Learners: []string{"n4"}})
		}), "adding n4 to group 2: in progress (map epoch 11): n4 is catching up as a learner and becomes a voter once it has" + follow},
		{"member removed", line(func(w io.Writer) {
			printMembershipChange(w, "remove-member", 2, "n3", api.MembershipChange{Group: 2, Node: "n3", State: api.ChangeDone, Epoch: 13, Members: []string{"n1", "n2"}, Learners: []string{"n4"}})
		}), "n3 removed from group 2 (map epoch 13); members n1,n2, learners n4\n"},
		{"member being removed", line(func(w io.Writer) {
			printMembershipChange(w, "remove-member", 2, "n3", api.MembershipChange{Group: 2, Node: "n3", State: api.ChangeInProgress, Epoch: 13, Message: "m"})
		}), "removing n3 from group 2: in progress (map epoch 13): the replica serves nothing any more and is being taken out of the group" + follow},
		{"leader", line(func(w io.Writer) {
			printMembershipChange(w, "leader", 1, "n2", api.MembershipChange{Group: 1, Node: "n2", State: api.ChangeDone, Leader: "n2"})
		}), "group 1: leadership handed to n2\n"},
		{"leader not known yet", line(func(w io.Writer) {
			printMembershipChange(w, "leader", 1, "n2", api.MembershipChange{Group: 1, Node: "n2", State: api.ChangeDone})
		}), "group 1: leadership handed to n2\n"},
		{"leader elsewhere", line(func(w io.Writer) {
			printMembershipChange(w, "leader", 1, "n2", api.MembershipChange{Group: 1, Node: "n2", State: api.ChangeDone, Leader: "n3"})
		}), "group 1: leadership handed to n2, but n3 leads it now\n"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, tc.got, tc.name)
	}
}

func TestMembershipCommands_UsageErrorsExitTwo(t *testing.T) {
	sh := New(nil, Options{}, strings.NewReader(""), io.Discard)
	for _, words := range [][]string{
		{"node"}, {"node", "frob"}, {"node", "add"}, {"node", "add", "n4", "127.0.0.1:7004"},
		{"node", "add", "n4", "127.0.0.1:7004", "127.0.0.1:7104", "extra"},
		{"node", "add", "n4", "http://127.0.0.1:7004", "127.0.0.1:7104"},
		{"node", "add", "n4", "127.0.0.1", "127.0.0.1:7104"},
		{"node", "add", "n4", "127.0.0.1:7004", ":7104"},
		{"node", "add", "", "127.0.0.1:7004", "127.0.0.1:7104"},
		{"node", "add", "n4", "127.0.0.1:7004", "127.0.0.1:7104", "--force"},
		{"node", "remove"}, {"node", "remove", "n1", "n2"}, {"node", "remove", "n1", "--now"},
		{"group"}, {"group", "split"}, {"group", "add-member"}, {"group", "add-member", "1"},
		{"group", "add-member", "one", "n4"}, {"group", "add-member", "0", "n4"}, {"group", "add-member", "-1", "n4"},
		{"group", "remove-member", "1", "n2", "n3"}, {"group", "leader", "1"}, {"group", "leader", "1", "n2", "--force"},
	} {
		err := sh.Exec(context.Background(), words, false)
		require.Equal(t, ExitUsage, ExitCode(err), "%q: %v", words, err)
		require.NotContains(t, Explain(err), "\n", "one line")
	}
}

func TestHelp_ExplainsMembershipCommands(t *testing.T) {
	var out bytes.Buffer
	sh := New(nil, Options{}, strings.NewReader(""), &out)
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "group"}, false))
	for _, want := range []string{usageAddMember, usageRemoveMember, usageLeader, "learner"} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "node"}, false))
	require.Contains(t, out.String(), "--force")
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help"}, false))
	require.Contains(t, out.String(), "node add ID HTTP-ADDR RAFT-ADDR")
	require.Contains(t, out.String(), "group add-member G NODE")
}

// fakeAdmin is a node that serves a fixed map and answers every admin
// request with answer's status and body (or answerTo's, for its method
// and path), recording the requests.
type fakeAdmin struct {
	srv *httptest.Server
	// mu protects status, body, routes and seen.
	mu     sync.Mutex
	status int
	body   any
	routes map[string]fakeAnswer
	seen   []string
}

// fakeAnswer is a fakeAdmin's answer to one method and path.
type fakeAnswer struct {
	status int
	body   any
}

func (f *fakeAdmin) answer(status int, body any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.body = status, body
}

// answerTo sets the answer to method and path, which answer does not
// change.
func (f *fakeAdmin) answerTo(method, path string, status int, body any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.routes == nil {
		f.routes = map[string]fakeAnswer{}
	}
	f.routes[method+" "+path] = fakeAnswer{status, body}
}

func (f *fakeAdmin) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func newFakeAdmin(t *testing.T) (*fakeAdmin, *client.Client) {
	t.Helper()
	f := &fakeAdmin{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := strings.TrimPrefix(f.srv.URL, "http://")
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/cluster" {
			json.NewEncoder(w).Encode(api.Cluster{Epoch: 4, Replicas: 2,
				Nodes: []api.Node{{ID: "n1", HTTP: addr, Raft: addr, State: "active"}, {ID: "n2", HTTP: "127.0.0.1:1", Raft: "127.0.0.1:2", State: "active"},
					{ID: "n3", HTTP: "127.0.0.1:3", Raft: "127.0.0.1:4", State: "joining"}},
				Groups: []api.Group{{ID: 1, Members: []string{"n1"}, Learners: []string{"n2"}, Leader: "n1", Slots: [][2]int{{0, kvd.SlotCount - 1}}}}})
			return
		}
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.seen = append(f.seen, fmt.Sprintf("%s %s %s", r.Method, r.URL.RequestURI(), bytes.TrimSpace(b)))
		status, body := f.status, f.body
		if a, ok := f.routes[r.Method+" "+r.URL.Path]; ok {
			status, body = a.status, a.body
		}
		f.mu.Unlock()
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(f.srv.Close)
	cfg := client.DefaultConfig(f.srv.URL)
	cfg.Timeout = 5 * time.Second
	c, err := client.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestMembershipCommands_AnswersAndExitCodes(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	run := func(words ...string) error {
		out.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	f.answer(http.StatusAccepted, api.MembershipChange{Group: 1, Node: "n3", State: api.ChangeInProgress, Epoch: 5, Members: []string{"n1"}, Learners: []string{"n2", "n3"}})
	require.NoError(t, run("group", "add-member", "1", "n3"))
	require.Contains(t, out.String(), "in progress")
	require.Contains(t, out.String(), `follow it with "kvcli cluster"`)
	require.Len(t, f.requests(), 1)
	require.Regexp(t, `^POST /v1/admin/groups/1/members\?wait=[0-9.]+m?s \{"node":"n3"\}$`, f.requests()[0])

	f.answer(http.StatusOK, api.NodeChange{Node: api.Node{ID: "n4", State: "joining"}, State: api.ChangeDone, Epoch: 4})
	require.NoError(t, run("node", "add", "n4", "10.0.0.4:7070", "10.0.0.4:7071"))
	require.Contains(t, out.String(), "node n4 added")

	f.answer(http.StatusAccepted, api.NodeChange{Node: api.Node{ID: "n2", State: "leaving"}, State: api.ChangeInProgress, Epoch: 4, Groups: []uint64{1}})
	require.NoError(t, run("node", "remove", "n2", "--force"))
	require.Contains(t, out.String(), "node n2 leaving: in progress")
	require.Regexp(t, `^DELETE /v1/admin/nodes/n2\?force=true&wait=[0-9.]+m?s $`, f.requests()[2])

	// --json prints the node's answer as it is.
	sh.o.JSON = true
	f.answer(http.StatusAccepted, api.MembershipChange{Group: 1, Node: "n2", State: api.ChangeInProgress, Epoch: 4})
	require.NoError(t, run("group", "remove-member", "1", "n2"))
	var ch api.MembershipChange
	require.NoError(t, json.Unmarshal(out.Bytes(), &ch))
	require.Equal(t, api.ChangeInProgress, ch.State)
	f.answer(http.StatusOK, api.MembershipChange{Group: 1, Node: "n1", State: api.ChangeDone, Epoch: 4, Leader: "n1"})
	require.NoError(t, run("group", "leader", "1", "n1"))
	require.NoError(t, json.Unmarshal(out.Bytes(), &ch))
	require.Equal(t, "n1", ch.Leader)
	sh.o.JSON = false

	refusals := []struct {
		status  int
		code    string
		exit    int
		explain string
	}{
		{http.StatusConflict, api.CodeConflict, ExitPrecondition, "refused, nothing was changed: n3 already hosts group 1"},
		{http.StatusNotFound, api.CodeNotFound, ExitNotFound, "not found: n3 already hosts group 1"},
		{http.StatusBadRequest, api.CodeInvalidRequest, ExitUsage, "invalid: n3 already hosts group 1"},
		{http.StatusServiceUnavailable, api.CodeUnavailable, ExitUnavailable, "unavailable, nothing was applied"},
		{http.StatusInternalServerError, api.CodeInternal, ExitUnknown, `outcome unknown: the change may or may not have been made; look with "kvcli cluster"`},
	}
	for _, r := range refusals {
		f.answer(r.status, api.Error{Error: api.ErrorDetail{Code: r.code, Message: "n3 already hosts group 1"}})
		err := run("group", "add-member", "1", "n3")
		require.Equal(t, r.exit, ExitCode(err), "%s: %v", r.code, err)
		require.Contains(t, Explain(err), r.explain)
		require.Empty(t, out.String(), "nothing on standard output")
	}
}

func TestCompletion_MembershipCommands(t *testing.T) {
	_, c := newFakeAdmin(t)
	comp := &completer{s: New(c, Options{}, strings.NewReader(""), io.Discard)}
	complete := func(line string) []string {
		got, _ := comp.Do([]rune(line), len([]rune(line)))
		var out []string
		for _, g := range got {
			out = append(out, strings.TrimSpace(string(g)))
		}
		return out
	}
	require.Equal(t, []string{"add", "remove"}, complete("node "), "after the command: its subcommands")
	require.Equal(t, []string{"emove"}, complete("node r"))
	require.Equal(t, []string{"n1", "n2", "n3"}, complete("node remove "))
	require.Equal(t, []string{"n1", "n2", "n3"}, complete("node remove --force "))
	require.Equal(t, []string{"add-member", "create", "delete", "leader", "remove-member"}, complete("group "))
	require.Equal(t, []string{"1"}, complete("group leader "))
	require.Equal(t, []string{"n3"}, complete("group add-member 1 "), "a node that does not host the group")
	require.Equal(t, []string{"n1", "n2"}, complete("group remove-member 1 "), "members and learners")
	require.Equal(t, []string{"n1"}, complete("group leader 1 "), "voters")
	require.Empty(t, complete("group leader 9 "))
}
