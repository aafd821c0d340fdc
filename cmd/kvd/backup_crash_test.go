package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// arm arms failpoint name on the node at url with action.
func arm(t *testing.T, url, name, action string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url+"/debug/failpoints/"+name, strings.NewReader(action))
	resp, err := hc.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
}

// waitExited waits until node i of c has exited (a failpoint crashed it).
func waitExited(t *testing.T, c *kvdproc.Cluster, i int) {
	t.Helper()
	require.Eventually(t, func() bool { return !c.Nodes[i].Running() }, 20*time.Second, 20*time.Millisecond, "node %d crashes at the failpoint", i)
}

// writable waits until a write through node i succeeds.
func writable(t *testing.T, c *kvdproc.Cluster, i int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, status, err := put(c.Nodes[i].URL(), "probe", "x")
		return err == nil && status == 200
	}, within, 100*time.Millisecond, "node %d takes writes", i)
}

// send sends a request whose answer does not matter (its node crashes).
func send(method, url string, body []byte) {
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if resp, err := hc.Do(req); err == nil {
		resp.Body.Close()
	}
}

// restoreState returns the restore the cluster map records, "" if none.
func restoreState(t *testing.T, c *kvdproc.Cluster, i int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cm, err := c.ClusterMap(i)
	switch {
	case err != nil:
		return "?"
	case cm.Restore == nil:
		return ""
	}
	_ = ctx
	return cm.Restore.State
}

// A crash of the driving node at any step of a backup or a restore
// leaves the cluster serving, with the restore rolled back before its
// decision and finished after it.
func TestKvd_CrashesDuringBackupAndRestoreLeaveTheClusterServing(t *testing.T) {
	c := startMovesCluster(t, kvdFailpointsBinary(t), 3, 2)
	for i := 0; i < 40; i++ {
		_, status, err := put(c.Nodes[i%3].URL(), fmt.Sprintf("k%02d", i), fmt.Sprintf("v%d", i))
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	file := getBackup(t, c.Nodes[0].URL())

	// The backup's driver dies with every group frozen: the groups'
	// leaders lift the freeze themselves.
	arm(t, c.Nodes[1].URL(), failpoint.BackupCut, "crash")
	go send(http.MethodGet, c.Nodes[1].URL()+"/v1/admin/backup", nil)
	waitExited(t, c, 1)
	writable(t, c, 0, 60*time.Second)
	require.NoError(t, c.Start(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx, 1))
	getBackup(t, c.Nodes[1].URL())

	// Into a second cluster: the restore's driver dies with the keys
	// staged: nothing shows, and once it restarts it drops the restore.
	d := startMovesCluster(t, kvdFailpointsBinary(t), 3, 3)
	arm(t, d.Nodes[2].URL(), failpoint.RestoreStaged, "crash")
	go send(http.MethodPost, d.Nodes[2].URL()+"/v1/admin/restore", file)
	waitExited(t, d, 2)
	require.Equal(t, "staging", restoreState(t, d, 0), "the map records the staging restore")
	_, _, status, err := get(d.Nodes[0].URL(), "k01", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 404, status, "staged keys are out of sight")
	require.NoError(t, d.Start(2))
	require.Eventually(t, func() bool { return restoreState(t, d, 0) == "" }, 30*time.Second, 100*time.Millisecond,
		"the restarted node drops its restore")
	_, _, status, err = get(d.Nodes[0].URL(), "k01", "linearizable")
	require.NoError(t, err)
	require.Equal(t, 404, status, "what it staged never shows")

	// A restore whose node died while staging gives way to the next.
	arm(t, d.Nodes[2].URL(), failpoint.RestoreStaged, "crash")
	go send(http.MethodPost, d.Nodes[2].URL()+"/v1/admin/restore", file)
	waitExited(t, d, 2)
	status, body := postRestore(t, d.Nodes[0].URL(), file, "")
	require.Equal(t, 200, status, "a restore of a dead node is displaced: %s", body)
	require.NoError(t, d.Start(2))
	require.NoError(t, d.WaitReady(ctx, 2))

	// The driver dies after the decision: the map's leader finishes it.
	leader := 0
	if l, err := d.Leader(ctx, 1); err == nil {
		leader = l
	}
	driver := (leader + 1) % 3
	arm(t, d.Nodes[driver].URL(), failpoint.RestoreLoading, "crash")
	_, status, err = put(d.Nodes[driver].URL(), "k01", "changed")
	require.NoError(t, err)
	require.Equal(t, 200, status)
	go send(http.MethodPost, d.Nodes[driver].URL()+"/v1/admin/restore?force=true", file)
	waitExited(t, d, driver)
	other := (driver + 1) % 3
	require.Eventually(t, func() bool {
		val, _, status, err := get(d.Nodes[other].URL(), "k01", "linearizable")
		return err == nil && status == 200 && val == "v1" && restoreState(t, d, other) == ""
	}, 60*time.Second, 200*time.Millisecond, "the restore finishes without its driver")
	for i := 0; i < 40; i++ {
		val, _, status, err := get(d.Nodes[other].URL(), fmt.Sprintf("k%02d", i), "linearizable")
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.Equal(t, fmt.Sprintf("v%d", i), val)
	}
}
