// Command kvd runs one node of the kvd key-value store.
//
// With no flags it runs the single-node default: data in ./kvd-data, HTTP
// on 127.0.0.1:7070, Raft on 127.0.0.1:7071. With --initial-cluster FILE
// every member started with the same file forms the cluster; a restarted
// member resumes from its data directory and ignores the file. SIGTERM
// (or SIGINT) hands off leadership, drains in-flight requests and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/node"
	"github.com/kvd-project/kvd/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

// run runs kvd with the command line args and returns its exit code.
func run(args []string) int {
	if len(args) > 0 && args[0] == "certs" {
		return runCerts(args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "rotate-key" {
		return runRotateKey(args[1:], os.Stdout, os.Stderr)
	}
	o, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if o.showVersion {
		fmt.Println("kvd", version)
		return 0
	}
	cfg, err := buildConfig(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd: %v\n", err)
		return 2
	}
	return serve(cfg)
}

// serve runs the node until SIGTERM or SIGINT, and returns the exit code.
func serve(cfg server.Config) int {
	log := cfg.Logger
	srv, err := node.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvd: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				_ = srv.ReloadTLS() // they log what they could not read
				_ = srv.ReloadKeys()
			case <-ctx.Done():
				return
			}
		}
	}()
	start := time.Now()
	err = srv.Run(ctx)
	if err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	log.Info("bye", "uptime", time.Since(start).Round(time.Second).String())
	return 0
}
