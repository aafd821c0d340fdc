package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/store"
)

// With Config.Auth, every client request carries a bearer token. Tokens
// live hashed (SHA-256) in the system group's state (store/tokens.go);
// every node keeps a copy of the table, read from its own replica of the
// system group or, if it has none, from a member, every tokenRefresh: a
// revoked token is refused everywhere within that. The root token, in
// each node's root token file, is an admin token every node that holds
// the file accepts.

// tokenRefresh is how often a node reads the token table again;
// tokenStale is how long it trusts a table it could not confirm (read
// linearizably from the system group): past it, a node that lost touch
// with the system group refuses every token but the root's (503) rather
// than take a revoked one.
const (
	tokenRefresh = 250 * time.Millisecond
	tokenStale   = 2 * time.Second
)

// tokenPrefix starts every token kvd makes.
const tokenPrefix = "kvd_"

// maxTokenBytes bounds a token: longer ones are refused unread.
const maxTokenBytes = 256

// tokenTable is a node's copy of the token table, by secret hash.
type tokenTable struct {
	byHash map[[32]byte]store.TokenRecord
}

// newToken returns a fresh token secret.
func newToken() string {
	var b [32]byte
	rand.Read(b[:])
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// hashToken returns a token's hash.
func hashToken(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

// loadRootToken reads the root token file, creating it (mode 0600) with a
// fresh token if it is absent.
func loadRootToken(path string) ([32]byte, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := createRootToken(path); err != nil {
			return [32]byte{}, fmt.Errorf("root token file: %w", err)
		}
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return [32]byte{}, fmt.Errorf("root token file: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return [32]byte{}, fmt.Errorf("root token file %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	tok := strings.TrimSpace(string(raw))
	if len(tok) < 16 || len(tok) > maxTokenBytes {
		return [32]byte{}, fmt.Errorf("root token file %s: a token of %d bytes (16 to %d)", path, len(tok), maxTokenBytes)
	}
	return hashToken(tok), nil
}

// createRootToken writes a fresh token to path, whole, unless the file
// exists by then (another node sharing it made one first).
func createRootToken(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".root-token-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(newToken() + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// A link is made whole or not at all, and never replaces a file.
	if err := os.Link(f.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// Authenticate returns who the bearer token tok names (a nil Principal
// when auth is off): kvd.ErrUnauthenticated for no token, an unknown one
// or an expired one.
func (s *Server) Authenticate(tok string) (*api.Principal, error) {
	if !s.cfg.Auth {
		return nil, nil
	}
	if tok == "" {
		return nil, fmt.Errorf("%w: the cluster requires a token (Authorization: Bearer TOKEN)", kvd.ErrUnauthenticated)
	}
	if len(tok) > maxTokenBytes {
		return nil, fmt.Errorf("%w: the token is longer than %d bytes", kvd.ErrUnauthenticated, maxTokenBytes)
	}
	h := hashToken(tok)
	if subtle.ConstantTimeCompare(h[:], s.auth.rootHash[:]) == 1 {
		return &api.Principal{Name: "root", Admin: true}, nil
	}
	t := s.auth.tokens.Load()
	if t == nil {
		return nil, fmt.Errorf("%w: the token table is not known yet; retry", kvd.ErrUnavailable)
	}
	if age := time.Since(time.Unix(0, s.auth.confirmed.Load())); age > tokenStale {
		return nil, fmt.Errorf("%w: this node could not confirm the token table for %s (is the system group reachable?); retry, or through another node", kvd.ErrUnavailable, age.Round(time.Second))
	}
	// The map finds the hash; the stored hash is compared again in
	// constant time (the map's own comparison is not).
	rec, ok := t.byHash[h]
	if !ok || subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(hex.EncodeToString(h[:]))) != 1 {
		return nil, fmt.Errorf("%w: unknown or revoked token", kvd.ErrUnauthenticated)
	}
	if rec.Expires != 0 && time.Now().UnixNano() > rec.Expires {
		return nil, fmt.Errorf("%w: token %s expired", kvd.ErrUnauthenticated, rec.Name)
	}
	return &api.Principal{Name: rec.Name, Admin: rec.Admin, Grants: rec.Grants}, nil
}

// refreshTokens reads the token table again: from this node's replica of
// the system group, else from a member of it.
func (s *Server) refreshTokens(ctx context.Context) {
	// One refresh at a time: two that overlap (the background one and a
	// token change's own) could store their tables out of order, an older
	// one last, and bring a revoked token back for a while.
	s.auth.refreshMu.Lock()
	defer s.auth.refreshMu.Unlock()
	var recs []store.TokenRecord
	if g, ok := s.hosted()[s.Map().SystemGroup()]; ok {
		// The local table only moves forward as the log applies: take it
		// in any case; it is confirmed current once a read barrier says
		// this replica has applied all that was committed.
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := g.ReadBarrier(rctx, kvd.Follower) // linearizable, on any replica
		cancel()
		s.storeTokens(g.Store().Tokens(), err == nil)
		if err != nil {
			s.log.Debug("cannot confirm the token table", "err", err)
		}
		return
	} else {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.askMembers(rctx, s.Map().SystemGroup(), "/v1/internal/tokens", &recs)
		cancel()
		if err != nil {
			s.log.Debug("cannot read the token table", "err", err)
			return
		}
	}
	s.storeTokens(recs, true)
}

// storeTokens makes recs the node's token table; confirmed tells that it
// was read linearizably.
func (s *Server) storeTokens(recs []store.TokenRecord, confirmed bool) {
	t := &tokenTable{byHash: make(map[[32]byte]store.TokenRecord, len(recs))}
	for _, r := range recs {
		raw, err := hex.DecodeString(r.Hash)
		if err != nil || len(raw) != 32 {
			continue
		}
		t.byHash[[32]byte(raw)] = r
	}
	s.auth.tokens.Store(t)
	if confirmed {
		s.auth.confirmed.Store(time.Now().UnixNano())
	}
}

// InternalTokens serves the token table, encoded, to a node without a
// replica of the system group (GET /v1/internal/tokens).
func (s *Server) InternalTokens(ctx context.Context) ([]byte, error) {
	g, ok := s.hosted()[s.Map().SystemGroup()]
	if !ok {
		return nil, fmt.Errorf("this node holds no replica of the system group: %w", kvd.ErrUnavailable)
	}
	if err := g.ReadBarrier(ctx, kvd.Follower); err != nil {
		return nil, err
	}
	return json.Marshal(g.Store().Tokens())
}

// CreateToken makes a token (admin): its secret is answered once.
func (s *Server) CreateToken(ctx context.Context, r api.TokenRequest) (api.TokenCreated, error) {
	if err := store.CheckTokenName(r.Name); err != nil {
		return api.TokenCreated{}, err
	}
	if err := store.CheckGrants(r.Grants); err != nil {
		return api.TokenCreated{}, err
	}
	if len(r.Grants) == 0 && !r.Admin {
		return api.TokenCreated{}, fmt.Errorf("%w: a token needs grants or admin", kvd.ErrInvalid)
	}
	now := time.Now()
	rec := store.TokenRecord{Name: r.Name, Grants: r.Grants, Admin: r.Admin, Created: now.UnixNano()}
	out := api.TokenCreated{Name: r.Name}
	if r.TTL != "" {
		d, err := time.ParseDuration(r.TTL)
		if err != nil || d <= 0 || d > kvd.MaxTTL {
			return api.TokenCreated{}, fmt.Errorf("%w: ttl is a positive Go duration (such as 720h), at most %v, not %q", kvd.ErrInvalid, kvd.MaxTTL, r.TTL)
		}
		rec.Expires = now.Add(d).UnixNano()
		out.Expires = now.Add(d).UTC().Format(time.RFC3339)
	}
	out.Token = newToken()
	h := hashToken(out.Token)
	rec.Hash = hex.EncodeToString(h[:])
	data, _ := json.Marshal(store.TokenOp{Op: store.TokenPut, Token: rec})
	if _, err := s.proposeIn(ctx, s.Map().SystemGroup(), store.Cmd{Kind: store.CmdTokens, Data: data}); err != nil {
		return api.TokenCreated{}, fmt.Errorf("create token %s: %w", r.Name, err)
	}
	s.refreshTokens(ctx)
	return out, nil
}

// RevokeToken deletes the token named name (admin).
func (s *Server) RevokeToken(ctx context.Context, name string) error {
	if err := store.CheckTokenName(name); err != nil {
		return err
	}
	data, _ := json.Marshal(store.TokenOp{Op: store.TokenDelete, Name: name})
	if _, err := s.proposeIn(ctx, s.Map().SystemGroup(), store.Cmd{Kind: store.CmdTokens, Data: data}); err != nil {
		return fmt.Errorf("revoke token %s: %w", name, err)
	}
	s.refreshTokens(ctx)
	return nil
}

// Tokens lists the tokens, without their secrets (admin).
func (s *Server) Tokens(ctx context.Context) (api.TokenList, error) {
	var recs []store.TokenRecord
	if g, ok := s.hosted()[s.Map().SystemGroup()]; ok {
		if err := g.ReadBarrier(ctx, kvd.Linearizable); err == nil {
			recs = g.Store().Tokens()
		}
	}
	if recs == nil {
		if t := s.auth.tokens.Load(); t != nil {
			for _, r := range t.byHash {
				recs = append(recs, r)
			}
		}
	}
	slices.SortFunc(recs, func(a, b store.TokenRecord) int { return strings.Compare(a.Name, b.Name) })
	out := api.TokenList{Tokens: []api.TokenInfo{}}
	for _, r := range recs {
		ti := api.TokenInfo{Name: r.Name, Grants: append([]api.Grant{}, r.Grants...), Admin: r.Admin, Created: time.Unix(0, r.Created).UTC().Format(time.RFC3339)}
		if r.Expires != 0 {
			ti.Expires = time.Unix(0, r.Expires).UTC().Format(time.RFC3339)
		}
		out.Tokens = append(out.Tokens, ti)
	}
	return out, nil
}

// AuthOn tells whether the node requires tokens.
func (s *Server) AuthOn() bool { return s.cfg.Auth }

// authState is the node's auth: the root token's hash and the token
// table.
type authState struct {
	rootHash [32]byte
	tokens   atomic.Pointer[tokenTable]
	// confirmed is when the table was last read linearizably (Unix ns).
	confirmed atomic.Int64
	// refreshMu serializes refreshTokens.
	refreshMu sync.Mutex
}
