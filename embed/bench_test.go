package embed_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/embed"
	"github.com/kvd-project/kvd/internal/load"
	"github.com/kvd-project/kvd/node"
)

// BenchmarkEmbeddedVsNetwork runs the same workloads on one embedded
// store twice: in-process through its kvd.KV, and through the network (its
// HTTP API on loopback, driven by the Go client). The two alternate, three
// rounds each, and the best round of each counts; the figure is the ratio
// embedded/network for each workload, measured in the same run.
func BenchmarkEmbeddedVsNetwork(b *testing.B) {
	st, err := embed.Open(b.TempDir(), embed.Options{HTTPAddr: "127.0.0.1:0", Frontend: node.HTTP})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cl, err := client.New(context.Background(), client.DefaultConfig("http://"+st.HTTPAddr()))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	value := bytes.Repeat([]byte("v"), 256)
	for i := range 2000 {
		if _, err := st.Put(context.Background(), fmt.Sprintf("k%08d", i), value); err != nil {
			b.Fatal(err)
		}
	}
	workloads := []struct {
		name    string
		workers int
		op      func(kv kvd.KV) func(context.Context, int) error
	}{
		{"put-c1", 1, putOp(value)},
		{"put-c16", 16, putOp(value)},
		{"get-c1", 1, getOp},
		{"get-c16", 16, getOp},
	}
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			best := map[string]load.Result{}
			for range 3 {
				for _, side := range []struct {
					name string
					kv   kvd.KV
				}{{"embedded", st}, {"network", cl}} {
					r := load.Run(context.Background(), w.workers, b.N, 0, nil, w.op(side.kv))
					if r.Errors > 0 {
						b.Fatalf("%s: %d errors, first: %v", side.name, r.Errors, r.FirstErr)
					}
					if r.OpsPerSec > best[side.name].OpsPerSec {
						best[side.name] = r
					}
				}
			}
			for side, r := range best {
				b.ReportMetric(r.OpsPerSec, side+"-ops/s")
				b.ReportMetric(float64(r.P50.Microseconds())/1000, side+"-p50-ms")
			}
			b.ReportMetric(best["embedded"].OpsPerSec/best["network"].OpsPerSec, "embedded/network")
		})
	}
}

func putOp(value []byte) func(kv kvd.KV) func(context.Context, int) error {
	return func(kv kvd.KV) func(context.Context, int) error {
		return func(ctx context.Context, i int) error {
			_, err := kv.Put(ctx, fmt.Sprintf("k%08d", i%2000), value)
			return err
		}
	}
}

func getOp(kv kvd.KV) func(context.Context, int) error {
	return func(ctx context.Context, i int) error {
		_, err := kv.Get(ctx, fmt.Sprintf("k%08d", i%2000))
		return err
	}
}
