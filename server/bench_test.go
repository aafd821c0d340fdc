package server_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/load"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/server"
)

// The benchmarks run 3-node clusters in this process over loopback HTTP,
// with default durability (every batch fsynced), and drive them through
// the Go client (the smart router) with closed-loop workers, 256-byte
// values. They report throughput and latency percentiles, and ratios
// between configurations measured in the same run, which is the figure to
// compare across machines.

func newBenchCluster(b *testing.B, groups int) *testcluster.Cluster {
	return testcluster.New(b, 3, groups, func(c *server.Config) {
		c.Replication = replication.DefaultConfig()
	})
}

func newBenchClient(b *testing.B, c *testcluster.Cluster, consistency kvd.Consistency) *client.Client {
	cfg := client.DefaultConfig(c.URLs()...)
	cfg.Consistency = consistency
	cl, err := client.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Close() })
	return cl
}

// closedLoop runs n operations over clients workers.
func closedLoop(clients, n int, op func(i int) error) load.Result {
	return load.Run(context.Background(), clients, n, 0, nil, func(_ context.Context, i int) error { return op(i) })
}

func report(b *testing.B, prefix string, r load.Result) {
	b.ReportMetric(r.OpsPerSec, prefix+"ops/s")
	b.ReportMetric(float64(r.P50.Microseconds())/1000, prefix+"p50-ms")
	b.ReportMetric(float64(r.P99.Microseconds())/1000, prefix+"p99-ms")
	if r.Errors > 0 {
		b.Errorf("%s: %d operations failed, first: %v", prefix, r.Errors, r.FirstErr)
	}
}

var value256 = bytes.Repeat([]byte("v"), 256)

func putOp(cl *client.Client) func(int) error {
	return func(i int) error {
		_, err := cl.Put(context.Background(), fmt.Sprintf("k%08d", i%20000), value256)
		return err
	}
}

// BenchmarkPut measures write throughput of one group at 1, 16 and 64
// clients (b.N writes each).
func BenchmarkPut(b *testing.B) {
	c := newBenchCluster(b, 1)
	cl := newBenchClient(b, c, kvd.Linearizable)
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			report(b, "", closedLoop(clients, b.N, putOp(cl)))
		})
	}
}

// BenchmarkPutGroups compares write throughput of 1 group with 3 groups
// on the same 3 nodes, 64 clients.
func BenchmarkPutGroups(b *testing.B) {
	var one, three load.Result
	for _, groups := range []int{1, 3} {
		c := newBenchCluster(b, groups)
		cl := newBenchClient(b, c, kvd.Linearizable)
		closedLoop(64, 500, putOp(cl)) // warm up: leaders known, connections open
		r := closedLoop(64, b.N, putOp(cl))
		if groups == 1 {
			one = r
		} else {
			three = r
		}
		cl.Close()
		c.Close()
	}
	report(b, "1group-", one)
	report(b, "3groups-", three)
	b.ReportMetric(three.OpsPerSec/one.OpsPerSec, "3groups/1group")
}

// BenchmarkGet compares linearizable reads served by the leader alone
// with follower reads balanced over all three replicas (p2c), and stale
// reads, at 64 clients. The ratio follower/leader is the figure.
func BenchmarkGet(b *testing.B) {
	c := newBenchCluster(b, 1)
	w := newBenchClient(b, c, kvd.Linearizable)
	closedLoop(64, 2000, func(i int) error {
		_, err := w.Put(context.Background(), fmt.Sprintf("k%08d", i), value256)
		return err
	})
	results := map[kvd.Consistency]load.Result{}
	for _, cons := range []kvd.Consistency{kvd.Linearizable, kvd.Follower, kvd.Stale} {
		cl := newBenchClient(b, c, cons)
		get := func(i int) error {
			_, err := cl.Get(context.Background(), fmt.Sprintf("k%08d", i%2000))
			return err
		}
		closedLoop(64, 1000, get) // warm up
		results[cons] = closedLoop(64, b.N, get)
	}
	report(b, "leader-", results[kvd.Linearizable])
	report(b, "follower-", results[kvd.Follower])
	report(b, "stale-", results[kvd.Stale])
	b.ReportMetric(results[kvd.Follower].OpsPerSec/results[kvd.Linearizable].OpsPerSec, "follower/leader")
}

// BenchmarkTxn measures 2-key transactions (two puts, no contention) in
// one group and across two groups, at 16 and 64 clients, on 3 nodes with
// 3 groups, against single PUTs on the same cluster. The figure is the
// cross-group transaction's p50 latency over a PUT's at 16 clients.
func BenchmarkTxn(b *testing.B) {
	c := newBenchCluster(b, 3)
	cl := newBenchClient(b, c, kvd.Linearizable)
	m := c.Node(0).Map()
	// Account pairs: same group (a hash tag) and different groups.
	sameGroup := func(i int) (string, string) {
		return fmt.Sprintf("{acct%d}/a", i%5000), fmt.Sprintf("{acct%d}/b", i%5000)
	}
	crossGroup := func(i int) (string, string) {
		a := fmt.Sprintf("x%d", i%5000)
		ga, _ := m.GroupOf(kvd.Slot(a))
		for j := 0; ; j++ {
			bk := fmt.Sprintf("y%d-%d", i%5000, j)
			if gb, _ := m.GroupOf(kvd.Slot(bk)); gb != ga {
				return a, bk
			}
		}
	}
	txnOp := func(pair func(int) (string, string)) func(int) error {
		return func(i int) error {
			a, bk := pair(i)
			_, err := cl.Txn(context.Background(), kvd.Txn{Ops: []kvd.Op{kvd.OpPut(a, value256[:64]), kvd.OpPut(bk, value256[:64])}})
			return err
		}
	}
	closedLoop(16, 500, putOp(cl)) // warm up
	results := map[string]load.Result{}
	results["put-c16-"] = closedLoop(16, b.N, putOp(cl))
	for _, clients := range []int{16, 64} {
		results[fmt.Sprintf("txn1group-c%d-", clients)] = closedLoop(clients, b.N, txnOp(sameGroup))
		results[fmt.Sprintf("txn2groups-c%d-", clients)] = closedLoop(clients, b.N, txnOp(crossGroup))
	}
	for name, r := range results {
		report(b, name, r)
	}
	b.ReportMetric(float64(results["txn2groups-c16-"].P50)/float64(results["put-c16-"].P50), "txn2groups/put-p50")
}
