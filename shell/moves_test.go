package shell

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
)

func TestParseSlots(t *testing.T) {
	for spec, want := range map[string][][2]int{
		"0":                 {{0, 0}},
		"1023":              {{1023, 1023}},
		"0-99":              {{0, 99}},
		"0-99,200,300-310":  {{0, 99}, {200, 200}, {300, 310}},
		"300-310,0-99,200":  {{0, 99}, {200, 200}, {300, 310}},
		"0-99,100,101-150":  {{0, 150}},
		"0-99,50-60,90-120": {{0, 120}},
		"5,5":               {{5, 5}},
		"0-1023":            {{0, 1023}},
		"007-9":             {{7, 9}},
	} {
		got, err := parseSlots(spec)
		require.NoError(t, err, spec)
		require.Equal(t, want, got, spec)
	}
	for _, spec := range []string{"", ",", "0-99,", ",5", "0-99,,5", "a", "1-b", "99-0", "-5", "5-", "0-1024", "1024", "-1-5",
		"+5", "0x10", "1.5", "0--5", "1-2-3"} {
		_, err := parseSlots(spec)
		require.Error(t, err, spec)
		require.Equal(t, ExitUsage, ExitCode(err), spec)
		require.Contains(t, err.Error(), "0-99,200,300-310", "the message shows the form")
	}
	require.Equal(t, "0-99,200,300-310", formatSlots([][2]int{{0, 99}, {200, 200}, {300, 310}}))
}

func TestMoveCommands_UsageErrorsExitTwo(t *testing.T) {
	sh := New(nil, Options{}, strings.NewReader(""), io.Discard)
	for _, words := range [][]string{
		{"group", "create", "--id", "x"}, {"group", "create", "--id", "0"}, {"group", "create", "--id", "-2", "n1"},
		{"group", "create", "--id"}, {"group", "create", "n1", "n2", "n1"}, {"group", "create", ""},
		{"group", "create", "--force"},
		{"group", "delete"}, {"group", "delete", "x"}, {"group", "delete", "0"}, {"group", "delete", "1", "2"},
		{"group", "delete", "1", "--id", "2"}, {"group", "leader", "1", "n2", "--id", "3"},
		{"move"}, {"move", "0-99"}, {"move", "--to", "2"}, {"move", "0-99", "--to"}, {"move", "0-99", "--to", "x"},
		{"move", "0-99", "--to", "0"}, {"move", "0-99", "--to", "-1"}, {"move", "0-99", "200", "--to", "2"},
		{"move", "99-0", "--to", "2"}, {"move", "0-1024", "--to", "2"}, {"move", "", "--to", "2"},
		{"move", "0-99,,5", "--to", "2"}, {"move", "a-b", "--to", "2"}, {"move", "0-99", "--to", "2", "--force"},
		{"move", "0-99", "--to", "2", "--wait=x", "extra"},
		{"moves", "all"}, {"moves", "--all"},
		{"rebalance", "now"}, {"rebalance", "--dry"}, {"rebalance", "--dry-run", "1"},
	} {
		err := sh.Exec(context.Background(), words, false)
		require.Equal(t, ExitUsage, ExitCode(err), "%q: %v", words, err)
		require.NotContains(t, Explain(err), "\n", "one line")
	}
}

func TestGroupCreateDelete(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	run := func(words ...string) error {
		out.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	f.answer(http.StatusOK, api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 5, Members: []string{"n1", "n2"}, Leader: "n1"})
	require.NoError(t, run("group", "create", "--id", "4", "n1", "n2"))
	require.Equal(t, "group 4 created (map epoch 5); members n1,n2, leader n1; it owns no slot yet: \"kvcli move SLOTS --to 4\" or \"kvcli rebalance\" gives it some\n", out.String())
	require.Regexp(t, `^POST /v1/admin/groups\?wait=[0-9.]+m?s \{"id":4,"members":\["n1","n2"\]\}$`, f.requests()[0])

	f.answer(http.StatusAccepted, api.GroupChange{Group: 5, State: api.ChangeInProgress, Epoch: 6, Members: []string{"n2", "n3"}})
	require.NoError(t, run("group", "create"))
	require.Equal(t, "creating group 5: in progress (map epoch 6): its replicas on n2,n3 are starting and electing a leader; "+followHint+"\n", out.String())
	require.Regexp(t, `^POST /v1/admin/groups\?wait=[0-9.]+m?s \{\}$`, f.requests()[1], "no members: the cluster chooses")

	f.answer(http.StatusOK, api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 7})
	require.NoError(t, run("group", "delete", "4"))
	require.Equal(t, "group 4 deleted (map epoch 7)\n", out.String())
	require.Regexp(t, `^DELETE /v1/admin/groups/4\?wait=[0-9.]+m?s $`, f.requests()[2])

	f.answer(http.StatusAccepted, api.GroupChange{State: api.ChangeInProgress, Epoch: 7})
	require.NoError(t, run("group", "delete", "4"))
	require.Equal(t, "deleting group 4: in progress (map epoch 7): its replicas are being removed from their nodes; "+followHint+"\n", out.String())

	sh.o.JSON = true
	f.answer(http.StatusOK, api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 7})
	require.NoError(t, run("group", "delete", "4"))
	var ch api.GroupChange
	require.NoError(t, json.Unmarshal(out.Bytes(), &ch))
	require.Equal(t, api.GroupChange{Group: 4, State: api.ChangeDone, Epoch: 7}, ch)
	sh.o.JSON = false

	for _, r := range []struct {
		status  int
		code    string
		exit    int
		explain string
	}{
		{http.StatusConflict, api.CodeConflict, ExitPrecondition, "refused, nothing was changed: group 4 owns 100 slots"},
		{http.StatusNotFound, api.CodeNotFound, ExitNotFound, "not found: group 4 owns 100 slots"},
		{http.StatusInternalServerError, api.CodeInternal, ExitUnknown, `outcome unknown: the change may or may not have been made; look with "kvcli cluster"`},
	} {
		f.answer(r.status, api.Error{Error: api.ErrorDetail{Code: r.code, Message: "group 4 owns 100 slots"}})
		err := run("group", "delete", "4")
		require.Equal(t, r.exit, ExitCode(err), "%s: %v", r.code, err)
		require.Contains(t, Explain(err), r.explain)
		require.Empty(t, out.String())
	}
}

func TestMove(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	run := func(words ...string) error {
		out.Reset()
		return sh.Exec(context.Background(), words, false)
	}
	moved := func(id, state string, slots [][2]int) api.MoveInfo {
		return api.MoveInfo{ID: id, Slots: slots, From: 1, To: 2, State: state, Attempt: 1}
	}

	f.answerTo("POST", "/v1/admin/moves", http.StatusAccepted, api.MoveStarted{ID: "m1", IDs: []string{"m1"}, Epoch: 5})
	require.NoError(t, run("move", "300-310,0-99,200,100", "--to", "2"))
	require.Equal(t, "move m1 started: slots 0-100,200,300-310 to group 2 (map epoch 5); follow with \"kvcli moves\"\n", out.String())
	require.Regexp(t, `^POST /v1/admin/moves \{"slots":\[\[0,100\],\[200,200\],\[300,310\]\],"to":2,"id":"[0-9a-f]{32}"\}$`, f.requests()[0])

	// --wait follows the move until it ends.
	done := moved("m1", "done", [][2]int{{0, 99}})
	done.Progress = &api.MoveProgress{KeysCopied: 1200, BytesCopied: 1 << 20, CatchUpRounds: 2, HandOffMillis: 12}
	f.answerTo("GET", "/v1/admin/moves", http.StatusOK, api.MoveList{Epoch: 6, Moves: []api.MoveInfo{done}})
	require.NoError(t, run("move", "0-99", "--to", "2", "--wait"))
	require.Equal(t, "move m1 started: slots 0-99 to group 2 (map epoch 5); waiting for it to end\n"+
		"move m1 done: slots 0-99 moved from group 1 to group 2 (1200 keys, 1.0 MiB, 2 catch-up rounds, writes paused 12 ms)\n", out.String())
	require.Equal(t, "GET /v1/admin/moves ", f.requests()[2])

	// Slots of two groups: two moves, both waited for.
	f.answerTo("POST", "/v1/admin/moves", http.StatusAccepted, api.MoveStarted{ID: "m1", IDs: []string{"m1", "m2"}, Epoch: 5})
	f.answerTo("GET", "/v1/admin/moves", http.StatusOK, api.MoveList{Epoch: 6, Moves: []api.MoveInfo{
		moved("m1", "done", [][2]int{{0, 99}}), {ID: "m2", Slots: [][2]int{{600, 700}}, From: 3, To: 2, State: "done"}}})
	require.NoError(t, run("move", "0-99,600-700", "--to", "2", "--wait"))
	require.Equal(t, "moves m1, m2 started: slots 0-99,600-700 to group 2, one move per group that owns some (map epoch 5); waiting for them to end\n"+
		"move m1 done: slots 0-99 moved from group 1 to group 2\n"+
		"move m2 done: slots 600-700 moved from group 3 to group 2\n", out.String())

	// --json: the answer, then with --wait each move as it ended.
	sh.o.JSON = true
	require.NoError(t, run("move", "0-99,600-700", "--to", "2", "--wait"))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	var st api.MoveStarted
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &st))
	require.Equal(t, []string{"m1", "m2"}, st.IDs)
	var info api.MoveInfo
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &info))
	require.Equal(t, "m2", info.ID)
	require.Equal(t, "done", info.State)
	require.NoError(t, run("move", "5", "--to", "2"))
	require.NoError(t, json.Unmarshal(out.Bytes(), &st))
	require.Equal(t, api.MoveStarted{ID: "m1", IDs: []string{"m1", "m2"}, Epoch: 5}, st)
	sh.o.JSON = false

	// A move that fails: exit 4, its slots stay where they were.
	f.answerTo("POST", "/v1/admin/moves", http.StatusAccepted, api.MoveStarted{ID: "m1", IDs: []string{"m1"}, Epoch: 5})
	failed := moved("m1", "failed", [][2]int{{0, 99}})
	failed.Error = "group 2 refused the copy: disk full"
	f.answerTo("GET", "/v1/admin/moves", http.StatusOK, api.MoveList{Epoch: 6, Moves: []api.MoveInfo{failed}})
	err := run("move", "0-99", "--to", "2", "--wait")
	require.Equal(t, ExitPrecondition, ExitCode(err), "%v", err)
	require.Equal(t, "move failed, its slots stay where they were: move m1 of slots 0-99 from group 1 to group 2: group 2 refused the copy: disk full", Explain(err))

	// A move still under way when --timeout runs out goes on.
	sh.o.Timeout = 700 * time.Millisecond
	f.answerTo("GET", "/v1/admin/moves", http.StatusOK, api.MoveList{Epoch: 6, Moves: []api.MoveInfo{moved("m1", "copying", [][2]int{{0, 99}})}})
	err = run("move", "0-99", "--to", "2", "--wait")
	require.Equal(t, ExitError, ExitCode(err), "%v", err)
	require.Equal(t, `move m1 is still copying after --timeout 700ms: it goes on on its own: follow with "kvcli moves", or raise --timeout to wait longer`, Explain(err))
	require.Contains(t, out.String(), "move m1 started", "the id was printed first")
	sh.o.Timeout = 10 * time.Second

	for _, r := range []struct {
		status  int
		code    string
		exit    int
		explain string
	}{
		{http.StatusConflict, api.CodeConflict, ExitPrecondition, "refused, nothing was changed: slot 7"},
		{http.StatusNotFound, api.CodeNotFound, ExitNotFound, "not found: "},
		{http.StatusBadRequest, api.CodeInvalidRequest, ExitUsage, "invalid: "},
		{http.StatusInternalServerError, api.CodeInternal, ExitUnknown, `outcome unknown: the change may or may not have been made; look with "kvcli moves" before retrying: move `},
	} {
		f.answerTo("POST", "/v1/admin/moves", r.status, api.Error{Error: api.ErrorDetail{Code: r.code, Message: "slot 7 is already moving"}})
		err := run("move", "0-99", "--to", "2", "--wait")
		require.Equal(t, r.exit, ExitCode(err), "%s: %v", r.code, err)
		require.Contains(t, Explain(err), r.explain)
		require.Contains(t, Explain(err), "slot 7 is already moving")
		require.Empty(t, out.String(), "nothing on standard output")
	}
	// A 503 promises nothing was done: the move is asked of the other
	// nodes (which this map's fake addresses refuse).
	f.answerTo("POST", "/v1/admin/moves", http.StatusServiceUnavailable, api.Error{Error: api.ErrorDetail{Code: api.CodeUnavailable, Message: "no leader"}})
	err = run("move", "0-99", "--to", "2")
	require.Equal(t, ExitUnavailable, ExitCode(err), "%v", err)
	require.Contains(t, Explain(err), "unavailable, nothing was applied: ")
	require.Empty(t, out.String())

	// The id of a move that may have started is in the message.
	f.answerTo("POST", "/v1/admin/moves", http.StatusInternalServerError, api.Error{Error: api.ErrorDetail{Code: api.CodeInternal, Message: "slot 7 is already moving"}})
	err = run("move", "0-99", "--to", "2")
	n := len(f.requests())
	var body struct{ ID string }
	last := f.requests()[n-1]
	require.NoError(t, json.Unmarshal([]byte(last[strings.Index(last, "{"):]), &body))
	require.Contains(t, Explain(err), "move "+body.ID+": slot 7 is already moving")
}

func TestMoves(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	list := api.MoveList{Epoch: 9, Moves: []api.MoveInfo{
		{ID: "m1", Slots: [][2]int{{0, 99}}, From: 1, To: 2, State: "copying", Attempt: 1,
			Progress: &api.MoveProgress{KeysCopied: 1200, BytesCopied: 3 << 20}},
		{ID: "m0", Slots: [][2]int{{200, 200}, {300, 310}}, From: 2, To: 1, State: "failed", Attempt: 3, Error: "group 2 has no leader"},
		{ID: "m2", Slots: [][2]int{{5, 5}}, From: 1, To: 3, State: "pending"},
	}}
	f.answer(http.StatusOK, list)
	require.NoError(t, sh.Exec(context.Background(), []string{"moves"}, false))
	require.Equal(t, `ID  FROM->TO  SLOTS        STATE    PROGRESS            ERROR
m1  1->2      0-99         copying  1200 keys, 3.0 MiB  -
m0  2->1      200,300-310  failed   -                   group 2 has no leader
m2  1->3      5            pending  -                   -
`, out.String())
	require.Equal(t, []string{"GET /v1/admin/moves "}, f.requests())

	out.Reset()
	sh.o.JSON = true
	require.NoError(t, sh.Exec(context.Background(), []string{"moves"}, false))
	var got api.MoveList
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	require.Equal(t, list, got)
	sh.o.JSON = false

	out.Reset()
	f.answer(http.StatusOK, api.MoveList{Epoch: 9})
	require.NoError(t, sh.Exec(context.Background(), []string{"moves"}, false))
	require.Equal(t, "no slot move under way or remembered (map epoch 9)\n", out.String())
}

func TestRebalance(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	plan := api.RebalancePlan{DryRun: true, Epoch: 4,
		Before: []api.GroupLoad{{Group: 2, Slots: 0}, {Group: 1, Slots: 1024, Keys: 100, Bytes: 4 << 10}},
		After:  []api.GroupLoad{{Group: 1, Slots: 512, Keys: 50, Bytes: 2 << 10}, {Group: 2, Slots: 512, Keys: 50, Bytes: 2 << 10}},
		Moves:  []api.PlannedMove{{Slots: [][2]int{{512, 1023}}, From: 1, To: 2, Keys: 50, Bytes: 2 << 10}}}
	f.answer(http.StatusOK, plan)
	require.NoError(t, sh.Exec(context.Background(), []string{"rebalance", "--dry-run"}, false))
	require.Equal(t, `dry run: 1 move planned, none started

GROUP  SLOTS        KEYS       BYTES
1      1024 -> 512  100 -> 50  4.0 KiB -> 2.0 KiB
2      0 -> 512     0 -> 50    0 B -> 2.0 KiB

MOVE  FROM->TO  SLOTS     KEYS  BYTES
-     1->2      512-1023  50    2.0 KiB
`, out.String())
	require.Equal(t, `POST /v1/admin/rebalance {"dry_run":true}`, f.requests()[0])

	out.Reset()
	plan.DryRun = false
	plan.Moves[0].ID = "r1"
	f.answer(http.StatusOK, plan)
	require.NoError(t, sh.Exec(context.Background(), []string{"rebalance"}, false))
	require.True(t, strings.HasPrefix(out.String(), "1 move started (map epoch 4): a group takes part in one move at a time, the others wait as pending; follow with \"kvcli moves\"\n"), out.String())
	require.Contains(t, out.String(), "r1    1->2")
	require.Equal(t, `POST /v1/admin/rebalance {"dry_run":false}`, f.requests()[1])

	out.Reset()
	f.answer(http.StatusOK, api.RebalancePlan{Epoch: 4, Before: []api.GroupLoad{{Group: 1, Slots: 1024}}, After: []api.GroupLoad{{Group: 1, Slots: 1024}}})
	require.NoError(t, sh.Exec(context.Background(), []string{"rebalance"}, false))
	require.Equal(t, "the groups are balanced: nothing to move\n\nGROUP  SLOTS         KEYS    BYTES\n1      1024 -> 1024  0 -> 0  0 B -> 0 B\n", out.String())

	out.Reset()
	sh.o.JSON = true
	f.answer(http.StatusOK, plan)
	require.NoError(t, sh.Exec(context.Background(), []string{"rebalance"}, false))
	var got api.RebalancePlan
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	require.Equal(t, plan, got)
	sh.o.JSON = false

	f.answer(http.StatusInternalServerError, api.Error{Error: api.ErrorDetail{Code: api.CodeInternal, Message: "boom"}})
	err := sh.Exec(context.Background(), []string{"rebalance"}, false)
	require.Equal(t, ExitUnknown, ExitCode(err))
	require.Contains(t, Explain(err), `look with "kvcli moves"`)
}

func TestHelp_ExplainsMoveCommands(t *testing.T) {
	var out bytes.Buffer
	sh := New(nil, Options{}, strings.NewReader(""), &out)
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "group"}, false))
	for _, want := range []string{usageGroupCreate, usageGroupDelete, usageAddMember} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "move"}, false))
	for _, want := range []string{usageMove, "0-99,200,300-310", "--wait", "--timeout"} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help", "rebalance"}, false))
	require.Contains(t, out.String(), "--dry-run")
	out.Reset()
	require.NoError(t, sh.Exec(context.Background(), []string{"help"}, false))
	for _, want := range []string{"leader G NODE | create [--id N] [NODE...] | delete G", "move SLOTS --to G [--wait]", "moves ", "rebalance [--dry-run]"} {
		require.Contains(t, out.String(), want)
	}
}

func TestCompletion_MoveCommands(t *testing.T) {
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
	require.Equal(t, []string{"ve", "ves"}, complete("mo"))
	require.Equal(t, []string{"balance", "store"}, complete("re"))
	require.Equal(t, []string{"1"}, complete("move 0-99 --to "), "the groups")
	require.Equal(t, []string{"1"}, complete("move 0-99 --wait --to "))
	require.Empty(t, complete("move 0-99 --wait "))
	require.Equal(t, []string{"1"}, complete("group delete "))
	require.Empty(t, complete("group delete 1 "))
	require.Equal(t, []string{"n1", "n2", "n3"}, complete("group create "))
	require.Equal(t, []string{"n1", "n3"}, complete("group create --id 7 n2 "), "the nodes not named yet")
}
