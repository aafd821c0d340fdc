package httpapi

import (
	"net/http"
	"net/http/pprof"
	"strings"
)

// withProfiling serves net/http/pprof under /debug/pprof/ in front of h;
// with auth on, to admin tokens only.
func withProfiling(h *Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/debug/pprof/") {
			if h.b.AuthOn() {
				var ok bool
				if r, ok = h.authenticate(w, r); !ok || !h.allowAdmin(w, r) {
					return
				}
			}
			mux.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
