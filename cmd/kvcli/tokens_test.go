package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// kvcliToken runs the binary as kvcli does, with KVD_TOKEN set to token
// ("" leaves it unset).
func kvcliToken(t *testing.T, c *testcluster.Cluster, sec *testcluster.Secure, token string, args ...string) result {
	t.Helper()
	cmd := exec.Command(kvcliBin, append([]string{"--endpoints", c.SecureURL(0), "--timeout", "5s",
		"--cacert", sec.CAFile, "--cert", sec.CertFile, "--key", sec.KeyFile}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "KVD_TOKEN="+token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{code, out.String(), errb.String()}
}

// On a cluster that requires tokens: the root token makes, lists and
// revokes tokens; a token with grants works within them; no token, a
// token without a grant and a revoked token exit 7; bad token requests
// are usage errors.
func TestKvcli_TokenCommands(t *testing.T) {
	sec := testcluster.NewSecure(t)
	c := testcluster.New(t, 3, 1, sec.Option())
	root := sec.RootToken(t)

	r := kvcliToken(t, c, sec, "", "get", "app/x")
	require.Equal(t, 7, r.code, r.stderr)
	require.Contains(t, r.stderr, "the cluster requires a token")

	r = kvcliToken(t, c, sec, "", "--token", root, "token", "create", "app", "--write", "app/", "--read", "shared/", "--ttl", "720h")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 3, r.stdout)
	require.Regexp(t, `^token app created \(grants app/:write,shared/:read; expires 20\d\d-.*\):$`, lines[0])
	app := lines[1]
	require.True(t, strings.HasPrefix(app, "kvd_"), "the token alone on its line: %q", app)
	require.Contains(t, lines[2], "keep it safe")

	r = kvcliToken(t, c, sec, root, "--json", "token", "create", "ops", "--admin")
	require.Equal(t, 0, r.code, r.stderr)
	var ops api.TokenCreated
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &ops))
	require.Equal(t, "ops", ops.Name)
	require.NotEmpty(t, ops.Token)

	r = kvcliToken(t, c, sec, root, "token", "create", "app", "--read", "z/")
	require.Equal(t, 4, r.code, "a name taken: %s", r.stderr)
	require.Contains(t, r.stderr, "refused, nothing was changed")
	for _, args := range [][]string{
		{"token", "create", "none"}, {"token", "create", "e", "--read", ""}, {"token", "create", "t", "--read", "a/", "--ttl", "soon"},
		{"token", "create", "o", "--read", "a/", "--write", "a/b"}, {"token", "create", "a/b", "--admin"}, {"token", "revoke"},
	} {
		r := kvcliToken(t, c, sec, root, args...)
		require.Equal(t, 2, r.code, "%q: %s", args, r.stderr)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "one line: %q", r.stderr)
	}

	// A new token reaches every node within a second.
	require.Eventually(t, func() bool {
		r = kvcliToken(t, c, sec, ops.Token, "token", "list")
		return r.code == 0
	}, 5*time.Second, 50*time.Millisecond)
	require.Regexp(t, `(?m)^NAME\s+ADMIN\s+GRANTS\s+CREATED\s+EXPIRES$`, r.stdout)
	require.Regexp(t, `(?m)^app\s+-\s+app/:write,shared/:read\s+20\S+\s+20\S+$`, r.stdout)
	require.Regexp(t, `(?m)^ops\s+yes\s+-\s+20\S+\s+never$`, r.stdout)
	require.NotContains(t, r.stdout, app)

	// The app token, within its grants and outside them.
	require.Eventually(t, func() bool { return kvcliToken(t, c, sec, app, "put", "app/x", "1").code == 0 }, 5*time.Second, 50*time.Millisecond)
	r = kvcliToken(t, c, sec, app, "get", "app/x")
	require.Equal(t, "1\n", r.stdout, r.stderr)
	r = kvcliToken(t, c, sec, app, "put", "shared/x", "1")
	require.Equal(t, 7, r.code, r.stderr)
	require.Contains(t, r.stderr, `forbidden, nothing was done: token app has no grant for writing "shared/x"`)
	r = kvcliToken(t, c, sec, app, "token", "list")
	require.Equal(t, 7, r.code, r.stderr)
	require.Contains(t, r.stderr, "an admin token is needed")

	r = kvcliToken(t, c, sec, root, "token", "revoke", "app")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "token app revoked: every node refuses it within a second\n", r.stdout)
	r = kvcliToken(t, c, sec, root, "token", "revoke", "app")
	require.Equal(t, 3, r.code, "revoked already: %s", r.stderr)
	require.Contains(t, r.stderr, "not found: no token named app")
	require.Eventually(t, func() bool { return kvcliToken(t, c, sec, app, "get", "app/x").code == 7 }, 5*time.Second, 50*time.Millisecond)
}
