// Command kvd-mutants proves that the fault-injection suite catches real
// bugs. For each mutant (a bug planted in kvd behind
// failpoint.Mutant, see internal/failpoint) it builds kvd with that bug
// switched on, checks that the binary reports it, and runs the workload
// and nemesis chosen to catch it until one run is invalid, at most 3 or 4
// times (-attempts). It prints a table (mutant, caught, by which workload
// and nemesis, attempts, time to catch) and exits 1 if any mutant got
// through. docs/testing.md lists the mutants and what catches each.
//
//	kvd-mutants                                   # every mutant
//	kvd-mutants -list
//	kvd-mutants -only ack-before-commit -attempts 1
//	kvd-mutants -only follower-read-no-wait -workload register -nemesis none -time 20s
//	kvd-mutants -control                          # the same runs on kvd without a mutant: all must pass
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
	"github.com/kvd-project/kvd/jepsen"
)

// hunt is how a mutant is hunted: the run that catches it fastest.
type hunt struct {
	mutant   string
	workload string
	// newWorkload, if set, makes the workload (a variant of the one
	// named); else it is looked up by name.
	newWorkload func() jepsen.Workload
	// nemeses are the nemeses that catch the mutant, best first; the
	// hunt uses the first the harness knows (newer nemeses catch some
	// mutants far more often than the older ones they replace).
	nemeses []string
	nemesis string // the one chosen
	// time is each run's client time; quiet and hold shape the fault
	// schedule (0: the harness's defaults).
	time, quiet, hold time.Duration
	// groups and workers shape the cluster and the load (0: the
	// harness's defaults, 2 groups and 10 workers).
	groups, workers int
	// attempts bounds the runs before the mutant counts as not caught.
	attempts int
	// why says what makes the run see the bug.
	why string
}

// hunts lists every mutant with the runs that catch it. Times and
// attempts are chosen so that `make mutants` takes about 5 minutes on two
// cores when each mutant is caught at once, and about 20 if every hunt
// used all its attempts (-budget stops it at 25).
var hunts = []hunt{
	{mutant: failpoint.MutantFollowerReadNoWait, workload: "register", nemeses: []string{"none"}, time: 15 * time.Second, attempts: 3,
		why: "a follower read just after an acknowledged write misses it: followers learn the commit index one round later"},
	{mutant: failpoint.MutantReadOnlyTxnIgnoresLocks, workload: "bank", nemeses: []string{"none"}, time: 10 * time.Second, attempts: 3,
		why: "a read between a transfer's decision and its resolution in the other group sees half of it"},
	{mutant: failpoint.MutantLeaderReadNoQuorum, workload: "register", nemeses: []string{"pause-leader"}, time: 30 * time.Second,
		// Whether the woken leader answers the queued reads before raft's
		// lease check makes it step down is a race inside the process,
		// decided once per pause: the reads win it on a busy node (with
		// 10 clients on an idle machine, almost never; with 40, in about
		// two pauses of five). Short pauses, often: 4 or 5 per run.
		workers: 40, quiet: time.Second, hold: 2 * time.Second, attempts: 4,
		why: "a paused leader wakes up still believing it leads and answers reads queued while it slept from its old state " +
			"(the deposed-leader probe's, after writes through the new leader, and the workload's)"},
	{mutant: failpoint.MutantAbsentRecordAborted, workload: "bank", nemeses: []string{"slow-link", "restart"}, time: 30 * time.Second,
		quiet: time.Second, hold: 4 * time.Second, attempts: 4,
		// Many accounts: a transfer through the slowed node reads
		// balances a second or more old, and with the default 8 most
		// have changed by its prepare, which then votes no. Short faults,
		// often: each draws its delay and link afresh, and only some
		// delay a record group's prepare enough.
		newWorkload: func() jepsen.Workload { return &jepsen.BankWorkload{Accounts: 32} },
		why: "a coordinator's prepare at the record group arrives late (a slow link); readers that met the other group's lock meanwhile " +
			"abort the transfer there, then it commits in the record group (bank with 32 accounts, 1 s between 4 s faults)"},
	{mutant: failpoint.MutantRecoverCommitsPending, workload: "bank", nemeses: []string{"crash-coordinator", "kill"}, time: 20 * time.Second, attempts: 3,
		why: "a coordinator dies between prepare and decision; the janitor must abort its pending record and the mutant commits it: " +
			"the janitor probe finds its own transaction written (under kill, bank sees it only if a group had voted no)"},
	{mutant: failpoint.MutantRecoverAbortsCommitted, workload: "bank", nemeses: []string{"none"}, time: 10 * time.Second, attempts: 3,
		why: "a reader meets a lock of a transfer already committed in its record group and drops it"},
	{mutant: failpoint.MutantAckBeforeCommit, workload: "set", nemeses: []string{"partition-leader"}, time: 20 * time.Second, attempts: 3,
		why: "an isolated leader appends inserts it cannot commit; when it steps down it acknowledges them, and they are lost"},
	{mutant: failpoint.MutantServeBeforeCatchUp, workload: "stale", nemeses: []string{"kill"}, time: 30 * time.Second, attempts: 3,
		why: "a replica killed and restarted rebuilds an older state from its snapshot and serves stale reads from it at once"},
}

// outcome is what the hunt for one mutant found.
type outcome struct {
	hunt     hunt
	caught   bool
	attempts int
	took     time.Duration
	// verdicts lists each attempt's verdict; dir is the catching run's
	// report folder.
	verdicts []string
	dir      string
	detail   string
	err      error
}

func main() { os.Exit(run()) }

func run() int {
	f, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd-mutants: %v\n", err)
		return 2
	}
	selected, err := selectHunts(f.only, f.ov)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd-mutants: %v\n", err)
		return 2
	}
	if f.list {
		listHunts(selected)
		return 0
	}
	outDir, err := filepath.Abs(f.out)
	if err == nil {
		err = os.MkdirAll(filepath.Join(outDir, "bin"), 0o755)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd-mutants: %v\n", err)
		return 1
	}
	// On SIGINT or SIGTERM the run in progress stops its cluster before
	// the command exits: kvd processes live in their own process groups.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, f.budget)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }

	if f.control {
		return runControl(ctx, selected, outDir, logf)
	}
	start := time.Now()
	var outs []outcome
	for _, h := range selected {
		o := huntMutant(ctx, h, outDir, f.keep, logf)
		outs = append(outs, o)
		if o.caught {
			logf("%s: caught by %s under %s after %d attempt(s), %s", h.mutant, h.workload, h.nemesis, o.attempts, o.took.Round(time.Second))
		} else {
			logf("%s: NOT caught after %d attempt(s) (%v)", h.mutant, o.attempts, o.verdicts)
		}
	}
	return report(outs, time.Since(start))
}

// flags are what the command line asks for.
type flags struct {
	ov                  overrides
	only, out           string
	budget              time.Duration
	control, keep, list bool
}

// parseFlags parses the command line; an error is a usage error.
func parseFlags() (*flags, error) {
	f := &flags{}
	ov := &f.ov
	flag.StringVar(&f.only, "only", "", "mutants to hunt, comma-separated (default: all): "+strings.Join(failpoint.Mutants, ", "))
	flag.IntVar(&ov.attempts, "attempts", 0, "runs per mutant before it counts as not caught (default: each hunt's own, 3 or 4)")
	flag.StringVar(&f.out, "out", "jepsen-results/mutants", "folder for the binaries and the runs' reports")
	flag.StringVar(&ov.workload, "workload", "", "override every hunt's workload")
	flag.StringVar(&ov.nemesis, "nemesis", "", "override every hunt's nemesis")
	flag.DurationVar(&ov.time, "time", 0, "override every hunt's run time")
	flag.DurationVar(&ov.quiet, "quiet", 0, "override every hunt's time without faults before each fault")
	flag.DurationVar(&ov.hold, "hold", 0, "override every hunt's time each fault is held")
	flag.IntVar(&ov.groups, "groups", 0, "override every hunt's number of groups")
	flag.IntVar(&ov.workers, "workers", 0, "override every hunt's number of clients")
	flag.DurationVar(&f.budget, "budget", 25*time.Minute, "stop hunting after this long (mutants not hunted by then count as not caught)")
	flag.BoolVar(&f.control, "control", false, "run each hunt once on kvd without a mutant instead: every run must pass")
	flag.BoolVar(&f.keep, "keep", false, "keep the cluster data of runs that caught their mutant")
	flag.BoolVar(&f.list, "list", false, "list the mutants and how each is hunted, and exit")
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	if ov.attempts < 0 || ov.groups < 0 || ov.workers < 0 {
		return nil, errors.New("-attempts, -groups and -workers must not be negative")
	}
	return f, nil
}

// listHunts prints the hunts and how each is run.
func listHunts(selected []hunt) {
	for _, h := range selected {
		shape := ""
		if h.groups > 0 {
			shape += fmt.Sprintf(", %d groups", h.groups)
		}
		if h.workers > 0 {
			shape += fmt.Sprintf(", %d workers", h.workers)
		}
		fmt.Printf("%s: %s under %s (of %v), %v per run%s, up to %d runs\n  %s\n", h.mutant, h.workload, h.nemesis, h.nemeses, h.time, shape, h.attempts, h.why)
	}
}

// report prints the hunts' table, where each caught mutant's run is, and
// the count; it returns the exit code: 1 if a mutant got through.
func report(outs []outcome, took time.Duration) int {
	fmt.Println()
	printTable(os.Stdout, outs)
	fmt.Println()
	for _, o := range outs {
		if o.caught {
			fmt.Printf("%s: %s\n", o.hunt.mutant, o.dir)
		}
	}
	missed := 0
	for _, o := range outs {
		if !o.caught {
			missed++
		}
	}
	fmt.Printf("\n%d of %d mutants caught in %s\n", len(outs)-missed, len(outs), took.Round(time.Second))
	if missed > 0 {
		fmt.Printf("FAIL: %d mutant(s) not caught\n", missed)
		return 1
	}
	return 0
}

// overrides are the command line's changes to every hunt; a zero field
// changes nothing.
type overrides struct {
	workload, nemesis         string
	time, quiet, hold         time.Duration
	groups, workers, attempts int
}

// selectHunts picks the hunts named in only (all if empty), chooses each
// one's nemesis and applies the overrides.
func selectHunts(only string, ov overrides) ([]hunt, error) {
	var names []string
	if only != "" {
		names = strings.Split(only, ",")
	}
	for _, n := range names {
		if !slices.Contains(failpoint.Mutants, n) {
			return nil, fmt.Errorf("unknown mutant %q (%s)", n, strings.Join(failpoint.Mutants, ", "))
		}
	}
	if ov.workload != "" {
		if _, err := jepsen.WorkloadByName(ov.workload); err != nil {
			return nil, err
		}
	}
	if ov.nemesis != "" {
		if _, err := jepsen.NemesisByName(ov.nemesis); err != nil {
			return nil, err
		}
	}
	set := func(dst *time.Duration, v time.Duration) {
		if v > 0 {
			*dst = v
		}
	}
	setInt := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	var out []hunt
	for _, h := range hunts {
		if len(names) > 0 && !slices.Contains(names, h.mutant) {
			continue
		}
		for _, n := range h.nemeses {
			if _, err := jepsen.NemesisByName(n); err == nil {
				h.nemesis = n
				break
			}
		}
		if h.nemesis == "" {
			return nil, fmt.Errorf("%s: the harness knows none of the nemeses %v", h.mutant, h.nemeses)
		}
		if ov.workload != "" {
			h.workload, h.newWorkload = ov.workload, nil
		}
		if ov.nemesis != "" {
			h.nemesis = ov.nemesis
		}
		set(&h.time, ov.time)
		set(&h.quiet, ov.quiet)
		set(&h.hold, ov.hold)
		setInt(&h.groups, ov.groups)
		setInt(&h.workers, ov.workers)
		setInt(&h.attempts, ov.attempts)
		out = append(out, h)
	}
	return out, nil
}

// huntMutant builds h's mutant and runs its hunt until a run is invalid,
// at most h.attempts times.
func huntMutant(ctx context.Context, h hunt, outDir string, keep bool, logf func(string, ...any)) outcome {
	o := outcome{hunt: h}
	logf("== %s: building", h.mutant)
	bin, err := kvdproc.BuildWith(filepath.Join(outDir, "bin"), "kvd-"+h.mutant, "failpoints",
		"-X github.com/kvd-project/kvd/internal/failpoint.mutant="+h.mutant)
	if err == nil {
		err = checkMutant(ctx, bin, h.mutant, filepath.Join(outDir, "check-"+h.mutant))
	}
	if err != nil {
		o.err = err
		o.verdicts = append(o.verdicts, "error: "+err.Error())
		return o
	}
	start := time.Now()
	for o.attempts < h.attempts && ctx.Err() == nil {
		o.attempts++
		logf("== %s: attempt %d of %d: %s under %s for %v", h.mutant, o.attempts, h.attempts, h.workload, h.nemesis, h.time)
		sum, err := runOnce(ctx, h, bin, filepath.Join(outDir, h.mutant), logf)
		if err != nil {
			o.verdicts = append(o.verdicts, "error: "+err.Error())
			logf("   could not run: %v", err)
			continue
		}
		o.verdicts = append(o.verdicts, string(sum.Verdict))
		for _, ch := range sum.Checks {
			logf("   %s: %s: %s", ch.Checker, ch.Verdict, ch.Summary)
			for _, e := range ch.Errors[:min(len(ch.Errors), 3)] {
				logf("     %s", e)
			}
		}
		if sum.Verdict == jepsen.Invalid {
			o.caught, o.took, o.dir = true, time.Since(start), sum.Dir
			for _, ch := range sum.Checks {
				if ch.Verdict == jepsen.Invalid && len(ch.Errors) > 0 {
					o.detail = ch.Errors[0]
					break
				}
				if ch.Verdict == jepsen.Invalid {
					o.detail = ch.Summary
				}
			}
			if !keep {
				os.RemoveAll(filepath.Join(sum.Dir, "cluster")) // the logs and reports stay
			}
			break
		}
	}
	if !o.caught {
		o.took = time.Since(start)
	}
	return o
}

// runSlack bounds what a run may take beyond its client time.
const runSlack = 4 * time.Minute

// runOnce runs h once against bin.
func runOnce(ctx context.Context, h hunt, bin, dir string, logf func(string, ...any)) (*jepsen.Summary, error) {
	var w jepsen.Workload
	if h.newWorkload != nil {
		w = h.newWorkload()
	} else {
		var err error
		if w, err = jepsen.WorkloadByName(h.workload); err != nil {
			return nil, err
		}
	}
	// A run takes its time plus cluster start, recovery and checks; one
	// that hangs past this is cut short rather than stall every hunt.
	ctx, cancel := context.WithTimeout(ctx, h.time+runSlack)
	defer cancel()
	return jepsen.Run(ctx, jepsen.Options{Bin: bin, Dir: dir, Workload: w, Nemesis: h.nemesis,
		Duration: h.time, Quiet: h.quiet, Hold: h.hold, Groups: h.groups, Workers: h.workers, Logf: logf})
}

// checkMutant starts one node of bin and asks it which mutant it
// carries: a mutant that did not get into the binary would pass every
// run and prove nothing.
func checkMutant(ctx context.Context, bin, want, dir string) error {
	defer os.RemoveAll(dir)
	c, err := kvdproc.NewCluster(bin, dir, 1, 1, 1)
	if err != nil {
		return err
	}
	defer c.KillAll()
	if err := c.StartAll(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitAllReady(rctx); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, c.Nodes[0].URL()+"/debug/failpoints/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var got struct {
		Mutant string `json:"mutant"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return fmt.Errorf("ask %s for its mutant: %w", bin, err)
	}
	if got.Mutant != want {
		return fmt.Errorf("%s carries mutant %q, want %q", bin, got.Mutant, want)
	}
	return nil
}

// runControl runs every hunt once on kvd built without a mutant: a hunt
// that fails there would "catch" every mutant and prove nothing.
func runControl(ctx context.Context, selected []hunt, outDir string, logf func(string, ...any)) int {
	bin, err := kvdproc.BuildWith(filepath.Join(outDir, "bin"), "kvd", "failpoints", "")
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd-mutants: %v\n", err)
		return 1
	}
	failed := 0
	var lines []string
	for _, h := range selected {
		if ctx.Err() != nil {
			break
		}
		sum, err := runOnce(ctx, h, bin, filepath.Join(outDir, "control"), logf)
		var line string
		switch {
		case err != nil:
			line = fmt.Sprintf("error: %s under %s (hunt for %s): %v", h.workload, h.nemesis, h.mutant, err)
		default:
			line = fmt.Sprintf("%s (hunt for %s)", sum.Line(), h.mutant)
			for _, ch := range sum.Checks {
				logf("   %s: %s: %s", ch.Checker, ch.Verdict, ch.Summary)
			}
		}
		if err != nil || sum.Verdict != jepsen.Valid {
			failed++
		}
		lines = append(lines, line)
		logf("%s", line)
	}
	fmt.Println()
	for _, l := range lines {
		fmt.Println(l)
	}
	if failed > 0 || ctx.Err() != nil {
		fmt.Printf("FAIL: %d control run(s) did not pass\n", failed)
		return 1
	}
	fmt.Printf("PASS: all %d control runs valid\n", len(lines))
	return 0
}

// printTable writes the summary table.
func printTable(w io.Writer, outs []outcome) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MUTANT\tCAUGHT\tBY\tATTEMPTS\tTIME TO CATCH\tEVIDENCE")
	for _, o := range outs {
		caught, took, evidence := "no", "-", strings.Join(o.verdicts, ", ")
		if o.caught {
			caught, took, evidence = "yes", o.took.Round(time.Second).String(), o.detail
		}
		if o.err != nil {
			evidence = o.err.Error()
		}
		if len(evidence) > 100 {
			evidence = evidence[:97] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s + %s\t%d\t%s\t%s\n", o.hunt.mutant, caught, o.hunt.workload, o.hunt.nemesis, o.attempts, took, evidence)
	}
	tw.Flush()
}
