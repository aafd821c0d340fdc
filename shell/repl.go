package shell

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/chzyer/readline"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
)

// Interactive runs the shell on a terminal: a line editor with history
// (kept in historyPath) and tab completion of commands and keys. It
// returns when the user types exit or ends the input.
func (s *Shell) Interactive(ctx context.Context, endpoint, historyPath string, stdin io.ReadCloser, stdout, stderr io.Writer) error {
	prompt := func() string {
		if s.tx != nil {
			return "kvd " + endpoint + " (txn)> "
		}
		return "kvd " + endpoint + "> "
	}
	rl, err := readline.NewEx(&readline.Config{
		Prompt:          prompt(),
		HistoryFile:     historyPath,
		AutoComplete:    &completer{s: s},
		InterruptPrompt: "^C",
		EOFPrompt:       "exit",
		Stdin:           stdin,
		Stdout:          stdout,
		Stderr:          stderr,
	})
	if err != nil {
		return fmt.Errorf("line editor: %w", err)
	}
	defer rl.Close()
	s.out = rl.Stdout()
	fmt.Fprintf(s.out, "connected to %s; \"help\" lists the commands, \"exit\" leaves\n", endpoint)
	// Leaving with a transaction open would drop its queued writes: the
	// first exit (or Ctrl-D) says so, a second one in a row leaves.
	warned := false
	leave := func() (bool, error) {
		open := s.openTxn()
		if open == "" {
			return true, nil
		}
		if !warned {
			warned = true
			fmt.Fprintln(rl.Stderr(), open+": commit or abort it, or exit again to discard it")
			return false, nil
		}
		s.tx = nil
		return true, ErrTxnDiscarded
	}
	for {
		rl.SetPrompt(prompt())
		line, err := rl.Readline()
		if err == readline.ErrInterrupt {
			continue
		}
		if err != nil { // end of input (Ctrl-D)
			if done, err := leave(); done || err != nil {
				return err
			}
			continue
		}
		words, err := Split(line)
		if err != nil {
			fmt.Fprintln(rl.Stderr(), "error: "+err.Error())
			continue
		}
		if len(words) == 1 && (words[0] == "exit" || words[0] == "quit") {
			if done, err := leave(); done || err != nil {
				return err
			}
			continue
		}
		warned = false
		if err := s.Exec(ctx, words, true); err != nil {
			fmt.Fprintln(rl.Stderr(), "error: "+Explain(err))
		}
	}
}

// ErrTxnDiscarded is returned by Interactive when the user left with a
// transaction open (after being warned): its queued writes were dropped.
var ErrTxnDiscarded = errors.New("left the shell with a transaction open: its queued writes were discarded, nothing was committed")

// Script runs the commands read from r, one per line, in order. It stops
// at the first failure (unless keepGoing) and returns the exit code of
// the first failure, 0 if none.
func (s *Shell) Script(ctx context.Context, r io.Reader, keepGoing bool, stderr io.Writer) int {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	code := ExitOK
	for n := 1; sc.Scan(); n++ {
		words, err := Split(sc.Text())
		if err == nil && len(words) == 0 {
			continue
		}
		if err == nil {
			err = s.Exec(ctx, words, true)
		}
		if err != nil {
			fmt.Fprintf(stderr, "kvcli: line %d: %s\n", n, Explain(err))
			if code == ExitOK {
				code = ExitCode(err)
			}
			if !keepGoing {
				return code
			}
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "kvcli: reading the script: %v\n", err)
		return ExitError
	}
	if s.tx != nil {
		fmt.Fprintln(stderr, "kvcli: the script ended inside a transaction; it was not committed")
		if code == ExitOK {
			code = ExitUsage
		}
	}
	return code
}

// completer completes command names, keys for the commands that take one
// (by prefix, from the cluster), and the arguments of commands that
// complete their own (subcommands, groups and nodes of the cached map).
type completer struct{ s *Shell }

// flagTakingValue returns the name of the flag that word is, when it is
// one of cmd's flags and takes its value as the next word; "" otherwise.
func flagTakingValue(cmd *command, word string) string {
	name, ok := strings.CutPrefix(word, "--")
	if !ok || strings.Contains(name, "=") || !cmd.flags[name] {
		return ""
	}
	return name
}

// Do implements readline.AutoCompleter.
func (c *completer) Do(line []rune, pos int) ([][]rune, int) {
	text := string(line[:pos])
	fields := strings.Fields(text)
	typingNew := strings.HasSuffix(text, " ") || text == ""
	var partial string
	if !typingNew && len(fields) > 0 {
		partial = fields[len(fields)-1]
	}
	argIndex := len(fields)
	if !typingNew {
		argIndex--
	}
	var cmd *command
	if len(fields) > 0 {
		cmd = lookup(fields[0])
	}
	var cands []string
	switch {
	case argIndex == 0:
		cands = CommandNames(true)
	case argIndex == 1 && fields[0] == "help":
		cands = CommandNames(false)
	case argIndex >= 2 && cmd != nil && cmd.completeFlag != nil && flagTakingValue(cmd, fields[argIndex-1]) != "":
		cands = cmd.completeFlag(c.s, flagTakingValue(cmd, fields[argIndex-1]))
	case argIndex >= 1 && cmd != nil && cmd.complete != nil:
		var prev []string
		for _, f := range fields[1:argIndex] {
			if !strings.HasPrefix(f, "--") {
				prev = append(prev, f)
			}
		}
		cands = cmd.complete(c.s, prev)
	case argIndex == 1 && cmd != nil && cmd.fileArg:
		cands = completeFiles(partial)
	case argIndex == 1 && cmd != nil && cmd.keyArg:
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p, err := c.s.c.Scan(ctx, kvd.ScanOptions{Prefix: partial, Limit: 50}, client.WithConsistency(kvd.Stale))
		if err != nil {
			return nil, 0
		}
		for _, it := range p.Items {
			if !strings.ContainsAny(it.Key, " \t'\"\\") {
				cands = append(cands, it.Key)
			}
		}
	}
	sort.Strings(cands)
	var out [][]rune
	for _, cand := range cands {
		if strings.HasPrefix(cand, partial) {
			end := " "
			if cmd != nil && cmd.fileArg && strings.HasSuffix(cand, string(filepath.Separator)) {
				end = "" // a directory: its files come next
			}
			out = append(out, []rune(cand[len(partial):]+end))
		}
	}
	return out, len([]rune(partial))
}
