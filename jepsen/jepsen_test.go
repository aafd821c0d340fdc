package jepsen

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

var kvdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvd-jepsen-bin-")
	if err != nil {
		panic(err)
	}
	kvdBin, err = BuildKVD(dir)
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startTestCluster(t *testing.T) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := StartCluster(ctx, kvdBin, t.TempDir(), 3, 2, nil, nil)
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	require.NoError(t, c.WaitHealthy(ctx))
	return c
}

// TestNoPeerTrafficBypassesTheProxies proves that every node-to-node
// connection, Raft and HTTP alike, goes through the per-link proxies: with
// every Raft link cut no group can keep a leader, and with every HTTP link
// cut no node can reach another's HTTP API.
func TestNoPeerTrafficBypassesTheProxies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kvd processes")
	}
	c := startTestCluster(t)
	leader := c.LeaderAsSeenBy(0, 1)
	require.GreaterOrEqual(t, leader, 0)
	follower := (leader + 1) % 3
	kv := newKVClient(5 * time.Second)
	defer kv.close()
	fwd := Op{Key: keyOfGroup(t, c, 1), Value: "w"}
	kv.put(context.Background(), &fwd, c.Nodes[follower].URL())
	require.Equal(t, OK, fwd.Status, "%+v", fwd)
	raftConns, httpConns := c.ProxyTraffic()
	require.Positive(t, raftConns, "Raft traffic flows through the proxies")
	require.Positive(t, httpConns, "forwarded requests flow through the proxies")

	// HTTP only: Raft keeps working, but a follower can neither forward a
	// write to the leader nor get a read index from it.
	c.CutHTTP(c.AllLinks())
	op := Op{Key: keyOfGroup(t, c, 1), Value: "x"}
	kv.put(context.Background(), &op, c.Nodes[follower].URL())
	// A pooled connection the cut closed may take the request before the
	// follower sees it closed: then the outcome is unknown to it. Either
	// way the write must not have reached the leader (checked below).
	require.NotEqual(t, OK, op.Status, "a follower forwarded a write with every HTTP link cut: %+v", op)
	rd := Op{Key: op.Key}
	kv.get(context.Background(), &rd, c.Nodes[follower].URL(), "follower")
	require.Equal(t, Fail, rd.Status, "a follower read got a read index with every HTTP link cut: %+v", rd)

	// The same requests work once HTTP is back.
	c.Heal()
	before := Op{Key: fwd.Key}
	kv.get(context.Background(), &before, c.Nodes[leader].URL(), "linearizable")
	require.Equal(t, OK, before.Status, "%+v", before)
	require.Equal(t, fwd.Value, before.Value, "the write sent with every HTTP link cut took effect")
	require.Eventually(t, func() bool {
		op := Op{Key: keyOfGroup(t, c, 1), Value: "y"}
		kv.put(context.Background(), &op, c.Nodes[follower].URL())
		return op.Status == OK
	}, 10*time.Second, 100*time.Millisecond)

	// Raft: with every link cut, every leader steps down and none is
	// elected, on any node.
	c.CutLinks(c.AllLinks())
	require.Eventually(t, func() bool {
		for i := range c.Nodes {
			st, err := c.Status(i)
			if err != nil {
				return false
			}
			for _, g := range st.Groups {
				if g.Role == "leader" {
					return false
				}
			}
		}
		return true
	}, 10*time.Second, 100*time.Millisecond, "a group kept a leader with every Raft link cut")
	time.Sleep(3 * time.Second) // several election timeouts
	for i := range c.Nodes {
		st, err := c.Status(i)
		require.NoError(t, err)
		for _, g := range st.Groups {
			require.NotEqual(t, "leader", g.Role, "node %d won group %d's election with every link cut", i, g.Group)
		}
	}
	c.Heal()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitHealthy(ctx))
}

// keyOfGroup returns a key owned by group g.
func keyOfGroup(t *testing.T, c *Cluster, g uint64) string {
	cl, err := c.ClusterMap(0)
	require.NoError(t, err)
	for i := 0; ; i++ {
		k := "probe/" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
		if owner, ok := cl.GroupOf(kvd.Slot(k)); ok && owner == g {
			return k
		}
	}
}

// TestShortSuite is the suite's short form that make test runs: register,
// set and bank under kill, pause-leader (with its deposed-leader probe)
// and partition-leader; with three groups, set under kill, bank under a
// rolling restart and under crash-coordinator (with its janitor probe),
// and list-append under kill; register, set (on 4 nodes, where replicas
// move between nodes) and bank under membership changes; register and
// bank under slot moves, and set under slot moves on a cluster of one
// group (the nemesis creates the second); and bank under kill on three
// groups with backups taken as it runs, each one's cut checked (the
// accounts' total) and each restored into a cluster of another shape; and
// bank under kill on three groups on TLS and auth (client certificates
// required, peers on mutual TLS, the clients' token granted the accounts'
// keys only) with the data encrypted at rest, where no request of the harness may be refused 401 or 403:
// a node that restarts after a crash must not refuse a token it took
// before.
func TestShortSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("runs kvd clusters under faults for minutes")
	}
	out := os.Getenv("KVD_JEPSEN_OUT")
	if out == "" {
		out = t.TempDir()
	}
	for _, r := range []struct {
		workload, nemesis string
		groups            int
		nodes             int  // 0: 3
		backup            bool // take, check and restore backups
		secure            bool // TLS and auth (Options.Secure)
	}{
		{"register", "kill", 2, 0, false, false},
		{"register", "pause-leader", 2, 0, false, false},
		{"register", "partition-leader", 2, 0, false, false},
		{"set", "kill", 3, 0, false, false},
		{"set", "pause-leader", 2, 0, false, false},
		{"set", "partition-leader", 2, 0, false, false},
		{"bank", "restart", 3, 0, false, false},
		{"bank", "pause-leader", 2, 0, false, false},
		{"bank", "partition-leader", 2, 0, false, false},
		{"bank", "crash-coordinator", 3, 0, false, false},
		{"list-append", "kill", 3, 0, false, false},
		{"register", "membership", 2, 0, false, false},
		{"set", "membership", 2, 4, false, false},
		{"bank", "membership", 2, 0, false, false},
		{"register", "move", 2, 0, false, false},
		{"bank", "move", 2, 0, false, false},
		{"set", "move", 1, 0, false, false},
		{"bank", "kill", 3, 0, true, false},
		{"bank", "kill", 3, 0, false, true},
	} {
		name := r.workload + "/" + r.nemesis
		if r.backup {
			name += "/backup"
		}
		if r.secure {
			name += "/secure"
		}
		t.Run(name, func(t *testing.T) {
			w, err := WorkloadByName(r.workload)
			if err != nil {
				t.Skipf("no such workload yet: %v", err)
			}
			sum, err := Run(context.Background(), Options{Bin: kvdBin, Dir: out, Workload: w, Nemesis: r.nemesis, Groups: r.groups, Nodes: r.nodes,
				Duration: 25 * time.Second, Quiet: 2 * time.Second, Hold: 5 * time.Second, Backup: r.backup, Secure: r.secure, Logf: t.Logf})
			require.NoError(t, err)
			t.Log(sum.Line())
			for _, ch := range sum.Checks {
				t.Logf("%s: %s: %s %v", ch.Checker, ch.Verdict, ch.Summary, ch.Errors)
			}
			require.Empty(t, sum.Skipped, "every fault applies")
			require.NotEmpty(t, sum.Faults, "faults were injected")
			for _, f := range sum.Faults {
				require.Empty(t, f.Error, "fault %s", f.What)
			}
			if r.backup {
				require.NotNil(t, sum.Backups)
				require.NotEmpty(t, sum.Backups.Taken, "a backup was taken: attempts %v", sum.Backups.Attempts)
				t.Logf("backups: %d taken, attempts %v, restored into %s", len(sum.Backups.Taken), sum.Backups.Attempts, sum.Backups.Restore)
			}
			if r.secure {
				require.True(t, sum.Secure)
				require.True(t, slices.ContainsFunc(sum.Checks, func(ch CheckResult) bool { return ch.Checker == "auth" }), "the auth check ran")
			}
			if sum.Verdict != Valid {
				b, _ := os.ReadFile(filepath.Join(sum.Dir, "summary.json"))
				t.Fatalf("run failed: %s\n%s", sum.Line(), b)
			}
		})
	}
}
