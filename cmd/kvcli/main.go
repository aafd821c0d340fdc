// Command kvcli is the kvd shell: one command per invocation
// (kvcli get KEY), commands from a pipe or file (kvcli < script.kv), or an
// interactive shell with history and completion (kvcli).
//
// Exit codes: 0 success, 1 other error, 2 usage, 3 not found,
// 4 precondition or compare failed or conflict, 5 unavailable (nothing
// applied), 6 outcome unknown. The message goes to standard error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/chzyer/readline"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/shell"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(argv []string) int {
	fs := flag.NewFlagSet("kvcli", flag.ContinueOnError)
	defEndpoints := os.Getenv("KVCLI_ENDPOINTS")
	if defEndpoints == "" {
		defEndpoints = "http://127.0.0.1:7070"
	}
	endpoints := fs.String("endpoints", defEndpoints, "comma-separated node URLs (also KVCLI_ENDPOINTS)")
	consistency := fs.String("consistency", "linearizable", "read consistency: linearizable, follower or stale")
	timeout := fs.Duration("timeout", 10*time.Second, "time limit of each command (of backup and restore: of each wait in which nothing moves)")
	asJSON := fs.Bool("json", false, "print machine-readable JSON")
	raw := fs.Bool("raw", false, "write values' bytes untouched (get)")
	policy := fs.String("read-policy", "p2c", "how follower and stale reads pick a replica: p2c, random or round-robin")
	keepGoing := fs.Bool("keep-going", false, "with commands from a pipe or file: go on after a failure")
	history := fs.String("history", "", "history file of the interactive shell (default ~/.kvcli_history)")
	cacert := fs.String("cacert", "", "`file`: the CA that signed the nodes' certificates (speaks HTTPS; default for https:// endpoints: the system's roots)")
	cert := fs.String("cert", "", "`file`: a client certificate to present (with --key)")
	key := fs.String("key", "", "`file`: the key of --cert")
	token := fs.String("token", os.Getenv("KVD_TOKEN"), "bearer token for a cluster that requires one (also KVD_TOKEN)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: kvcli [flags] [COMMAND ARGS...]\n\nWithout a command: an interactive shell, or the commands read from a pipe or file.\nRun \"kvcli help\" for the commands.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		if err == flag.ErrHelp {
			return shell.ExitOK
		}
		return shell.ExitUsage
	}
	cons, err := kvd.ParseConsistency(*consistency)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvcli: %v\n", err)
		return shell.ExitUsage
	}
	pol, err := client.ParsePolicy(*policy)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvcli: %v\n", err)
		return shell.ExitUsage
	}
	args := fs.Args()
	if len(args) > 0 && args[0] == "help" {
		// Help needs no cluster.
		sh := shell.New(nil, shell.Options{}, os.Stdin, os.Stdout)
		return report(sh.Exec(context.Background(), args, false))
	}

	eps := strings.Split(*endpoints, ",")
	cfg := client.DefaultConfig(eps...)
	cfg.Consistency, cfg.ReadPolicy, cfg.Timeout, cfg.Token = cons, pol, *timeout, strings.TrimSpace(*token)
	if *cacert != "" || *cert != "" || *key != "" {
		if cfg.TLS, err = pki.ClientFiles(*cacert, *cert, *key); err != nil {
			fmt.Fprintf(os.Stderr, "kvcli: %v\n", err)
			return shell.ExitUsage
		}
		for i, e := range cfg.Endpoints {
			// The default endpoint names http://: TLS flags mean https.
			cfg.Endpoints[i] = strings.Replace(e, "http://", "https://", 1)
		}
	}
	ctx := context.Background()
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	cl, err := client.New(cctx, cfg)
	cancel()
	if err != nil && (errors.Is(err, kvd.ErrUnauthenticated) || errors.Is(err, kvd.ErrForbidden)) {
		return report(err) // the cluster answered: the token is the matter
	}
	if err != nil {
		why := err.Error()
		var op *net.OpError
		if errors.As(err, &op) {
			why = op.Err.Error()
		}
		fmt.Fprintf(os.Stderr, "kvcli: cannot reach the cluster at %s: %s; is kvd running there? (set --endpoints or KVCLI_ENDPOINTS)\n", *endpoints, why)
		return shell.ExitCode(err)
	}
	defer cl.Close()
	sh := shell.New(cl, shell.Options{JSON: *asJSON, Raw: *raw, Consistency: cons, Timeout: *timeout,
		Progress: os.Stderr, LiveProgress: readline.IsTerminal(int(os.Stderr.Fd()))}, os.Stdin, os.Stdout)

	switch {
	case len(args) > 0:
		return report(sh.Exec(ctx, args, false))
	case readline.IsTerminal(int(os.Stdin.Fd())):
		path := *history
		if path == "" {
			if home, err := os.UserHomeDir(); err == nil {
				path = filepath.Join(home, ".kvcli_history")
			}
		}
		if err := sh.Interactive(ctx, strings.TrimPrefix(eps[0], "http://"), path, os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "kvcli: %v\n", err)
			return shell.ExitError
		}
		return shell.ExitOK
	default:
		return sh.Script(ctx, os.Stdin, *keepGoing, os.Stderr)
	}
}

// report prints a command's failure in words and returns its exit code.
func report(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvcli: %s\n", shell.Explain(err))
	}
	return shell.ExitCode(err)
}
