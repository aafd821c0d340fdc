package shell

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd/api"
)

// Usage lines of the token subcommands.
const (
	usageTokenCreate = "token create NAME [--read PREFIX]... [--write PREFIX]... [--admin] [--ttl D]"
	usageTokenList   = "token list"
	usageTokenRevoke = "token revoke NAME"
)

// lookTokens is the command that shows whether a token change whose
// outcome is unknown was made.
const lookTokens = "kvcli token list"

// token runs "token create", "token list" and "token revoke".
func (s *Shell) token(ctx context.Context, a *args) error {
	switch a.optional("") {
	case "create":
		return s.tokenCreate(ctx, a)
	case "list":
		if len(a.pos) != 1 || len(a.flags) > 0 {
			return usagef("usage: %s", usageTokenList)
		}
		list, err := s.c.Tokens(ctx)
		if err != nil {
			return err
		}
		if s.o.JSON {
			return s.emit(list)
		}
		printTokens(s.out, list)
		return nil
	case "revoke":
		if len(a.pos) != 2 || len(a.flags) > 0 {
			return usagef("usage: %s", usageTokenRevoke)
		}
		name := a.pos[1]
		if strings.TrimSpace(name) == "" {
			return usagef("NAME must not be empty (usage: %s)", usageTokenRevoke)
		}
		if err := s.c.RevokeToken(ctx, name); err != nil {
			return &changeError{err: err, look: lookTokens, what: "revoke token " + name}
		}
		if s.o.JSON {
			return s.emit(map[string]string{"revoked": name})
		}
		fmt.Fprintf(s.out, "token %s revoked: every node refuses it within a second\n", name)
		return nil
	}
	return usagef("usage: %s | %s | %s", usageTokenCreate, usageTokenList, usageTokenRevoke)
}

// tokenCreate runs "token create".
func (s *Shell) tokenCreate(ctx context.Context, a *args) error {
	if len(a.pos) != 2 {
		return usagef("usage: %s", usageTokenCreate)
	}
	req, err := tokenRequest(a.pos[1], a)
	if err != nil {
		return err
	}
	tok, err := s.c.CreateToken(ctx, req)
	if err != nil {
		return &changeError{err: err, look: lookTokens, what: "create token " + req.Name,
			ifMade: "its secret is lost: revoke it and create it again"}
	}
	if s.o.JSON {
		return s.emit(tok)
	}
	printTokenCreated(s.out, req, tok)
	return nil
}

// tokenRequest reads the request of "token create NAME": its grants
// (--read and --write, each repeatable, in the order given), --admin and
// --ttl. It refuses a
// token that could do nothing, an empty prefix (every key is an admin
// token's), an admin token with grants (it reaches every key already) and
// a TTL that is not a positive duration.
func tokenRequest(name string, a *args) (api.TokenRequest, error) {
	req := api.TokenRequest{Name: name, Admin: a.has("admin")}
	if strings.TrimSpace(name) == "" {
		return req, usagef("NAME must not be empty (usage: %s)", usageTokenCreate)
	}
	access := map[string]string{"read": api.AccessRead, "write": api.AccessWrite}
	for _, f := range a.given {
		if access[f.name] == "" {
			continue
		}
		if f.value == "" {
			return req, usagef("--%s needs a key prefix, not an empty one: a token for every key is an admin token (--admin)", f.name)
		}
		req.Grants = append(req.Grants, api.Grant{Prefix: f.value, Access: access[f.name]})
	}
	switch {
	case req.Admin && len(req.Grants) > 0:
		return req, usagef("an --admin token reaches every key already: give --admin without --read and --write")
	case !req.Admin && len(req.Grants) == 0:
		return req, usagef("token %s would allow nothing: give it --read PREFIX or --write PREFIX (repeatable), or --admin (usage: %s)", name, usageTokenCreate)
	}
	if v, ok := a.flags["ttl"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return req, usagef("--ttl needs a positive duration such as 720h, not %q", v)
		}
		req.TTL = v
	}
	return req, nil
}

// printTokenCreated reports a new token: what it may do, then its
// secret, alone on its line, and that it is not shown again.
func printTokenCreated(w io.Writer, req api.TokenRequest, tok api.TokenCreated) {
	what := "admin"
	if !req.Admin {
		what = "grants " + grantsText(req.Grants)
	}
	expires := "never expires"
	if tok.Expires != "" {
		expires = "expires " + tok.Expires
	}
	fmt.Fprintf(w, "token %s created (%s; %s):\n%s\n", tok.Name, what, expires, tok.Token)
	fmt.Fprintln(w, "it is shown this once (the cluster keeps only its hash): keep it safe; kvcli takes it with --token or KVD_TOKEN")
}

// printTokens writes the token table.
func printTokens(w io.Writer, list api.TokenList) {
	if len(list.Tokens) == 0 {
		fmt.Fprintln(w, "no tokens (the root token, in each node's root token file, is not listed)")
		return
	}
	rows := make([][]string, 0, len(list.Tokens))
	for _, t := range list.Tokens {
		admin := "-"
		if t.Admin {
			admin = "yes"
		}
		rows = append(rows, []string{t.Name, admin, grantsText(t.Grants), orDash(t.Created), orNever(t.Expires)})
	}
	table(w, []string{"NAME", "ADMIN", "GRANTS", "CREATED", "EXPIRES"}, rows)
}

// grantsText writes grants as prefix:access,...; a prefix that could be
// misread (empty, with a separator, a quote, a space or an unprintable
// character) is quoted.
func grantsText(grants []api.Grant) string {
	if len(grants) == 0 {
		return "-"
	}
	parts := make([]string, len(grants))
	for i, g := range grants {
		p := g.Prefix
		if p == "" || strings.ContainsAny(p, ",: \t\n\"") || !printable([]byte(p)) {
			p = strconv.Quote(p)
		}
		parts[i] = p + ":" + g.Access
	}
	return strings.Join(parts, ",")
}

func orNever(s string) string {
	if s == "" {
		return "never"
	}
	return s
}

// completeToken completes the arguments of "token": its subcommands,
// then for revoke the tokens' names (asked of the cluster, briefly).
func (s *Shell) completeToken(prev []string) []string {
	switch {
	case len(prev) == 0:
		return []string{"create", "list", "revoke"}
	case len(prev) == 1 && prev[0] == "revoke":
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		list, err := s.c.Tokens(ctx)
		if err != nil {
			return nil
		}
		names := make([]string, 0, len(list.Tokens))
		for _, t := range list.Tokens {
			names = append(names, t.Name)
		}
		return names
	}
	return nil
}
