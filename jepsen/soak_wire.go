package jepsen

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/kvd-project/kvd/api"
)

// wireRecorder sits between one workload and the HTTP transport: it
// notes the key prefixes the workload's requests use, and the keys and
// value sizes they write into liveData. Writes count when sent, whatever
// their outcome: the live data it reports is an upper bound.
type wireRecorder struct {
	next http.RoundTripper
	live *liveData

	// mu protects prefixes.
	mu       sync.Mutex
	prefixes map[string]bool
}

// RoundTrip implements http.RoundTripper.
func (r *wireRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	path := req.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/v1/kv/"):
		key, err := url.PathUnescape(strings.TrimPrefix(path, "/v1/kv/"))
		if err == nil {
			r.note(key)
			switch req.Method {
			case http.MethodPut:
				r.live.put(key, int(req.ContentLength))
			case http.MethodDelete:
				r.live.del(key)
			}
		}
	case path == "/v1/kv":
		r.note(req.URL.Query().Get("prefix"))
	case path == "/v1/txn" && req.GetBody != nil:
		if body, err := req.GetBody(); err == nil {
			var t api.TxnRequest
			if json.NewDecoder(body).Decode(&t) == nil {
				for _, c := range t.Compare {
					r.note(c.Key)
				}
				for _, op := range t.Ops {
					r.note(op.Key)
					switch op.Op {
					case "put":
						r.live.put(op.Key, len(op.Value))
					case "add":
						r.live.put(op.Key, 20) // a decimal integer
					case "delete":
						r.live.del(op.Key)
					}
				}
			}
			body.Close()
		}
	}
	return r.next.RoundTrip(req)
}

// note records the prefix of key.
func (r *wireRecorder) note(key string) {
	pre, _, ok := strings.Cut(key, "/")
	if !ok {
		pre = "(none)"
	}
	r.mu.Lock()
	r.prefixes[pre] = true
	r.mu.Unlock()
}

func (r *wireRecorder) prefixList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for p := range r.prefixes {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// liveData is what the clients have written and not deleted: a key's
// value size by key, summed up as they change.
type liveData struct {
	// mu protects size and bytes.
	mu    sync.Mutex
	size  map[string]int
	bytes int64
}

func (l *liveData) put(key string, n int) {
	n = max(n, 0) + len(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bytes += int64(n - l.size[key])
	l.size[key] = n
}

func (l *liveData) del(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.size[key]; ok {
		l.bytes -= int64(n)
		delete(l.size, key)
	}
}

func (l *liveData) figures() (keys int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.size), l.bytes
}
