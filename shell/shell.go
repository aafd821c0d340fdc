package shell

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
)

// Options are the global options of kvcli.
type Options struct {
	JSON        bool
	Raw         bool
	Consistency kvd.Consistency
	Timeout     time.Duration
	// Progress, if set, receives the progress of the commands that move
	// a file (backup, restore): their last state once they end, and with
	// LiveProgress (Progress is a terminal) a line redrawn in place
	// while they run.
	Progress     io.Writer
	LiveProgress bool
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
	if c.endless || c.transfer {
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

// emit writes v as one line of JSON, the output of --json.
func (s *Shell) emit(v any) error {
	enc := json.NewEncoder(s.out)
	return enc.Encode(v)
}
