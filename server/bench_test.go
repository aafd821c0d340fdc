package server_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvd-project/kvd/internal/testcluster"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/server"
)

// The benchmarks run a 3-node, one-group cluster in this process over
// loopback HTTP with default durability (every batch fsynced) and drive it
// with closed-loop clients. They report throughput and latency
// percentiles; compare runs made on the same machine at the same time.

func benchClient(conns int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: conns, DisableCompression: true}}
}

func newBenchCluster(b *testing.B) *testcluster.Cluster {
	return testcluster.New(b, 3, 1, func(c *server.Config) {
		c.Replication = replication.DefaultConfig()
	})
}

// runClosedLoop runs b.N operations over clients workers and reports
// ops/s, p50 and p99 latency.
func runClosedLoop(b *testing.B, clients int, op func(worker, i int) error) {
	var next atomic.Int64
	lat := make([][]time.Duration, clients)
	var errs atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					errs.Add(1)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		b.Fatalf("every operation failed")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(errs.Load()), "errors")
}

func put(hc *http.Client, url, key string, val []byte) error {
	req, _ := http.NewRequest(http.MethodPut, url+"/v1/kv/"+key, bytes.NewReader(val))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put: %s", resp.Status)
	}
	return nil
}

func get(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get: %s", resp.Status)
	}
	return nil
}

func BenchmarkPut(b *testing.B) {
	c := newBenchCluster(b)
	leader := c.URL(c.Leader(1))
	val := bytes.Repeat([]byte("v"), 256)
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			hc := benchClient(clients)
			defer hc.CloseIdleConnections()
			runClosedLoop(b, clients, func(_, i int) error {
				return put(hc, leader, fmt.Sprintf("k%08d", i%20000), val)
			})
		})
	}
}

func BenchmarkGet(b *testing.B) {
	c := newBenchCluster(b)
	li := c.Leader(1)
	hc := benchClient(64)
	val := bytes.Repeat([]byte("v"), 256)
	for i := range 2000 {
		if err := put(hc, c.URL(li), fmt.Sprintf("k%08d", i), val); err != nil {
			b.Fatal(err)
		}
	}
	for _, mode := range []struct {
		consistency string
		urls        []string
	}{
		{"linearizable", []string{c.URL(li)}},
		{"follower", c.URLs()},
		{"stale", c.URLs()},
	} {
		for _, clients := range []int{16, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", mode.consistency, clients), func(b *testing.B) {
				runClosedLoop(b, clients, func(w, i int) error {
					u := mode.urls[(w+i)%len(mode.urls)]
					return get(hc, fmt.Sprintf("%s/v1/kv/k%08d?consistency=%s", u, i%2000, mode.consistency))
				})
			})
		}
	}
}
