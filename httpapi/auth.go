package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/console"
)

// With auth on (Backend.AuthOn), every request but the health, readiness
// and metrics endpoints and the node-to-node ones (which have their own
// credential) carries "Authorization: Bearer TOKEN"; the token's
// principal goes in the request's context, and each handler checks that
// its grants cover every key the request touches. Failed attempts are
// counted and limited per client address.

type principalKey struct{}

// principalOf returns the request's principal (nil with auth off).
func principalOf(r *http.Request) *api.Principal {
	a, _ := r.Context().Value(principalKey{}).(authInfo)
	return a.p
}

// idemScope returns the scope of the request's idempotency key: the name
// of its token ("" with auth off). A request a node forwards carries the
// client's token and is authenticated again where it lands, so its scope
// is the same whichever node it entered.
func idemScope(r *http.Request) string {
	if p := principalOf(r); p != nil {
		return p.Name
	}
	return ""
}

// openPath tells whether path is served without a token: health,
// metrics, and the console's static assets (the page then asks for a
// token and sends it with every call it makes).
func openPath(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/metrics", "/ui":
		return true
	}
	return strings.HasPrefix(path, console.Prefix)
}

// authenticate checks r's token; it answers the request with the error
// and reports false when the token is missing or bad.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	hdr := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(hdr, "Bearer ")
	tok = strings.TrimSpace(tok)
	var p *api.Principal
	var err error
	reason := "invalid"
	switch {
	case !ok && hdr != "":
		reason = "malformed"
		err = fmt.Errorf("%w: the Authorization header is not \"Bearer TOKEN\"", kvd.ErrUnauthenticated)
	case tok == "":
		reason = "missing"
		fallthrough
	default:
		p, err = h.b.Authenticate(tok)
	}
	if err == nil {
		// A valid token always passes: only failures are limited, so
		// that strangers cannot lock out an address's clients.
		return r.WithContext(context.WithValue(r.Context(), principalKey{}, authInfo{p: p, token: tok})), true
	}
	if !errors.Is(err, kvd.ErrUnauthenticated) {
		// The node could not check the token (its table is not
		// confirmed): not the client's failure.
		h.refuse(w, r, err)
		return r, false
	}
	if ip := clientIP(r); !h.authFailures.fail(ip) {
		reason = "limited"
		err = fmt.Errorf("%w: too many failed authentications from %s; wait", kvd.ErrOverloaded, ip)
	}
	h.metrics.authFailures.WithLabelValues(reason).Inc()
	h.refuse(w, r, err)
	return r, false
}

// authInfo is what authentication leaves in a request's context.
type authInfo struct {
	p     *api.Principal
	token string
}

// tokenOf returns the request's token ("" with auth off).
func tokenOf(r *http.Request) string {
	a, _ := r.Context().Value(principalKey{}).(authInfo)
	return a.token
}

// allow answers 403 and reports false unless ok; what names the request.
func (h *Handler) allow(w http.ResponseWriter, r *http.Request, ok bool, what string) bool {
	if ok {
		return true
	}
	p := principalOf(r)
	h.metrics.authFailures.WithLabelValues("forbidden").Inc()
	h.refuse(w, r, fmt.Errorf("%w: token %s has no grant for %s", kvd.ErrForbidden, p.Name, what))
	return false
}

// allowAdmin answers 403 unless the request's token is an admin's.
func (h *Handler) allowAdmin(w http.ResponseWriter, r *http.Request) bool {
	p := principalOf(r)
	return h.allow(w, r, p == nil || p.Admin, "the operations API (an admin token is needed)")
}

// clientIP is the address a request came from, without its port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// failureLimiter limits failed authentications per client address: a
// token bucket of burst attempts refilled at rate per second.
type failureLimiter struct {
	rate, burst float64
	mu          sync.Mutex // protects buckets
	buckets     map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxTrackedAddrs bounds the addresses tracked: past it the table starts
// over (a flood of addresses gets no more than a fresh burst each).
const maxTrackedAddrs = 10000

// fail charges a failed authentication to ip, and tells whether ip is
// still within its allowance.
func (l *failureLimiter) fail(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil || len(l.buckets) > maxTrackedAddrs {
		l.buckets = map[string]*bucket{}
	}
	now := time.Now()
	b := l.buckets[ip]
	if b == nil {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate) - 1
	b.at = now
	return b.tokens >= 1
}

// adminOnly serves fn to admin tokens only.
func (h *Handler) adminOnly(fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.allowAdmin(w, r) {
			fn(w, r)
		}
	}
}
