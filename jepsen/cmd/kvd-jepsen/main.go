// Command kvd-jepsen runs kvd's fault-injection suite: each workload
// under each nemesis, on a real cluster of kvd processes on loopback. It
// prints a one-line verdict per run and exits 0 only when every run's
// checks passed.
//
//	kvd-jepsen -workload all -nemesis mixed -time 60s
//	kvd-jepsen -workload register -nemesis partition-leader -nodes 5 -groups 3
//	kvd-jepsen -workload bank -nemesis kill -groups 3 -time 30s -backup
//	kvd-jepsen -workload bank -nemesis kill -groups 3 -secure
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/jepsen"
)

func main() { os.Exit(run()) }

func run() int {
	f, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
		return 2
	}
	if err := prepare(&f.o); err != nil {
		fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
		return 1
	}
	f.o.Logf = func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lines, failed := runAll(ctx, f)
	fmt.Println()
	for _, l := range lines {
		fmt.Println(l)
	}
	if failed > 0 {
		fmt.Printf("FAIL: %d of %d runs did not pass\n", failed, len(lines))
		return 1
	}
	fmt.Printf("PASS: all %d runs valid\n", len(lines))
	return 0
}

// flags are what the command line asks for.
type flags struct {
	o jepsen.Options
	// workloads and nemeses are the runs, one per pair; workloads is
	// just "soak" for a soak.
	workloads, nemeses []string
	soak               bool
}

// parseFlags parses the command line; an error is a usage error.
func parseFlags() (*flags, error) {
	f := &flags{}
	o := &f.o
	workloads := flag.String("workload", "all", "workloads, comma-separated: "+strings.Join(jepsen.WorkloadNames(), ", ")+", or all")
	nemeses := flag.String("nemesis", "mixed", "nemeses, comma-separated: "+strings.Join(jepsen.NemesisNames(), ", "))
	flag.IntVar(&o.Nodes, "nodes", 3, "nodes (3 or 5)")
	flag.IntVar(&o.Groups, "groups", 2, "shard groups")
	flag.DurationVar(&o.Duration, "time", 60*time.Second, "time each run's clients run")
	flag.IntVar(&o.Workers, "workers", 10, "concurrent clients")
	flag.DurationVar(&o.Quiet, "quiet", 3*time.Second, "time without faults before each fault")
	flag.DurationVar(&o.Hold, "hold", 6*time.Second, "time each fault is held")
	flag.StringVar(&o.Dir, "out", "jepsen-results", "results folder")
	flag.Uint64Var(&o.Seed, "seed", 0, "random seed (0: pick one)")
	flag.StringVar(&o.Bin, "kvd", "", "kvd binary (default: build ./cmd/kvd)")
	flag.BoolVar(&o.Backup, "backup", false, "take backups while the clients run, check each one's cut and restore each into a fresh cluster of another shape")
	flag.BoolVar(&o.Secure, "secure", false, "run the cluster on TLS (client certificates required, peers on mutual TLS) and auth (a token on every request; the clients' grants cover the workload's keys only)")
	flag.BoolVar(&f.soak, "soak", false, "run every workload at once on one cluster for -time, judging each node's resources (make soak: -groups 3 -time 30m)")
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	f.workloads = strings.Split(*workloads, ",")
	if *workloads == "all" {
		f.workloads = jepsen.WorkloadNames()
	}
	for _, n := range f.workloads {
		if _, err := jepsen.WorkloadByName(n); err != nil {
			return nil, err
		}
	}
	if f.soak {
		f.workloads = []string{"soak"} // one run of them all
	}
	f.nemeses = strings.Split(*nemeses, ",")
	for _, n := range f.nemeses {
		if _, err := jepsen.NemesisByName(n); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// prepare creates the results folder and, unless o names one, builds
// the kvd binary into it.
func prepare(o *jepsen.Options) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	if o.Bin == "" {
		bin, err := jepsen.BuildKVD(o.Dir)
		if err != nil {
			return err
		}
		o.Bin, _ = filepath.Abs(bin)
	}
	return nil
}

// runAll runs every workload under every nemesis, stopping once ctx
// ends. It returns each run's line and how many did not pass.
func runAll(ctx context.Context, f *flags) (lines []string, failed int) {
	for _, wn := range f.workloads {
		for _, nn := range f.nemeses {
			sum, err := runOne(ctx, f, wn, nn)
			if err != nil {
				line := fmt.Sprintf("error: %s under %s: %v", wn, nn, err)
				fmt.Println(line)
				lines = append(lines, line)
				failed++
				continue
			}
			lines = append(lines, sum.Line())
			if sum.Verdict != jepsen.Valid {
				failed++
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
	return lines, failed
}

// runOne runs workload wn under nemesis nn (a soak if f.soak) and prints
// its checks and the faults it skipped.
func runOne(ctx context.Context, f *flags, wn, nn string) (*jepsen.Summary, error) {
	w, _ := jepsen.WorkloadByName(wn)
	ro := f.o
	ro.Workload, ro.Nemesis = w, nn
	run := jepsen.Run
	if f.soak {
		run = jepsen.Soak
	}
	sum, err := run(ctx, ro)
	if err != nil {
		return nil, err
	}
	for _, ch := range sum.Checks {
		fmt.Printf("  %s: %s: %s\n", ch.Checker, ch.Verdict, ch.Summary)
		for _, e := range ch.Errors {
			fmt.Printf("    %s\n", e)
		}
	}
	for _, s := range sum.Skipped {
		fmt.Printf("  skipped fault: %s\n", s)
	}
	return sum, nil
}
