package kvdproc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeKVD writes a stand-in for the kvd binary that prints its arguments
// and then sleeps, so the harness's bookkeeping and command lines can be
// checked without building kvd.
func fakeKVD(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kvd")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\necho \"$@\"\nexec sleep 30\n"), 0o755))
	return bin
}

// waitLog waits until node i's log holds want.
func waitLog(t *testing.T, c *Cluster, i int, want string) string {
	t.Helper()
	var got string
	require.Eventually(t, func() bool {
		got = c.Logs(i, 1<<16)
		return strings.Contains(got, want)
	}, 10*time.Second, 10*time.Millisecond, "log of %s: %q, want %q in it", c.Nodes[i].ID, got, want)
	return got
}

func TestCluster_AddNode_JoinsThroughTheRunningMembersWithTheClustersSecret(t *testing.T) {
	c, err := NewCluster(fakeKVD(t), t.TempDir(), 2, 1, 2)
	require.NoError(t, err)
	t.Cleanup(c.KillAll)
	_, err = c.AddNode("n3")
	require.ErrorContains(t, err, "no running member", "a node cannot join a cluster with nothing running")
	require.Len(t, c.Nodes, 2)

	require.NoError(t, c.Start(1))
	i, err := c.AddNode("n3")
	require.NoError(t, err)
	require.Equal(t, 2, i)
	require.Equal(t, i, c.NodeIndex("n3"))
	n := c.Nodes[i]
	line := waitLog(t, c, i, "--join")
	require.Contains(t, line, "--id n3")
	require.Contains(t, line, "--join "+c.Nodes[1].URL(), "only the running member is a way in")
	require.NotContains(t, line, c.Nodes[0].URL())
	require.Contains(t, line, "--peer-secret-file "+c.PeerSecretPath())
	require.Contains(t, line, "--http-addr "+n.HTTP)
	require.Contains(t, line, "--raft-addr "+n.Raft)
	require.NotContains(t, line, "--initial-cluster")
	require.NotEqual(t, n.HTTP, n.Raft)

	_, err = c.AddNode("n3")
	require.ErrorContains(t, err, "already", "ids are unique")

	// Restarted, it joins with the same flags.
	require.NoError(t, c.Kill(i))
	exited, exit := n.Exited()
	require.True(t, exited)
	require.Error(t, exit, "SIGKILL is not a clean exit")
	require.NoError(t, c.Start(i))
	require.Eventually(t, func() bool { return strings.Count(c.Logs(i, 1<<16), "--join "+c.Nodes[1].URL()+" ") == 2 },
		10*time.Second, 10*time.Millisecond, "the second start joins as the first did: %q", c.Logs(i, 1<<16))
	exited, _ = n.Exited()
	require.False(t, exited)
}

func TestCluster_ReplaceAndRemoveNode_KeepTheOtherIndexes(t *testing.T) {
	c, err := NewCluster(fakeKVD(t), t.TempDir(), 3, 1, 3)
	require.NoError(t, err)
	t.Cleanup(c.KillAll)
	require.NoError(t, c.StartAll())
	_, err = c.ReplaceNode(1, "n4")
	require.ErrorContains(t, err, "running", "a running node is not replaced")
	require.ErrorContains(t, c.RemoveNode(1), "running", "a running node is not removed")

	require.NoError(t, c.Kill(1))
	n4, err := c.ReplaceNode(1, "n4")
	require.NoError(t, err)
	require.Same(t, n4, c.Nodes[1])
	require.Equal(t, []string{"n1", "n4", "n3"}, ids(c))
	require.NotContains(t, n4.Join, "http://"+c.Spec.Nodes[1].HTTP, "the dead node is no way in")
	require.Len(t, n4.Join, 2)
	waitLog(t, c, 1, "--id n4")

	require.NoError(t, c.Kill(0))
	require.NoError(t, c.RemoveNode(0))
	require.Equal(t, []string{"n4", "n3"}, ids(c))
	require.Equal(t, 1, c.NodeIndex("n3"))
	require.Equal(t, -1, c.NodeIndex("n1"))
	require.True(t, c.Nodes[1].Running())
	require.NoError(t, c.Kill(1), "indexes after the removed node moved down")
	require.False(t, c.Nodes[1].Running())

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.Error(t, c.WaitReady(ctx, 0), "a fake kvd never answers")
}

func ids(c *Cluster) []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.ID)
	}
	return out
}
