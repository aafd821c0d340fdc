package shell

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
)

func TestTokenCommands_UsageErrorsExitTwo(t *testing.T) {
	sh := New(nil, Options{}, strings.NewReader(""), io.Discard)
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"token"}, "usage: token create NAME"},
		{[]string{"token", "frob"}, "usage: token create NAME"},
		{[]string{"token", "create"}, "usage: " + usageTokenCreate},
		{[]string{"token", "create", "a", "b", "--admin"}, "usage: " + usageTokenCreate},
		{[]string{"token", "create", "app"}, "token app would allow nothing: give it --read PREFIX or --write PREFIX"},
		{[]string{"token", "create", "app", "--ttl", "1h"}, "would allow nothing"},
		{[]string{"token", "create", "app", "--read", ""}, "--read needs a key prefix, not an empty one"},
		{[]string{"token", "create", "app", "--write=", "--read", "a/"}, "--write needs a key prefix, not an empty one"},
		{[]string{"token", "create", "app", "--read"}, "--read needs a value"},
		{[]string{"token", "create", "app", "--admin", "--read", "a/"}, "an --admin token reaches every key already"},
		{[]string{"token", "create", "app", "--read", "a/", "--ttl", "soon"}, `--ttl needs a positive duration such as 720h, not "soon"`},
		{[]string{"token", "create", "app", "--read", "a/", "--ttl", "0s"}, "--ttl needs a positive duration"},
		{[]string{"token", "create", "app", "--read", "a/", "--ttl", "-1h"}, "--ttl needs a positive duration"},
		{[]string{"token", "create", "", "--admin"}, "NAME must not be empty"},
		{[]string{"token", "create", "app", "--read", "a/", "--force"}, "unknown flag --force"},
		{[]string{"token", "list", "all"}, "usage: " + usageTokenList},
		{[]string{"token", "list", "--admin"}, "usage: " + usageTokenList},
		{[]string{"token", "revoke"}, "usage: " + usageTokenRevoke},
		{[]string{"token", "revoke", "a", "b"}, "usage: " + usageTokenRevoke},
		{[]string{"token", "revoke", "a", "--admin"}, "usage: " + usageTokenRevoke},
		{[]string{"token", "revoke", " "}, "NAME must not be empty"},
	} {
		err := sh.Exec(context.Background(), tc.words, false)
		require.Equal(t, ExitUsage, ExitCode(err), "%q: %v", tc.words, err)
		require.Contains(t, Explain(err), tc.want, "%q", tc.words)
		require.NotContains(t, Explain(err), "\n", "one line")
	}
}

func TestTokenCommands_AnswersAndExitCodes(t *testing.T) {
	f, c := newFakeAdmin(t)
	var out bytes.Buffer
	sh := New(c, Options{}, strings.NewReader(""), &out)
	run := func(words ...string) error {
		out.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	f.answer(http.StatusOK, api.TokenCreated{Name: "app", Token: "kvd_secret", Expires: "2030-01-02T03:04:05Z"})
	require.NoError(t, run("token", "create", "app", "--write", "app/", "--read", "shared/", "--read", "logs/", "--ttl", "720h"))
	require.Equal(t, "token app created (grants app/:write,shared/:read,logs/:read; expires 2030-01-02T03:04:05Z):\n"+
		"kvd_secret\n"+
		"it is shown this once (the cluster keeps only its hash): keep it safe; kvcli takes it with --token or KVD_TOKEN\n", out.String())
	require.Equal(t, `POST /v1/admin/tokens {"name":"app","grants":[{"prefix":"app/","access":"write"},{"prefix":"shared/","access":"read"},{"prefix":"logs/","access":"read"}],"ttl":"720h"}`, f.requests()[0])

	f.answer(http.StatusOK, api.TokenCreated{Name: "ops", Token: "kvd_other"})
	require.NoError(t, run("token", "create", "ops", "--admin"))
	require.True(t, strings.HasPrefix(out.String(), "token ops created (admin; never expires):\nkvd_other\n"), out.String())
	require.Equal(t, `POST /v1/admin/tokens {"name":"ops","admin":true}`, f.requests()[1])

	f.answerTo("GET", "/v1/admin/tokens", http.StatusOK, api.TokenList{Tokens: []api.TokenInfo{
		{Name: "app", Grants: []api.Grant{{Prefix: "app/", Access: api.AccessWrite}, {Prefix: "a b", Access: api.AccessRead}}, Created: "2025-01-01T00:00:00Z", Expires: "2030-01-02T03:04:05Z"},
		{Name: "ops", Grants: []api.Grant{}, Admin: true, Created: "2025-01-02T00:00:00Z"},
	}})
	require.NoError(t, run("token", "list"))
	require.Equal(t, `NAME  ADMIN  GRANTS                 CREATED               EXPIRES
app   -      app/:write,"a b":read  2025-01-01T00:00:00Z  2030-01-02T03:04:05Z
ops   yes    -                      2025-01-02T00:00:00Z  never
`, out.String())
	require.Equal(t, "GET /v1/admin/tokens ", f.requests()[2])

	f.answer(http.StatusOK, map[string]string{"revoked": "app"})
	require.NoError(t, run("token", "revoke", "app"))
	require.Equal(t, "token app revoked: every node refuses it within a second\n", out.String())
	require.Equal(t, "DELETE /v1/admin/tokens/app ", f.requests()[3])

	// --json prints the answers.
	sh.o.JSON = true
	f.answer(http.StatusOK, api.TokenCreated{Name: "app", Token: "kvd_secret"})
	require.NoError(t, run("token", "create", "app", "--read", "a/"))
	var created api.TokenCreated
	require.NoError(t, json.Unmarshal(out.Bytes(), &created))
	require.Equal(t, api.TokenCreated{Name: "app", Token: "kvd_secret"}, created)
	require.NoError(t, run("token", "list"))
	var list api.TokenList
	require.NoError(t, json.Unmarshal(out.Bytes(), &list))
	require.Len(t, list.Tokens, 2)
	f.answer(http.StatusOK, map[string]string{"revoked": "app"})
	require.NoError(t, run("token", "revoke", "app"))
	require.JSONEq(t, `{"revoked":"app"}`, out.String())
	sh.o.JSON = false

	f.answerTo("GET", "/v1/admin/tokens", http.StatusOK, api.TokenList{Tokens: []api.TokenInfo{}})
	require.NoError(t, run("token", "list"))
	require.Equal(t, "no tokens (the root token, in each node's root token file, is not listed)\n", out.String())

	for _, r := range []struct {
		words   []string
		status  int
		code    string
		message string
		exit    int
		explain string
	}{
		{[]string{"token", "create", "app", "--read", "a/"}, http.StatusConflict, api.CodeConflict, "a token named app exists: revoke it first",
			ExitPrecondition, "refused, nothing was changed: a token named app exists: revoke it first"},
		{[]string{"token", "create", "app", "--read", "a/", "--read", "a/b"}, http.StatusBadRequest, api.CodeInvalidRequest, `grant prefixes "a/" and "a/b" overlap: grant one`,
			ExitUsage, `invalid: grant prefixes "a/" and "a/b" overlap: grant one`},
		{[]string{"token", "revoke", "nobody"}, http.StatusNotFound, api.CodeNotFound, "no token named nobody",
			ExitNotFound, "not found: no token named nobody"},
		{[]string{"token", "list"}, http.StatusUnauthorized, api.CodeUnauthenticated, "unknown or revoked token",
			ExitDenied, "not authenticated, nothing was done: unknown or revoked token; give a valid token with --token or KVD_TOKEN"},
		{[]string{"token", "create", "x", "--admin"}, http.StatusForbidden, api.CodeForbidden, "token app has no grant for the operations API (an admin token is needed)",
			ExitDenied, "forbidden, nothing was done: token app has no grant for the operations API (an admin token is needed); use a token whose grants cover it"},
		{[]string{"token", "create", "app", "--admin"}, http.StatusInternalServerError, api.CodeInternal, "boom",
			ExitUnknown, `outcome unknown: the change may or may not have been made; look with "kvcli token list" before retrying (if it was made, its secret is lost: revoke it and create it again): create token app: boom`},
		{[]string{"token", "revoke", "app"}, http.StatusInternalServerError, api.CodeInternal, "boom",
			ExitUnknown, `look with "kvcli token list" before retrying`},
	} {
		f.answer(r.status, api.Error{Error: api.ErrorDetail{Code: r.code, Message: r.message}})
		f.answerTo("GET", "/v1/admin/tokens", r.status, api.Error{Error: api.ErrorDetail{Code: r.code, Message: r.message}})
		err := run(r.words...)
		require.Equal(t, r.exit, ExitCode(err), "%q: %v", r.words, err)
		require.Contains(t, Explain(err), r.explain, "%q", r.words)
		require.Empty(t, out.String())
	}
}

func TestGrantsText(t *testing.T) {
	for _, tc := range []struct {
		grants []api.Grant
		want   string
	}{
		{nil, "-"},
		{[]api.Grant{{Prefix: "app/", Access: "write"}}, "app/:write"},
		{[]api.Grant{{Prefix: "a/", Access: "read"}, {Prefix: "b/", Access: "write"}}, "a/:read,b/:write"},
		{[]api.Grant{{Prefix: "a,b", Access: "read"}, {Prefix: "c:d", Access: "read"}}, `"a,b":read,"c:d":read`},
		{[]api.Grant{{Prefix: "x\x00", Access: "read"}, {Prefix: "l\n", Access: "read"}}, `"x\x00":read,"l\n":read`},
		{[]api.Grant{{Prefix: "", Access: "read"}}, `"":read`},
	} {
		require.Equal(t, tc.want, grantsText(tc.grants))
	}
}

func TestTokenCompletion(t *testing.T) {
	f, c := newFakeAdmin(t)
	sh := New(c, Options{}, strings.NewReader(""), io.Discard)
	f.answerTo("GET", "/v1/admin/tokens", http.StatusOK, api.TokenList{Tokens: []api.TokenInfo{{Name: "app"}, {Name: "ops", Admin: true}}})
	comp := &completer{s: sh}
	complete := func(line string) []string {
		got, _ := comp.Do([]rune(line), len([]rune(line)))
		var out []string
		for _, g := range got {
			out = append(out, string(g))
		}
		return out
	}
	require.Equal(t, []string{"ken "}, complete("to"))
	require.Equal(t, []string{"create ", "list ", "revoke "}, complete("token "))
	require.Equal(t, []string{"app ", "ops "}, complete("token revoke "))
	require.Equal(t, []string{"ps "}, complete("token revoke o"))
	require.Empty(t, complete("token create "))
	require.Empty(t, complete("token revoke app "))

	var out bytes.Buffer
	help := New(nil, Options{}, strings.NewReader(""), &out)
	require.NoError(t, help.Exec(context.Background(), []string{"help", "token"}, false))
	for _, want := range []string{usageTokenCreate, usageTokenList, usageTokenRevoke, "prints the token once", "KVD_TOKEN"} {
		require.Contains(t, out.String(), want)
	}
}

func TestParse_RepeatedFlagsKeepEveryValue(t *testing.T) {
	a, err := parse(lookup("token"), []string{"create", "app", "--read", "a/", "--write=b/", "--read", "c/"})
	require.NoError(t, err)
	require.Equal(t, []string{"create", "app"}, a.pos)
	require.Equal(t, []flagArg{{"read", "a/"}, {"write", "b/"}, {"read", "c/"}}, a.given)
	require.Equal(t, "c/", a.flags["read"], "the last value, for the commands that take one")
}
