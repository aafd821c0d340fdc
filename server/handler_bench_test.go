package server_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvd-project/kvd/httpapi"
	"github.com/kvd-project/kvd/server"
)

// newHandlerBenchNode opens a single embedded node (real bbolt files and
// Raft log, fsync on) and returns its HTTP API handler, called in-process:
// the figures are the handler's own cost (routing, decoding, the store,
// encoding) without sockets.
func newHandlerBenchNode(b *testing.B) http.Handler {
	cfg := server.DefaultConfig()
	cfg.DataDir = b.TempDir()
	cfg.Embedded = true
	cfg.HTTPAddr, cfg.RaftAddr = "", ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := server.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.WaitReady(10 * time.Second); err != nil {
		b.Fatal(err)
	}
	h, err := httpapi.New(s, httpapi.Options{Limits: cfg.Limits, RequestTimeout: cfg.RequestTimeout})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.Close)
	for i := range 1000 {
		serve(b, h, http.MethodPut, fmt.Sprintf("/v1/kv/k%08d", i), value256, http.StatusOK)
	}
	return h
}

func serve(b *testing.B, h http.Handler, method, target string, body []byte, want int) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, target, r))
	if w.Code != want {
		b.Fatalf("%s %s: status %d, want %d: %s", method, target, w.Code, want, w.Body.String())
	}
}

// BenchmarkHandler measures the HTTP API handler called in-process: a
// stale GET (handler and bbolt read only), a linearizable GET (plus a
// read-index round, shared by concurrent readers), and PUTs from
// parallel callers (coalesced into Raft entries and batches).
func BenchmarkHandler(b *testing.B) {
	h := newHandlerBenchNode(b)
	b.Run("get-stale", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			serve(b, h, http.MethodGet, fmt.Sprintf("/v1/kv/k%08d?consistency=stale", i%1000), nil, http.StatusOK)
		}
	})
	b.Run("get-linearizable-parallel", func(b *testing.B) {
		b.ReportAllocs()
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				serve(b, h, http.MethodGet, fmt.Sprintf("/v1/kv/k%08d", n.Add(1)%1000), nil, http.StatusOK)
			}
		})
	})
	b.Run("put-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				serve(b, h, http.MethodPut, fmt.Sprintf("/v1/kv/k%08d", n.Add(1)%1000), value256, http.StatusOK)
			}
		})
	})
}
