// Command kvd-jepsen runs kvd's fault-injection suite: each workload
// under each nemesis, on a real cluster of kvd processes on loopback. It
// prints a one-line verdict per run and exits 0 only when every run's
// checks passed.
//
//	kvd-jepsen -workload all -nemesis mixed -time 60s
//	kvd-jepsen -workload register -nemesis partition-leader -nodes 5 -groups 3
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
	var o jepsen.Options
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
	soak := flag.Bool("soak", false, "run every workload at once on one cluster for -time, judging each node's resources (make soak: -groups 3 -time 30m)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kvd-jepsen: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	names := strings.Split(*workloads, ",")
	if *workloads == "all" {
		names = jepsen.WorkloadNames()
	}
	for _, n := range names {
		if _, err := jepsen.WorkloadByName(n); err != nil {
			fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
			return 2
		}
	}
	if *soak {
		names = []string{"soak"} // one run of them all
	}
	nems := strings.Split(*nemeses, ",")
	for _, n := range nems {
		if _, err := jepsen.NemesisByName(n); err != nil {
			fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
			return 2
		}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
		return 1
	}
	if o.Bin == "" {
		bin, err := jepsen.BuildKVD(o.Dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kvd-jepsen: %v\n", err)
			return 1
		}
		o.Bin, _ = filepath.Abs(bin)
	}
	o.Logf = func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := 0
	var lines []string
	for _, wn := range names {
		for _, nn := range nems {
			w, _ := jepsen.WorkloadByName(wn)
			ro := o
			ro.Workload, ro.Nemesis = w, nn
			run := jepsen.Run
			if *soak {
				run = jepsen.Soak
			}
			sum, err := run(ctx, ro)
			if err != nil {
				fmt.Printf("error: %s under %s: %v\n", wn, nn, err)
				lines = append(lines, fmt.Sprintf("error: %s under %s: %v", wn, nn, err))
				failed++
				continue
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
			lines = append(lines, sum.Line())
			if sum.Verdict != jepsen.Valid {
				failed++
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
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
