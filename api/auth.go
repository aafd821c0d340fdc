package api

import "strings"

// Grant access levels.
const (
	AccessRead  = "read"
	AccessWrite = "write" // and read
)

// Grant allows access to the keys that start with Prefix ("" for every
// key): reads, or reads and writes.
type Grant struct {
	Prefix string `json:"prefix"`
	Access string `json:"access"`
}

// TokenRequest is the body of POST /v1/admin/tokens.
type TokenRequest struct {
	Name   string  `json:"name"`
	Grants []Grant `json:"grants,omitempty"`
	Admin  bool    `json:"admin,omitempty"`
	// TTL is how long the token is valid (a Go duration; "" for ever).
	TTL string `json:"ttl,omitempty"`
}

// TokenCreated answers POST /v1/admin/tokens: the token's secret, shown
// this once (the cluster keeps only its hash).
type TokenCreated struct {
	Name    string `json:"name"`
	Token   string `json:"token"`
	Expires string `json:"expires,omitempty"`
}

// TokenInfo describes a token, without its secret.
type TokenInfo struct {
	Name    string  `json:"name"`
	Grants  []Grant `json:"grants"`
	Admin   bool    `json:"admin,omitempty"`
	Created string  `json:"created"`
	Expires string  `json:"expires,omitempty"`
}

// TokenList answers GET /v1/admin/tokens.
type TokenList struct {
	Tokens []TokenInfo `json:"tokens"`
}

// Principal is who a request's token names: what it may read and write.
// A nil Principal is a cluster without auth: everything is allowed.
type Principal struct {
	Name   string
	Admin  bool
	Grants []Grant
}

// CanRead tells whether p may read key.
func (p *Principal) CanRead(key string) bool { return p.can(key, false) }

// CanWrite tells whether p may write key.
func (p *Principal) CanWrite(key string) bool { return p.can(key, true) }

func (p *Principal) can(key string, write bool) bool {
	if p == nil || p.Admin {
		return true
	}
	for _, g := range p.Grants {
		if strings.HasPrefix(key, g.Prefix) && (!write || g.Access == AccessWrite) {
			return true
		}
	}
	return false
}

// CanReadRange tells whether p may read every key k with start <= k < end
// that starts with prefix (end "" for no bound): the whole range must lie
// under one granted prefix.
func (p *Principal) CanReadRange(prefix, start, end string) bool {
	if p == nil || p.Admin {
		return true
	}
	lo := max(prefix, start)
	for _, g := range p.Grants {
		if !strings.HasPrefix(lo, g.Prefix) {
			continue
		}
		switch {
		case strings.HasPrefix(prefix, g.Prefix):
			return true // every key of the range starts with prefix
		case end != "" && end <= prefixEnd(g.Prefix):
			return true
		}
	}
	return false
}

// prefixEnd returns the least string above every string that starts with
// p ("" if none: p is all 0xff bytes, or empty).
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}
