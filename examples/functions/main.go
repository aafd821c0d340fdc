// Command functions is a small function host on kvd: a rate limiter
// (TTL counters), a URL shortener (create-only puts) and an order
// workflow (a cross-group transaction). It runs on an embedded store by
// default, and against a cluster with -cluster; the functions' code is the
// same either way.
//
//	go run ./examples/functions                                 # embedded, data in ./functions-data
//	go run ./examples/functions -cluster http://127.0.0.1:7070  # against a cluster
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/embed"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "where the functions listen")
	data := flag.String("data", "functions-data", "data directory of the embedded store")
	cluster := flag.String("cluster", "", "comma-separated kvd endpoints: use a cluster instead of the embedded store")
	limit := flag.Int64("limit", 10, "rate limit: requests per window")
	window := flag.Duration("window", time.Minute, "rate limit window")
	flag.Parse()

	var kv kvd.KV
	var err error
	if *cluster != "" {
		kv, err = client.New(context.Background(), client.DefaultConfig(strings.Split(*cluster, ",")...))
	} else {
		kv, err = embed.Open(*data, embed.Options{})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "functions: %v\n", err)
		os.Exit(1)
	}
	defer kv.Close()
	h := &Host{KV: kv, Limit: *limit, Window: *window, Now: time.Now}
	srv := &http.Server{Addr: *addr, Handler: h.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("functions on http://%s (store: %s)", *addr, map[bool]string{true: "cluster " + *cluster, false: "embedded " + *data}[*cluster != ""])
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
