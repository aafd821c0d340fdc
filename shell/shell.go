package shell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/wire"
)

// Exit codes of kvcli.
const (
	ExitOK           = 0
	ExitError        = 1
	ExitUsage        = 2
	ExitNotFound     = 3
	ExitPrecondition = 4
	ExitUnavailable  = 5
	ExitUnknown      = 6
)

// UsageError is a command used wrongly.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

// ExitCode maps an error to kvcli's exit code.
func ExitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue), errors.Is(err, kvd.ErrInvalid), errors.Is(err, kvd.ErrTooLarge):
		return ExitUsage
	case errors.Is(err, kvd.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, kvd.ErrPreconditionFailed), errors.Is(err, kvd.ErrCompareFailed), errors.Is(err, kvd.ErrConflict),
		errors.Is(err, kvd.ErrNotANumber), errors.Is(err, kvd.ErrIdempotencyMismatch):
		return ExitPrecondition
	case errors.Is(err, kvd.ErrUnknownOutcome):
		return ExitUnknown
	case errors.Is(err, kvd.ErrUnavailable), errors.Is(err, kvd.ErrWrongGroup), errors.Is(err, kvd.ErrInsufficientStorage):
		return ExitUnavailable
	}
	return ExitError
}

// Explain turns an error into one line a person can act on.
func Explain(err error) string {
	var ue *UsageError
	var ce *client.Error
	detail := err.Error()
	if errors.As(err, &ce) {
		detail = ce.Message
	}
	// The category is said in words below: drop it from the detail.
	for _, sentinel := range []error{kvd.ErrNotFound, kvd.ErrPreconditionFailed, kvd.ErrUnavailable, kvd.ErrUnknownOutcome,
		kvd.ErrConflict, kvd.ErrInvalid, kvd.ErrTooLarge, kvd.ErrCompareFailed, kvd.ErrCompacted, kvd.ErrNotANumber, kvd.ErrIdempotencyMismatch,
		kvd.ErrOverloaded, kvd.ErrInsufficientStorage, kvd.ErrForbidden} {
		detail = strings.TrimSuffix(detail, ": "+sentinel.Error())
	}
	if ce != nil && ce.Node != "" {
		detail += " (answered by node " + ce.Node + ")"
	}
	switch {
	case errors.As(err, &ue):
		return ue.Msg
	case errors.Is(err, kvd.ErrNotFound):
		return "not found: " + detail
	case errors.Is(err, kvd.ErrCompareFailed):
		var te *client.TxnError
		if errors.As(err, &te) && len(te.Failed) > 0 {
			return fmt.Sprintf("not committed: compare %v did not hold; nothing was written", te.Failed)
		}
		return "not committed: a compare did not hold; nothing was written"
	case errors.Is(err, kvd.ErrPreconditionFailed):
		return "precondition failed, nothing was written: " + detail
	case errors.Is(err, kvd.ErrConflict):
		return "conflict: another transaction holds the key; nothing was written, try again: " + detail
	case errors.Is(err, kvd.ErrUnknownOutcome):
		return "outcome unknown: the write may or may not have been applied; read the key before retrying: " + detail
	case errors.Is(err, kvd.ErrOverloaded):
		return "overloaded, nothing was applied: " + detail + "; try again in a moment"
	case errors.Is(err, kvd.ErrUnavailable):
		return "unavailable, nothing was applied: " + detail + `; try again, or check the cluster with "kvcli health"`
	case errors.Is(err, kvd.ErrInsufficientStorage):
		return "insufficient storage, nothing was applied: " + detail + `; reads still work ("kvcli status" shows the disk)`
	case errors.Is(err, kvd.ErrForbidden):
		return "forbidden: " + detail
	case errors.Is(err, kvd.ErrTooLarge):
		return "too large: " + detail
	case errors.Is(err, kvd.ErrCompacted):
		return "compacted: " + detail
	case errors.Is(err, kvd.ErrNotANumber):
		return "not a number: " + detail
	case errors.Is(err, kvd.ErrIdempotencyMismatch):
		return "idempotency key reused for a different request: " + detail
	case errors.Is(err, kvd.ErrInvalid):
		return "invalid: " + detail
	}
	return detail
}

// Options are the global options of kvcli.
type Options struct {
	JSON        bool
	Raw         bool
	Consistency kvd.Consistency
	Timeout     time.Duration
}

// Shell runs kvcli commands against a cluster.
type Shell struct {
	c   *client.Client
	o   Options
	in  io.Reader
	out io.Writer
	// tx is the interactive transaction, if one is open.
	tx *client.Tx
}

// New returns a shell over c; stdin feeds "put KEY -".
func New(c *client.Client, o Options, stdin io.Reader, stdout io.Writer) *Shell {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Consistency == "" {
		o.Consistency = kvd.Linearizable
	}
	return &Shell{c: c, o: o, in: stdin, out: stdout}
}

// InTxn reports whether an interactive transaction is open.
func (s *Shell) InTxn() bool { return s.tx != nil }

// openTxn describes the open transaction's uncommitted work, "" if none
// is open.
func (s *Shell) openTxn() string {
	if s.tx == nil {
		return ""
	}
	reads, writes := s.tx.Pending()
	return fmt.Sprintf("a transaction is open (%d keys read, %d writes queued, nothing committed)", reads, writes)
}

// command is one kvcli command.
type command struct {
	name    string
	args    string
	summary string
	flags   map[string]bool // flag name -> takes a value
	shell   bool            // only in the interactive shell
	// endless commands run until interrupted, not within --timeout.
	endless bool
	run     func(s *Shell, ctx context.Context, a *args) error
}

var commands []*command

func init() {
	commands = []*command{
		{name: "get", args: "KEY [--consistency linearizable|follower|stale]", summary: "print a key's value",
			flags: map[string]bool{"consistency": true}, run: (*Shell).get},
		{name: "put", args: "KEY VALUE|@FILE|- [--if-version N] [--create-only] [--ttl D]", summary: "store a value (from the argument, a file, or standard input); --ttl 30s makes it vanish after that",
			flags: map[string]bool{"if-version": true, "create-only": false, "ttl": true}, run: (*Shell).put},
		{name: "add", args: "KEY DELTA", summary: "add DELTA to the integer at KEY (absent: 0) and print the new value", run: (*Shell).add},
		{name: "del", args: "KEY [--if-version N]", summary: "delete a key", flags: map[string]bool{"if-version": true}, run: (*Shell).del},
		{name: "scan", args: "[PREFIX] [--start KEY] [--end KEY] [--limit N] [--all] [--keys-only]", summary: "list keys in order, a page at a time",
			flags: map[string]bool{"start": true, "end": true, "limit": true, "all": false, "keys-only": false, "consistency": true}, run: (*Shell).scan},
		{name: "cas", args: "KEY OLD NEW", summary: "replace KEY's value with NEW if it is OLD (NEW is written atomically)", run: (*Shell).cas},
		{name: "txn", args: "[FILE|-] | list | abort ID", summary: "run a transaction read as JSON (the body of POST /v1/txn) from a file or standard input; \"txn list\" shows the transactions holding locks, \"txn abort ID\" aborts a stuck one (unless it committed) and releases its locks", run: (*Shell).txnJSON},
		{name: "begin", summary: "open a transaction: get records versions, put and del are buffered until commit", shell: true, run: (*Shell).begin},
		{name: "commit", summary: "commit the open transaction, if nothing it read has changed", shell: true, run: (*Shell).commit},
		{name: "abort", summary: "drop the open transaction", shell: true, run: (*Shell).abort},
		{name: "watch", args: "[PREFIX] [--since CURSOR] [--count N]", summary: "print changes to keys with PREFIX as they happen, until interrupted (Ctrl-C)",
			flags: map[string]bool{"since": true, "count": true}, endless: true, run: (*Shell).watch},
		{name: "cluster", summary: "show the nodes, groups, leaders and slot ranges", run: (*Shell).cluster},
		{name: "status", args: "[NODE]", summary: "show a node's replicas: role, term, indexes", run: (*Shell).status},
		{name: "health", summary: "check every node's liveness and readiness", run: (*Shell).health},
		{name: "help", args: "[COMMAND]", summary: "list the commands, or explain one", run: (*Shell).help},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// CommandNames lists the commands, for completion.
func CommandNames(interactive bool) []string {
	var out []string
	for _, c := range commands {
		if interactive || !c.shell {
			out = append(out, c.name)
		}
	}
	if interactive {
		out = append(out, "exit")
	}
	sort.Strings(out)
	return out
}

// args are a command's parsed arguments.
type args struct {
	pos   []string
	flags map[string]string
}

func (a *args) has(name string) bool { _, ok := a.flags[name]; return ok }

// parse separates flags (--name, --name=value, --name value) from
// positional arguments, in any order; "--" ends the flags.
func parse(c *command, words []string) (*args, error) {
	a := &args{flags: map[string]string{}}
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			a.pos = append(a.pos, words[i+1:]...)
			break
		}
		if !strings.HasPrefix(w, "--") {
			a.pos = append(a.pos, w)
			continue
		}
		name, val, hasVal := strings.Cut(w[2:], "=")
		takes, ok := c.flags[name]
		if !ok {
			return nil, usagef("%s: unknown flag --%s (usage: %s %s)", c.name, name, c.name, c.args)
		}
		if takes && !hasVal {
			if i+1 >= len(words) {
				return nil, usagef("%s: --%s needs a value", c.name, name)
			}
			i++
			val = words[i]
		}
		a.flags[name] = val
	}
	return a, nil
}

func (a *args) want(c *command, min, max int) error {
	if len(a.pos) < min || len(a.pos) > max {
		return usagef("usage: %s %s", c.name, c.args)
	}
	return nil
}

// Exec runs one command line, already split into words.
func (s *Shell) Exec(ctx context.Context, words []string, interactive bool) error {
	if len(words) == 0 {
		return nil
	}
	c := lookup(words[0])
	if c == nil {
		return usagef("unknown command %q; try \"help\"", words[0])
	}
	if c.shell && !interactive {
		return usagef("%s works in the interactive shell only; for a one-shot transaction use \"kvcli txn FILE\"", c.name)
	}
	a, err := parse(c, words[1:])
	if err != nil {
		return err
	}
	if c.endless {
		// Until interrupted: Ctrl-C ends the command, not the shell.
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt)
		defer stop()
		return c.run(s, ctx, a)
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	return c.run(s, ctx, a)
}

func (s *Shell) emit(v any) error {
	enc := json.NewEncoder(s.out)
	return enc.Encode(v)
}

func (s *Shell) consistency(a *args) (kvd.Consistency, error) {
	if v, ok := a.flags["consistency"]; ok {
		c, err := kvd.ParseConsistency(v)
		if err != nil {
			return "", usagef("%v", err)
		}
		return c, nil
	}
	return s.o.Consistency, nil
}

func (s *Shell) get(ctx context.Context, a *args) error {
	if err := a.want(lookup("get"), 1, 1); err != nil {
		return err
	}
	key := a.pos[0]
	var it kvd.Item
	var err error
	if s.tx != nil {
		it, err = s.tx.Get(ctx, key)
	} else {
		c, cerr := s.consistency(a)
		if cerr != nil {
			return cerr
		}
		it, err = s.c.Get(ctx, key, client.WithConsistency(c))
	}
	if err != nil {
		return err
	}
	switch {
	case s.o.JSON:
		return s.emit(map[string]any{"key": key, "value": it.Value, "version": it.Version})
	case s.o.Raw:
		_, err := s.out.Write(it.Value)
		return err
	}
	fmt.Fprintln(s.out, showValue(it.Value))
	return nil
}

// value reads a put's value: the argument, @FILE, or - for stdin.
func (s *Shell) value(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		b, err := io.ReadAll(s.in)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return b, nil
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, usagef("cannot read the value: %v", err)
		}
		return b, nil
	}
	return []byte(arg), nil
}

func writeOpts(a *args) ([]kvd.WriteOption, error) {
	var opts []kvd.WriteOption
	if v, ok := a.flags["if-version"]; ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, usagef("--if-version needs a version number, not %q", v)
		}
		opts = append(opts, kvd.IfVersion(n))
	}
	if a.has("create-only") {
		if len(opts) > 0 {
			return nil, usagef("use --if-version or --create-only, not both")
		}
		opts = append(opts, kvd.CreateOnly())
	}
	if v, ok := a.flags["ttl"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, usagef("--ttl needs a positive duration such as 30s, not %q", v)
		}
		opts = append(opts, kvd.WithTTL(d))
	}
	return opts, nil
}

func (s *Shell) put(ctx context.Context, a *args) error {
	if err := a.want(lookup("put"), 2, 2); err != nil {
		return err
	}
	val, err := s.value(a.pos[1])
	if err != nil {
		return err
	}
	opts, err := writeOpts(a)
	if err != nil {
		return err
	}
	if s.tx != nil {
		if len(opts) > 0 {
			return usagef("inside a transaction, conditions come from what it reads; drop the flags")
		}
		s.tx.Put(a.pos[0], val)
		fmt.Fprintf(s.out, "queued: put %s\n", a.pos[0])
		return nil
	}
	v, err := s.c.Put(ctx, a.pos[0], val, opts...)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(map[string]any{"key": a.pos[0], "version": v})
	}
	fmt.Fprintf(s.out, "OK (version %d)\n", v)
	return nil
}

func (s *Shell) add(ctx context.Context, a *args) error {
	if err := a.want(lookup("add"), 2, 2); err != nil {
		return err
	}
	delta, err := strconv.ParseInt(a.pos[1], 10, 64)
	if err != nil {
		return usagef("DELTA must be an integer, not %q", a.pos[1])
	}
	n, err := s.c.Add(ctx, a.pos[0], delta)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(map[string]any{"key": a.pos[0], "value": n})
	}
	fmt.Fprintln(s.out, n)
	return nil
}

func (s *Shell) del(ctx context.Context, a *args) error {
	if err := a.want(lookup("del"), 1, 1); err != nil {
		return err
	}
	opts, err := writeOpts(a)
	if err != nil {
		return err
	}
	if s.tx != nil {
		s.tx.Delete(a.pos[0])
		fmt.Fprintf(s.out, "queued: del %s\n", a.pos[0])
		return nil
	}
	deleted, err := s.c.Delete(ctx, a.pos[0], opts...)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(map[string]any{"key": a.pos[0], "deleted": deleted})
	}
	if deleted {
		fmt.Fprintln(s.out, "deleted")
	} else {
		fmt.Fprintln(s.out, "no such key, nothing deleted")
	}
	return nil
}

func (s *Shell) scan(ctx context.Context, a *args) error {
	if err := a.want(lookup("scan"), 0, 1); err != nil {
		return err
	}
	o := kvd.ScanOptions{Start: a.flags["start"], End: a.flags["end"], Limit: 100}
	if len(a.pos) == 1 {
		o.Prefix = a.pos[0]
	}
	if v, ok := a.flags["limit"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > kvd.DefaultLimits().MaxScanLimit {
			return usagef("--limit must be between 1 and %d", kvd.DefaultLimits().MaxScanLimit)
		}
		o.Limit = n
	}
	c, err := s.consistency(a)
	if err != nil {
		return err
	}
	var items []kvd.Item
	next := ""
	for {
		p, err := s.c.Scan(ctx, o, client.WithConsistency(c))
		if err != nil {
			return err
		}
		items = append(items, p.Items...)
		next = p.Next
		if !p.More || !a.has("all") {
			break
		}
		o.Start = p.Next
	}
	if s.o.JSON {
		out := api.ScanResponse{Items: []api.Item{}, More: next != "", Next: next}
		for _, it := range items {
			out.Items = append(out.Items, api.Item{Key: it.Key, Value: it.Value, Version: it.Version})
		}
		return s.emit(out)
	}
	if a.has("keys-only") {
		for _, it := range items {
			fmt.Fprintln(s.out, it.Key)
		}
	} else {
		var rows [][]string
		for _, it := range items {
			rows = append(rows, []string{cell([]byte(it.Key), 60), strconv.FormatUint(it.Version, 10), cell(it.Value, 60)})
		}
		if len(rows) > 0 {
			table(s.out, []string{"KEY", "VERSION", "VALUE"}, rows)
		}
	}
	switch {
	case next != "":
		fmt.Fprintf(s.out, "%d keys shown; more follow: --start %s (or --all)\n", len(items), strconv.Quote(next))
	case len(items) == 1:
		fmt.Fprintln(s.out, "1 key")
	default:
		fmt.Fprintf(s.out, "%d keys\n", len(items))
	}
	return nil
}

func (s *Shell) cas(ctx context.Context, a *args) error {
	if err := a.want(lookup("cas"), 3, 3); err != nil {
		return err
	}
	key := a.pos[0]
	resp, err := s.c.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs(key, []byte(a.pos[1]))}, Ops: []kvd.Op{kvd.OpPut(key, []byte(a.pos[2]))}})
	if err != nil {
		if errors.Is(err, kvd.ErrCompareFailed) {
			return fmt.Errorf("%q does not hold %q: %w", key, a.pos[1], kvd.ErrPreconditionFailed)
		}
		return err
	}
	v := resp.Results[0].Version
	if s.o.JSON {
		return s.emit(map[string]any{"key": key, "version": v})
	}
	fmt.Fprintf(s.out, "OK (version %d)\n", v)
	return nil
}

func (s *Shell) txnJSON(ctx context.Context, a *args) error {
	if len(a.pos) > 0 {
		switch a.pos[0] {
		case "list":
			if err := a.want(lookup("txn"), 1, 1); err != nil {
				return err
			}
			return s.txnList(ctx)
		case "abort":
			if len(a.pos) != 2 {
				return usagef("usage: txn abort ID (the ids are in \"txn list\")")
			}
			return s.txnAbort(ctx, a.pos[1])
		}
	}
	if err := a.want(lookup("txn"), 0, 1); err != nil {
		return err
	}
	src := "-"
	if len(a.pos) == 1 {
		src = a.pos[0]
	}
	var body []byte
	var err error
	if src == "-" {
		body, err = io.ReadAll(s.in)
	} else {
		body, err = os.ReadFile(strings.TrimPrefix(src, "@"))
	}
	if err != nil {
		return usagef("cannot read the transaction: %v", err)
	}
	var req api.TxnRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return usagef("the transaction is not valid JSON of the form {\"compare\":[...],\"ops\":[...]}: %v", err)
	}
	t, err := wire.Txn(req)
	if err != nil {
		return err
	}
	resp, err := s.c.Txn(ctx, t)
	if err != nil {
		return err
	}
	return s.printTxn(resp)
}

func (s *Shell) txnList(ctx context.Context) error {
	list, err := s.c.Txns(ctx)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(list)
	}
	if len(list.Txns) == 0 {
		fmt.Fprintln(s.out, "no transaction holds a lock or a record")
	}
	var rows [][]string
	for _, t := range list.Txns {
		var keys []string
		for _, l := range t.Locks {
			k := fmt.Sprintf("%s@%d", l.Key, l.Group)
			if !l.Write {
				k += "(read)"
			}
			keys = append(keys, k)
		}
		if len(keys) > 4 {
			keys = append(keys[:4], fmt.Sprintf("and %d more", len(keys)-4))
		}
		rows = append(rows, []string{t.ID, t.State, strconv.FormatUint(t.RecordGroup, 10), t.Deadline, strings.Join(keys, " ")})
	}
	if len(rows) > 0 {
		table(s.out, []string{"ID", "STATE", "RECORD GROUP", "DEADLINE", "LOCKS (key@group)"}, rows)
	}
	if len(list.Unreached) > 0 {
		fmt.Fprintf(s.out, "groups %v could not be read\n", list.Unreached)
	}
	return nil
}

func (s *Shell) txnAbort(ctx context.Context, id string) error {
	t, err := s.c.AbortTxn(ctx, id)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(t)
	}
	switch t.State {
	case "committed":
		fmt.Fprintf(s.out, "transaction %s had committed: its writes are applied and its locks released\n", id)
	default:
		fmt.Fprintf(s.out, "transaction %s aborted: nothing of it was written, and its locks are released\n", id)
	}
	return nil
}

func (s *Shell) printTxn(resp kvd.TxnResponse) error {
	if s.o.JSON {
		return s.emit(wire.FromTxnResponse(resp))
	}
	fmt.Fprintln(s.out, "committed")
	for _, r := range resp.Results {
		switch r.Op {
		case "get":
			if r.Found {
				fmt.Fprintf(s.out, "get %s = %s (version %d)\n", r.Key, showValue(r.Value), r.Version)
			} else {
				fmt.Fprintf(s.out, "get %s: not found\n", r.Key)
			}
		case "put":
			fmt.Fprintf(s.out, "put %s (version %d)\n", r.Key, r.Version)
		case "add":
			fmt.Fprintf(s.out, "add %s = %s (version %d)\n", r.Key, r.Value, r.Version)
		case "delete":
			fmt.Fprintf(s.out, "del %s (deleted: %v)\n", r.Key, r.Deleted)
		}
	}
	return nil
}

func (s *Shell) begin(ctx context.Context, a *args) error {
	if s.tx != nil {
		return usagef("a transaction is already open: commit or abort it first")
	}
	s.tx = s.c.Begin()
	fmt.Fprintln(s.out, "transaction open: get records what it read; put and del are queued until commit")
	return nil
}

func (s *Shell) commit(ctx context.Context, a *args) error {
	if s.tx == nil {
		return usagef("no transaction is open; start one with begin")
	}
	tx := s.tx
	s.tx = nil
	resp, err := tx.Commit(ctx)
	if err != nil {
		if errors.Is(err, kvd.ErrCompareFailed) {
			return fmt.Errorf("something this transaction read changed before it committed (run it again): %w", err)
		}
		return err
	}
	return s.printTxn(resp)
}

func (s *Shell) abort(ctx context.Context, a *args) error {
	if s.tx == nil {
		return usagef("no transaction is open")
	}
	s.tx = nil
	fmt.Fprintln(s.out, "transaction dropped, nothing written")
	return nil
}

func (s *Shell) watch(ctx context.Context, a *args) error {
	if err := a.want(lookup("watch"), 0, 1); err != nil {
		return err
	}
	prefix := ""
	if len(a.pos) == 1 {
		prefix = a.pos[0]
	}
	count := -1
	if v, ok := a.flags["count"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return usagef("--count must be a positive number")
		}
		count = n
	}
	w, err := s.c.Watch(ctx, prefix, a.flags["since"])
	if err != nil {
		if errors.Is(err, kvd.ErrCompacted) {
			return fmt.Errorf("the cursor is older than the retained history; watch from now and read the current state first: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer w.Close()
	if !s.o.JSON {
		fmt.Fprintf(s.out, "watching %q (Ctrl-C to stop)\n", prefix)
	}
	for n := 0; count < 0 || n < count; n++ {
		ev, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: a normal end
			}
			return err
		}
		if s.o.JSON {
			if err := s.emit(map[string]any{"type": ev.Type, "key": ev.Key, "value": ev.Value, "version": ev.Version, "cursor": ev.Cursor}); err != nil {
				return err
			}
			continue
		}
		if ev.Type == "delete" {
			fmt.Fprintf(s.out, "delete %s (version %d)\n", ev.Key, ev.Version)
		} else {
			fmt.Fprintf(s.out, "put %s = %s (version %d)\n", ev.Key, showValue(ev.Value), ev.Version)
		}
	}
	return nil
}

func (s *Shell) cluster(ctx context.Context, a *args) error {
	cl, err := s.c.Cluster(ctx)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(cl)
	}
	fmt.Fprintf(s.out, "epoch %d, %d nodes, %d groups\n\n", cl.Epoch, len(cl.Nodes), len(cl.Groups))
	var rows [][]string
	for _, n := range cl.Nodes {
		rows = append(rows, []string{n.ID, n.HTTP, n.Raft})
	}
	table(s.out, []string{"NODE", "HTTP", "RAFT"}, rows)
	fmt.Fprintln(s.out)
	rows = nil
	for _, g := range cl.Groups {
		var slots []string
		for _, r := range g.Slots {
			slots = append(slots, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
		leader := g.Leader
		if leader == "" {
			leader = "(none)"
		}
		rows = append(rows, []string{strconv.FormatUint(g.ID, 10), leader, strings.Join(g.Members, ","), strings.Join(slots, ",")})
	}
	table(s.out, []string{"GROUP", "LEADER", "MEMBERS", "SLOTS"}, rows)
	return nil
}

func (s *Shell) status(ctx context.Context, a *args) error {
	if err := a.want(lookup("status"), 0, 1); err != nil {
		return err
	}
	id := ""
	if len(a.pos) == 1 {
		id = a.pos[0]
	}
	st, err := s.c.Status(ctx, id)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(st)
	}
	fmt.Fprintf(s.out, "node %s  http %s  raft %s  version %s  up %s  map epoch %d\n\n", st.Node, st.HTTP, st.Raft, st.Version, st.Uptime, st.Epoch)
	var rows [][]string
	for _, g := range st.Groups {
		contact := "-"
		if !g.LastContact.IsZero() {
			contact = time.Since(g.LastContact).Round(time.Millisecond).String() + " ago"
		}
		health := "-"
		if g.Health != nil {
			health = g.Health.State
			if c := g.Health.Integrity; c != nil && !c.OK {
				health += " ALARM: " + c.Alarm
			}
		}
		rows = append(rows, []string{strconv.FormatUint(g.Group, 10), g.Role, strconv.FormatUint(g.Term, 10), g.Leader,
			strconv.FormatUint(g.CommitIndex, 10), strconv.FormatUint(g.AppliedIndex, 10), contact, health})
	}
	table(s.out, []string{"GROUP", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST CONTACT", "HEALTH"}, rows)
	for _, m := range st.Missing {
		fmt.Fprintf(s.out, "group %d NOT STARTED: %s\n", m.Group, m.Reason)
	}
	if d := st.Storage; d != nil {
		state := "writable"
		if !d.Writable {
			state = "WRITES REFUSED: " + d.Reason
		}
		fmt.Fprintf(s.out, "\ndisk: data %s, free %s; %s\n", bytesText(d.UsedBytes), bytesText(d.FreeBytes), state)
	}
	return nil
}

// bytesText renders a size for people.
func bytesText(n int64) string {
	switch {
	case n < 0:
		return "unknown"
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func (s *Shell) health(ctx context.Context, a *args) error {
	hs := s.c.Health(ctx)
	bad := 0
	for _, h := range hs {
		if !h.Ready {
			bad++
		}
	}
	if s.o.JSON {
		if err := s.emit(hs); err != nil {
			return err
		}
	} else {
		var rows [][]string
		for _, h := range hs {
			state := "ready"
			switch {
			case !h.Live:
				state = "DOWN: " + h.Err
			case !h.Ready:
				state = "NOT READY: " + h.Err
			}
			rows = append(rows, []string{h.ID, h.URL, state})
		}
		table(s.out, []string{"NODE", "URL", "STATE"}, rows)
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d nodes are not ready: %w", bad, len(hs), kvd.ErrUnavailable)
	}
	return nil
}

func (s *Shell) help(ctx context.Context, a *args) error {
	if len(a.pos) == 1 {
		c := lookup(a.pos[0])
		if c == nil {
			return usagef("no command %q", a.pos[0])
		}
		fmt.Fprintf(s.out, "%s %s\n  %s\n", c.name, c.args, c.summary)
		if c.name == "txn" {
			fmt.Fprintln(s.out, `  example: {"compare":[{"key":"a","version":5}],"ops":[{"op":"put","key":"a","value":"MQ=="}]}`)
		}
		return nil
	}
	var rows [][]string
	for _, c := range commands {
		name := c.name
		if c.args != "" {
			name += " " + c.args
		}
		if c.shell {
			name += "   (shell)"
		}
		rows = append(rows, []string{name, c.summary})
	}
	table(s.out, []string{"COMMAND", "WHAT IT DOES"}, rows)
	return nil
}
