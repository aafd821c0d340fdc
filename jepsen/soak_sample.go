package jepsen

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/api"
)

// sampler samples the resources of a cluster's nodes at an interval,
// from the start of the run until stopped.
type sampler struct {
	c        *Cluster
	h        *History
	interval time.Duration
	live     *liveData
	hc       *http.Client

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	// mu protects taken.
	mu    sync.Mutex
	taken []ResourceSample
}

func newSampler(c *Cluster, h *History, interval time.Duration, live *liveData) *sampler {
	return &sampler{c: c, h: h, interval: interval, live: live,
		hc: c.secured(&http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}, "")}
}

// start samples at once and then every interval, on a goroutine that
// stop ends.
func (s *sampler) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.interval)
		defer t.Stop()
		for {
			s.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stop ends sampling and waits for the round in progress; it is
// idempotent.
func (s *sampler) stop() {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
	})
}

func (s *sampler) samples() []ResourceSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ResourceSample(nil), s.taken...)
}

// round samples every node, then the cluster.
func (s *sampler) round(ctx context.Context) {
	var out []ResourceSample
	nodes := s.c.NodeList()
	for _, n := range nodes {
		smp := ResourceSample{T: sec(s.h.Now()), Node: n.ID, Values: map[string]float64{}}
		if n.Running() {
			smp.Pid = n.Pid()
			s.process(ctx, n.URL(), smp.Pid, smp.Values)
		}
		disk(n.DataDir, smp.Values)
		out = append(out, smp)
	}
	cl := ResourceSample{T: sec(s.h.Now()), Node: clusterNode, Values: map[string]float64{}}
	keys, bytes := s.live.figures()
	cl.Values["live_keys"], cl.Values["live_data"] = float64(keys), float64(bytes)/(1<<20)
	for _, n := range nodes {
		if !n.Running() {
			continue
		}
		var list api.TxnList
		if s.getJSON(ctx, n.URL()+"/v1/admin/txns", &list) == nil && len(list.Unreached) == 0 {
			cl.Values["txn_records"] = float64(len(list.Txns))
			break
		}
	}
	out = append(out, cl)
	s.mu.Lock()
	s.taken = append(s.taken, out...)
	s.mu.Unlock()
}

// process reads a running node's memory from /proc and its goroutines,
// descriptors and heap from its metrics (the descriptors from /proc when
// the metrics do not answer: a paused node).
func (s *sampler) process(ctx context.Context, base string, pid int, v map[string]float64) {
	const kib = 1.0 / 1024 // kB in /proc/PID/status, to MiB
	if st, err := procStatus(pid); err == nil {
		if x, ok := st["VmRSS"]; ok {
			v["rss"] = x * kib
		}
		if x, ok := st["RssAnon"]; ok {
			v["rss_anon"] = x * kib
		}
	}
	m, err := s.metrics(ctx, base, "go_goroutines", "process_open_fds", "go_memstats_heap_inuse_bytes", "kvd_history_events")
	if err == nil {
		if x, ok := m["kvd_history_events"]; ok {
			v["history_events"] = x
		}
		if x, ok := m["go_goroutines"]; ok {
			v["goroutines"] = x
		}
		if x, ok := m["process_open_fds"]; ok {
			v["open_fds"] = x
		}
		if x, ok := m["go_memstats_heap_inuse_bytes"]; ok {
			v["heap"] = x / (1 << 20)
		}
	}
	if _, ok := v["open_fds"]; !ok {
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
			v["open_fds"] = float64(len(fds))
		}
	}
}

// procStatus reads the kB figures of /proc/PID/status.
func procStatus(pid int) (map[string]float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		if x, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] = x
		}
	}
	return out, nil
}

// metrics returns the named metrics of a node, each summed over its
// labels.
func (s *sampler) metrics(ctx context.Context, base string, names ...string) (map[string]float64, error) {
	body, err := s.get(ctx, base+"/metrics")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return parseMetrics(body, names...)
}

// parseMetrics sums the samples of the named metrics in the Prometheus
// text format.
func parseMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// name{labels} value [timestamp]
		end := strings.IndexAny(line, "{ ")
		if end < 0 || !want[line[:end]] {
			continue
		}
		name, rest := line[:end], line[end:]
		if rest[0] == '{' {
			rest = rest[strings.LastIndex(rest, "}")+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metric %s: no value", name)
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		out[name] += x
	}
	return out, sc.Err()
}

// getJSON decodes the JSON answer to a GET of u into into.
func (s *sampler) getJSON(ctx context.Context, u string, into any) error {
	body, err := s.get(ctx, u)
	if err != nil {
		return err
	}
	defer body.Close()
	return json.NewDecoder(body).Decode(into)
}

// get returns the body of the answer to a GET of u, which must be 200 OK;
// the caller closes it.
func (s *sampler) get(ctx context.Context, u string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return resp.Body, nil
}

// disk adds the space a node's data directory takes: in all, in its
// Raft logs (raft.db, or raft-wal's wal/), its snapshots and its state files (state.db). The
// space is what the files take on disk, as the node counts it: bbolt
// extends its files sparsely.
func disk(dir string, v map[string]float64) {
	var all, raftLog, snaps, state int64
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil // a file removed under the walk (an old snapshot)
		}
		info, err := e.Info()
		if err != nil {
			return nil
		}
		n := info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n = st.Blocks * 512
		}
		all += n
		switch {
		case e.Name() == "raft.db" || strings.Contains(filepath.ToSlash(path), "/wal/"):
			raftLog += n
		case e.Name() == "state.db":
			state += n
		case strings.Contains(filepath.ToSlash(path), "/snapshots/"):
			snaps += n
		}
		return nil
	})
	const mib = 1 << 20
	v["data_dir"], v["raft_log"], v["snapshots"], v["state"] = float64(all)/mib, float64(raftLog)/mib, float64(snaps)/mib, float64(state)/mib
}
