// Command kvbench drives load against a kvd cluster through the Go client
// (the smart router, so it measures what applications get) and reports
// throughput and latency percentiles.
//
//	kvbench [flags] put|get|mixed|txn
//
// Workloads: put writes random keys of the key space; get reads them
// (written first unless --preload=false); mixed reads with probability
// --read-ratio and writes otherwise; txn runs transfers: one transaction
// moving 1 between two counters (two adds), in two different groups by
// default (--txn-groups same keeps both in one group with a hash tag).
//
// A cluster on TLS takes --cacert (and --cert and --key where the nodes
// require client certificates); one that requires tokens takes --token
// (or KVD_TOKEN), with grants on --prefix at least.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/load"
	"github.com/kvd-project/kvd/internal/pki"
)

// config is what the flags say.
type config struct {
	workload    string
	endpoints   []string
	clients     int
	conns       int
	batchLanes  int
	keys        int
	prefix      string
	valueSize   int
	duration    time.Duration
	total       int
	warmup      time.Duration
	consistency kvd.Consistency
	policy      client.Policy
	readRatio   float64
	txnGroups   string
	preload     bool
	json        bool
	quiet       bool
	// tls is the clients' TLS settings (nil: the defaults); token their
	// bearer token ("": none).
	tls   *tls.Config
	token string
}

// report is the outcome of a run, as printed and as --json.
type report struct {
	Workload    string  `json:"workload"`
	Clients     int     `json:"clients"`
	Conns       int     `json:"conns"`
	Keys        int     `json:"keys"`
	ValueSize   int     `json:"value_size"`
	Consistency string  `json:"consistency,omitempty"`
	Policy      string  `json:"policy,omitempty"`
	Ops         int64   `json:"ops"`
	Errors      int64   `json:"errors"`
	Conflicts   int64   `json:"conflicts,omitempty"`
	Seconds     float64 `json:"seconds"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50ms       float64 `json:"p50_ms"`
	P90ms       float64 `json:"p90_ms"`
	P99ms       float64 `json:"p99_ms"`
	P999ms      float64 `json:"p999_ms"`
	Maxms       float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func parse(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("kvbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kvbench [flags] put|get|mixed|txn")
		fs.PrintDefaults()
	}
	endpoints := fs.String("endpoints", "http://127.0.0.1:7070", "comma-separated kvd HTTP endpoints (any one is enough)")
	fs.IntVar(&c.clients, "clients", 16, "concurrent clients (each with one request in flight)")
	fs.IntVar(&c.conns, "conns", 1, "client instances (routers with their own connection pools) the clients share")
	fs.IntVar(&c.batchLanes, "batch-lanes", client.DefaultConfig().BatchLanes, "requests in flight to one node before the client coalesces further ops into batches (negative: never coalesce)")
	fs.IntVar(&c.keys, "keys", 10000, "size of the key space")
	fs.StringVar(&c.prefix, "prefix", "bench/", "prefix of every key")
	fs.IntVar(&c.valueSize, "value-size", 256, "bytes per value")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to run (ignored with --total)")
	fs.IntVar(&c.total, "total", 0, "run this many operations instead of a duration")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "load before measuring (connections, leaders, caches)")
	consistency := fs.String("consistency", "linearizable", "reads: linearizable, follower or stale")
	policy := fs.String("policy", "p2c", "how follower and stale reads pick a replica: p2c, random or round-robin")
	fs.Float64Var(&c.readRatio, "read-ratio", 0.9, "mixed: the share of reads")
	fs.StringVar(&c.txnGroups, "txn-groups", "cross", "txn: cross (the two keys in different groups) or same (one group)")
	fs.BoolVar(&c.preload, "preload", true, "get, mixed: write every key first")
	fs.BoolVar(&c.json, "json", false, "print the result as one JSON object")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress line")
	cacert := fs.String("cacert", "", "`file`: the CA that signed the nodes' certificates (speaks HTTPS; default for https:// endpoints: the system's roots)")
	cert := fs.String("cert", "", "`file`: a client certificate to present (with --key)")
	key := fs.String("key", "", "`file`: the key of --cert")
	token := fs.String("token", os.Getenv("KVD_TOKEN"), "bearer token for a cluster that requires one, with grants on --prefix (also KVD_TOKEN)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return c, errors.New("name one workload: put, get, mixed or txn")
	}
	c.workload = fs.Arg(0)
	switch c.workload {
	case "put", "get", "mixed", "txn":
	default:
		return c, fmt.Errorf("unknown workload %q: put, get, mixed or txn", c.workload)
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.endpoints = append(c.endpoints, e)
		}
	}
	c.token = strings.TrimSpace(*token)
	var err error
	if *cacert != "" || *cert != "" || *key != "" {
		if c.tls, err = pki.ClientFiles(*cacert, *cert, *key); err != nil {
			return c, err
		}
		for i, e := range c.endpoints {
			// The default endpoint names http://: TLS flags mean https.
			c.endpoints[i] = strings.Replace(e, "http://", "https://", 1)
		}
	}
	if c.consistency, err = kvd.ParseConsistency(*consistency); err != nil {
		return c, err
	}
	p, err := client.ParsePolicy(*policy)
	if err != nil {
		return c, err
	}
	c.policy = p
	switch {
	case len(c.endpoints) == 0:
		return c, errors.New("--endpoints is empty")
	case c.clients < 1 || c.conns < 1 || c.keys < 1:
		return c, errors.New("--clients, --conns and --keys must be positive")
	case c.valueSize < 0 || c.valueSize > 1<<20:
		return c, errors.New("--value-size must be 0..1048576")
	case c.total < 0 || (c.total == 0 && c.duration <= 0):
		return c, errors.New("give a positive --duration or --total")
	case c.readRatio < 0 || c.readRatio > 1:
		return c, errors.New("--read-ratio must be between 0 and 1")
	case c.txnGroups != "cross" && c.txnGroups != "same":
		return c, errors.New("--txn-groups must be cross or same")
	case c.warmup < 0:
		return c, errors.New("--warmup must not be negative")
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvbench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kvbench: %v\n", err)
		return 1
	}
	if cfg.json {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "kvbench: %v\n", err)
			return 1
		}
	} else {
		printTable(stdout, rep)
	}
	if rep.Ops == 0 {
		fmt.Fprintf(stderr, "kvbench: no operation succeeded (first error: %s)\n", rep.FirstError)
		return 1
	}
	return 0
}

func bench(ctx context.Context, cfg config, stderr io.Writer) (report, error) {
	clients, err := connect(ctx, cfg)
	if err != nil {
		return report{}, err
	}
	defer closeAll(clients)
	w := newWorkload(cfg, clients)
	op, err := w.op()
	if err != nil {
		return report{}, err
	}
	if err := w.preload(ctx, stderr); err != nil {
		return report{}, err
	}
	if cfg.warmup > 0 {
		load.Run(ctx, cfg.clients, 0, cfg.warmup, nil, op)
	}
	w.conflicts.Store(0)
	if ctx.Err() != nil {
		return report{}, ctx.Err()
	}
	r := measure(ctx, cfg, op, stderr)
	rep := report{
		Workload: cfg.workload, Clients: cfg.clients, Conns: cfg.conns, Keys: cfg.keys, ValueSize: cfg.valueSize,
		Ops: r.Ops, Errors: r.Errors, Seconds: r.Elapsed.Seconds(), OpsPerSec: r.OpsPerSec,
		P50ms: ms(r.P50), P90ms: ms(r.P90), P99ms: ms(r.P99), P999ms: ms(r.P999), Maxms: ms(r.Max),
		Conflicts: w.conflicts.Load(),
	}
	if cfg.workload != "put" && cfg.workload != "txn" {
		rep.Consistency, rep.Policy = string(cfg.consistency), string(cfg.policy)
	}
	if r.FirstErr != nil {
		rep.FirstError = r.FirstErr.Error()
	}
	return rep, nil
}

// connect opens cfg.conns clients; on an error it closes those it
// opened.
func connect(ctx context.Context, cfg config) ([]*client.Client, error) {
	var clients []*client.Client
	for range cfg.conns {
		cc := client.DefaultConfig(cfg.endpoints...)
		cc.Consistency, cc.ReadPolicy = cfg.consistency, cfg.policy
		cc.TLS, cc.Token = cfg.tls, cfg.token
		cc.BatchLanes = cfg.batchLanes
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cl, err := client.New(cctx, cc)
		cancel()
		if err != nil {
			closeAll(clients)
			return nil, fmt.Errorf("connect to %v: %w", cfg.endpoints, err)
		}
		clients = append(clients, cl)
	}
	return clients, nil
}

// closeAll closes the clients, the last opened first.
func closeAll(clients []*client.Client) {
	for i := len(clients) - 1; i >= 0; i-- {
		clients[i].Close()
	}
}

// workload is what the operations of a run share: the clients (a worker
// uses one of them, by its number), the key space and the value written.
type workload struct {
	cfg     config
	clients []*client.Client
	value   []byte
	// conflicts counts the transfers retried after a conflict.
	conflicts atomic.Int64
}

func newWorkload(cfg config, clients []*client.Client) *workload {
	value := make([]byte, cfg.valueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	return &workload{cfg: cfg, clients: clients, value: value}
}

func (w *workload) kv(worker int) *client.Client { return w.clients[worker%len(w.clients)] }

func (w *workload) key(i int) string { return fmt.Sprintf("%s%08d", w.cfg.prefix, i) }

// op returns the operation cfg.workload runs.
func (w *workload) op() (func(ctx context.Context, i int) error, error) {
	switch w.cfg.workload {
	case "put":
		return w.put, nil
	case "get":
		return w.get, nil
	case "mixed":
		return func(ctx context.Context, i int) error {
			if rand.Float64() < w.cfg.readRatio {
				return w.get(ctx, i)
			}
			return w.put(ctx, i)
		}, nil
	case "txn":
		pairs, err := transferPairs(w.clients[0].CachedMap(), w.cfg)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, i int) error { return w.transfer(ctx, i, pairs) }, nil
	}
	return nil, nil
}

// put writes a random key of the key space.
func (w *workload) put(ctx context.Context, i int) error {
	_, err := w.kv(i).Put(ctx, w.key(rand.IntN(w.cfg.keys)), w.value)
	return err
}

// get reads a random key of the key space.
func (w *workload) get(ctx context.Context, i int) error {
	_, err := w.kv(i).Get(ctx, w.key(rand.IntN(w.cfg.keys)))
	if errors.Is(err, kvd.ErrNotFound) {
		return nil // a miss is an answer (--preload=false)
	}
	return err
}

// transfer moves 1 between the counters of a random pair. Two transfers
// that meet on a key conflict (nothing applied); like an application,
// the transfer is retried, and its latency includes the retries.
func (w *workload) transfer(ctx context.Context, i int, pairs [][2]string) error {
	p := pairs[rand.IntN(len(pairs))]
	for attempt := 0; ; attempt++ {
		_, err := w.kv(i).Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpAdd(p[0], -1), kvd.OpAdd(p[1], 1)}})
		if !errors.Is(err, kvd.ErrConflict) || attempt == 20 {
			return err
		}
		w.conflicts.Add(1)
		select {
		case <-time.After(time.Duration(rand.IntN(1+attempt)+1) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// preload writes every key of the key space first, for the workloads
// that read, unless --preload=false.
func (w *workload) preload(ctx context.Context, stderr io.Writer) error {
	cfg := w.cfg
	if !cfg.preload || (cfg.workload != "get" && cfg.workload != "mixed") {
		return nil
	}
	if !cfg.quiet {
		fmt.Fprintf(stderr, "preloading %d keys...\n", cfg.keys)
	}
	r := load.Run(ctx, min(cfg.clients, 64), cfg.keys, 0, nil, func(ctx context.Context, i int) error {
		_, err := w.kv(i).Put(ctx, w.key(i), w.value)
		return err
	})
	if r.Errors > 0 {
		return fmt.Errorf("preload: %d writes failed, first: %v", r.Errors, r.FirstErr)
	}
	return nil
}

// measure runs op for --total operations or --duration, showing progress
// unless --quiet.
func measure(ctx context.Context, cfg config, op func(ctx context.Context, i int) error, stderr io.Writer) load.Result {
	var progress load.Progress
	if !cfg.quiet {
		progress = func(done, errs int64, elapsed time.Duration) {
			fmt.Fprintf(stderr, "\r%6.1fs  %9d ops  %8.0f ops/s  %d errors ", elapsed.Seconds(), done, float64(done)/elapsed.Seconds(), errs)
		}
	}
	n, d := cfg.total, cfg.duration
	if n > 0 {
		d = 0
	}
	r := load.Run(ctx, cfg.clients, n, d, progress, op)
	if progress != nil {
		progress(r.Ops, r.Errors, r.Elapsed)
		fmt.Fprintln(stderr)
	}
	return r
}

// transferPairs picks pairs of counter keys for transfers: in different
// groups (cross) or in one group (same, by a hash tag).
func transferPairs(m api.Cluster, cfg config) ([][2]string, error) {
	groupOf := func(key string) uint64 {
		g, _ := m.GroupOf(kvd.Slot(key))
		return g
	}
	n := max(cfg.keys/2, 1)
	pairs := make([][2]string, 0, n)
	for i := range n {
		if cfg.txnGroups == "same" {
			pairs = append(pairs, [2]string{fmt.Sprintf("%s{acct%d}/a", cfg.prefix, i), fmt.Sprintf("%s{acct%d}/b", cfg.prefix, i)})
			continue
		}
		a := fmt.Sprintf("%sacct%d/a", cfg.prefix, i)
		found := false
		for j := 0; j < 64 && !found; j++ {
			b := fmt.Sprintf("%sacct%d/b%d", cfg.prefix, i, j)
			if groupOf(b) != groupOf(a) {
				pairs = append(pairs, [2]string{a, b})
				found = true
			}
		}
		if !found {
			return nil, errors.New("--txn-groups cross needs a cluster with at least two groups")
		}
	}
	return pairs, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func printTable(w io.Writer, r report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tclients\tops\terrors\tops/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\t")
	name := r.Workload
	if r.Consistency != "" {
		name += " (" + r.Consistency + ")"
	}
	fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
		name, r.Clients, r.Ops, r.Errors, r.OpsPerSec, r.P50ms, r.P90ms, r.P99ms, r.P999ms, r.Maxms)
	tw.Flush()
	if r.Conflicts > 0 {
		fmt.Fprintf(w, "%d transaction conflicts retried (included in the latencies)\n", r.Conflicts)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}
