package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
	"github.com/kvd-project/kvd/internal/pki"
)

// rotateKeyUsage explains `kvd rotate-key`.
const rotateKeyUsage = `usage: kvd rotate-key --addr URL [--token T] [--cacert F --cert F --key F]
       kvd rotate-key --encryption-key-file FILE [--add | --activate ID]

Rotates the key that encrypts the data at rest.

With --addr, on a running cluster: a node makes a new key, every node adds
it to its key file, then every node makes it active; each replica then
re-encrypts what it holds in the background. Needs an admin token when
auth is on, and peer TLS on a cluster of more than one node. Prints the
new key's id; --wait waits until every node is done.

With --encryption-key-file, on a file: makes the file (one new key) if it
is absent, else puts a new key first (the active one), keeping the others
to read what is under them. Every node must hold the same file. On a
running cluster, do it in two steps so that no node seals under a key
another lacks: --add puts a new key last (held, not active) and prints
its id: copy the file to every node; then --activate ID makes that key
the active one: copy the file again. Nodes read their key file again
when it changes, or on SIGHUP.

flags:
`

// runRotateKey runs `kvd rotate-key ARGS` and returns the exit code.
func runRotateKey(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kvd rotate-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("encryption-key-file", "", "`file` of keys to rotate in place")
	add := fs.Bool("add", false, "with --encryption-key-file: add a new key last, not active")
	activate := fs.String("activate", "", "with --encryption-key-file: make the key of this `id` (printed by --add) the active one")
	addr := fs.String("addr", "", "`URL` of a node of the running cluster to rotate")
	token := fs.String("token", os.Getenv("KVD_TOKEN"), "admin `token` (default $KVD_TOKEN)")
	cacert := fs.String("cacert", "", "`file`: the CA of the nodes' certificates")
	cert := fs.String("cert", "", "`file`: a client certificate")
	key := fs.String("key", "", "`file`: the key of --cert")
	wait := fs.Duration("wait", 0, "with --addr: wait this long for every node to finish re-encrypting")
	fs.Usage = func() { fmt.Fprint(stderr, rotateKeyUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "kvd rotate-key: "+format+"\n", a...)
		return code
	}
	switch {
	case fs.NArg() > 0:
		return fail(2, "unexpected argument %q", fs.Arg(0))
	case (*file == "") == (*addr == ""):
		return fail(2, "give either --addr (a running cluster) or --encryption-key-file (a file)")
	case *add && *activate != "":
		return fail(2, "--add and --activate exclude each other")
	case (*add || *activate != "") && *file == "":
		return fail(2, "--add and --activate are for --encryption-key-file")
	}
	if *file != "" {
		msg, err := rotateKeyFile(*file, *add, *activate)
		if err != nil {
			return fail(1, "%v", err)
		}
		fmt.Fprintln(stdout, msg)
		return 0
	}
	cfg := client.Config{Endpoints: []string{*addr}, Token: *token}
	if *cacert != "" || *cert != "" || *key != "" {
		var err error
		if cfg.TLS, err = pki.ClientFiles(*cacert, *cert, *key); err != nil {
			return fail(2, "%v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute+*wait)
	defer cancel()
	cl, err := client.New(ctx, cfg)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer cl.Close()
	rot, err := cl.RotateKey(ctx)
	if err != nil {
		return fail(1, "%v", err)
	}
	fmt.Fprintf(stdout, "new active key %s on %s\n", rot.Key, strings.Join(rot.Nodes, ", "))
	if *wait <= 0 {
		return 0
	}
	deadline := time.Now().Add(*wait)
	for {
		st, err := cl.EncryptionStatus(ctx)
		if err == nil && st.Done {
			fmt.Fprintln(stdout, "every node re-encrypted under it")
			return 0
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			return fail(1, "not done after %v (err %v): %s", *wait, err, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// rotateKeyFile rotates the keys of a key file, or makes it; activate,
// if set, is the id of a key the file holds to make active.
func rotateKeyFile(path string, add bool, activate string) (string, error) {
	cur, err := atrest.LoadKeyFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && activate == "":
		k := atrest.NewKey()
		if err := fsutil.WriteFile(path, atrest.FormatKeyFile(k), atrest.KeyFileMode); err != nil {
			return "", fmt.Errorf("write %s: %w", path, err)
		}
		return fmt.Sprintf("%s: created with key %s", path, atrest.IDOf(k)), nil
	case err != nil:
		return "", err
	}
	keys := cur.Keys()
	var active []byte
	switch {
	case activate != "":
		i := slices.IndexFunc(keys, func(k []byte) bool { return atrest.IDOf(k).String() == activate })
		switch {
		case i < 0:
			return "", fmt.Errorf("%s holds no key %s (its keys: %s)", path, activate, strings.Join(cur.Names(), ", "))
		case i == 0:
			return fmt.Sprintf("%s: key %s is active already", path, activate), nil
		}
		active = keys[i]
		keys = append([][]byte{active}, slices.Delete(keys, i, i+1)...)
	case len(keys) >= atrest.MaxKeys:
		return "", fmt.Errorf("%s holds %d keys, the most it may: drop the lines of keys no data is under any more (GET /v1/admin/encryption)", path, len(keys))
	case add:
		keys = append(keys, atrest.NewKey())
	default:
		active = atrest.NewKey()
		keys = append([][]byte{active}, keys...)
	}
	if err := fsutil.WriteFile(path, atrest.FormatKeyFile(keys...), atrest.KeyFileMode); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if add {
		id := atrest.IDOf(keys[len(keys)-1])
		return fmt.Sprintf("%s: added key %s (not active; %d keys): copy the file to every node, then run --activate %s", path, id, len(keys), id), nil
	}
	return fmt.Sprintf("%s: active key %s (%d keys); every node must hold this file", path, atrest.IDOf(active), len(keys)), nil
}
