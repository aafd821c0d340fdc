package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kvd-project/kvd/internal/pki"
)

// certsUsage explains `kvd certs`.
const certsUsage = `usage: kvd certs COMMAND --certs-dir DIR [flags]

Creates the certificates of a cluster, for a development or a small
cluster: one CA, a certificate per node naming the addresses it is dialed
at, and client certificates.

  create-ca                       a CA: DIR/ca.crt and DIR/ca.key (keep ca.key safe: it signs)
  create-node NAME HOST...        DIR/node-NAME.crt and .key, valid for the HOSTs (IPs or DNS
                                  names, as clients and peers dial the node) and NAME
  create-client NAME              DIR/client-NAME.crt and .key, a client certificate for NAME
  list                            the certificates in DIR, their names and expiry

flags:
`

// runCerts runs `kvd certs ARGS` and returns the exit code.
func runCerts(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, certsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	fs := flag.NewFlagSet("kvd certs "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("certs-dir", "", "`directory` of the certificates (required)")
	lifetime := fs.Duration("lifetime", 0, "how long the certificate is valid (default: 10 years for a CA, 2 years otherwise)")
	overwrite := fs.Bool("overwrite", false, "replace existing files")
	fs.Usage = func() { fmt.Fprint(stderr, certsUsage); fs.PrintDefaults() }
	// Flags may come before or after the positional arguments.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "kvd certs: --certs-dir is required")
		return 2
	}
	life := func(def time.Duration) time.Duration {
		if *lifetime != 0 {
			return *lifetime
		}
		return def
	}
	if *lifetime < 0 {
		fmt.Fprintln(stderr, "kvd certs: --lifetime must be positive")
		return 2
	}
	var err error
	switch {
	case cmd == "create-ca" && len(pos) == 0:
		var path string
		if path, err = pki.CreateCA(*dir, life(pki.CALifetime), *overwrite); err == nil {
			fmt.Fprintf(stdout, "CA written to %s (its key beside it: keep it safe, it signs every certificate)\n", path)
		}
	case cmd == "create-node" && len(pos) >= 2:
		var cert, key string
		if cert, key, err = pki.CreateCert(*dir, pki.Node, pos[0], pos[1:], life(pki.CertLifetime), *overwrite); err == nil {
			fmt.Fprintf(stdout, "node certificate written to %s and %s, for %s\n", cert, key, strings.Join(pos[1:], ", "))
		}
	case cmd == "create-client" && len(pos) == 1:
		var cert, key string
		if cert, key, err = pki.CreateCert(*dir, pki.Client, pos[0], nil, life(pki.CertLifetime), *overwrite); err == nil {
			fmt.Fprintf(stdout, "client certificate written to %s and %s, for %s\n", cert, key, pos[0])
		}
	case cmd == "list" && len(pos) == 0:
		var infos []pki.Info
		if infos, err = pki.List(*dir); err == nil {
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tKIND\tNAME\tVALID FOR\tEXPIRES")
			for _, in := range infos {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.File, in.Kind, in.Subject, strings.Join(in.Names, ","), in.NotAfter.UTC().Format(time.RFC3339))
			}
			tw.Flush()
		}
	case cmd == "create-ca" || cmd == "create-node" || cmd == "create-client" || cmd == "list":
		fmt.Fprintf(stderr, "kvd certs %s: wrong arguments %q\n\n", cmd, pos)
		fs.Usage()
		return 2
	default:
		fmt.Fprintf(stderr, "kvd certs: unknown command %q\n\n", cmd)
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvd certs %s: %v\n", cmd, err)
		return 1
	}
	return 0
}
