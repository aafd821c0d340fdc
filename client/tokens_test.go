package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

// newAuthCluster starts a cluster that requires tokens and returns it
// with its root token.
func newAuthCluster(t *testing.T, nodes, groups int) (*testcluster.Cluster, string) {
	t.Helper()
	sec := testcluster.NewSecure(t)
	c := testcluster.New(t, nodes, groups, sec.Option())
	secures[c] = sec
	return c, sec.RootToken(t)
}

// secures are the security settings of the clusters newAuthCluster made.
var secures = map[*testcluster.Cluster]*testcluster.Secure{}

// newTokenClient returns a client of every node of c that sends token,
// once a node accepts it (a new token reaches every node within a
// second).
func newTokenClient(t *testing.T, ctx context.Context, c *testcluster.Cluster, token string) *client.Client {
	t.Helper()
	cfg := client.DefaultConfig(c.SecureURLs()...)
	cfg.Token, cfg.TLS = token, secures[c].TLS
	var cl *client.Client
	require.Eventually(t, func() bool {
		var err error
		cl, err = client.New(ctx, cfg)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// An admin makes tokens, lists them (without their secrets) and revokes
// them; a token may do what its grants allow and nothing else, and is
// refused once revoked.
func TestClient_Tokens_CreateListRevoke(t *testing.T) {
	c, rootToken := newAuthCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	root := newTokenClient(t, ctx, c, rootToken)

	list, err := root.Tokens(ctx)
	require.NoError(t, err)
	require.Empty(t, list.Tokens, "the root token is not listed")

	app, err := root.CreateToken(ctx, api.TokenRequest{Name: "app", Grants: []api.Grant{
		{Prefix: "app/", Access: api.AccessWrite}, {Prefix: "shared/", Access: api.AccessRead}}})
	require.NoError(t, err)
	require.Equal(t, "app", app.Name)
	require.True(t, strings.HasPrefix(app.Token, "kvd_"), "got %q", app.Token)
	require.Empty(t, app.Expires, "no ttl: it never expires")
	ops, err := root.CreateToken(ctx, api.TokenRequest{Name: "ops", Admin: true, TTL: "1h"})
	require.NoError(t, err)
	exp, err := time.Parse(time.RFC3339, ops.Expires)
	require.NoError(t, err, "expires %q", ops.Expires)
	require.WithinDuration(t, time.Now().Add(time.Hour), exp, time.Minute)

	list, err = root.Tokens(ctx)
	require.NoError(t, err)
	require.Len(t, list.Tokens, 2)
	require.Equal(t, "app", list.Tokens[0].Name)
	require.False(t, list.Tokens[0].Admin)
	require.Equal(t, []api.Grant{{Prefix: "app/", Access: api.AccessWrite}, {Prefix: "shared/", Access: api.AccessRead}}, list.Tokens[0].Grants)
	require.NotEmpty(t, list.Tokens[0].Created)
	require.Equal(t, "ops", list.Tokens[1].Name)
	require.True(t, list.Tokens[1].Admin)
	require.Equal(t, ops.Expires, list.Tokens[1].Expires)
	raw, err := json.Marshal(list)
	require.NoError(t, err)
	require.NotContains(t, string(raw), app.Token, "no secret is listed")
	require.NotContains(t, string(raw), ops.Token)

	// Refusals: bad requests, a name taken, a name unknown.
	for _, bad := range []api.TokenRequest{
		{Name: "nothing"},
		{Name: "empty", Grants: []api.Grant{{Prefix: "", Access: api.AccessRead}}},
		{Name: "ttl", Grants: []api.Grant{{Prefix: "a/", Access: api.AccessRead}}, TTL: "forever"},
		{Name: "a/b", Grants: []api.Grant{{Prefix: "a/", Access: api.AccessRead}}},
	} {
		_, err := root.CreateToken(ctx, bad)
		require.ErrorIs(t, err, kvd.ErrInvalid, "%+v", bad)
	}
	_, err = root.CreateToken(ctx, api.TokenRequest{Name: "app", Grants: []api.Grant{{Prefix: "z/", Access: api.AccessRead}}})
	require.ErrorIs(t, err, kvd.ErrConflict)
	require.ErrorIs(t, root.RevokeToken(ctx, "nobody"), kvd.ErrNotFound)
	require.ErrorIs(t, root.RevokeToken(ctx, ""), kvd.ErrInvalid)

	// The app token works within its grants only, and is no admin.
	cl := newTokenClient(t, ctx, c, app.Token)
	_, err = cl.Put(ctx, "app/x", []byte("1"))
	require.NoError(t, err)
	_, err = cl.Put(ctx, "shared/x", []byte("1"))
	require.ErrorIs(t, err, kvd.ErrForbidden, "a read grant does not write")
	_, err = cl.Get(ctx, "other/x")
	require.ErrorIs(t, err, kvd.ErrForbidden)
	_, err = cl.Tokens(ctx)
	require.ErrorIs(t, err, kvd.ErrForbidden)
	_, err = cl.CreateToken(ctx, api.TokenRequest{Name: "mine", Admin: true})
	require.ErrorIs(t, err, kvd.ErrForbidden)
	require.ErrorIs(t, cl.RevokeToken(ctx, "ops"), kvd.ErrForbidden)

	// An admin token made by the root token administers too.
	opsCl := newTokenClient(t, ctx, c, ops.Token)
	require.NoError(t, opsCl.RevokeToken(ctx, "app"))
	require.ErrorIs(t, opsCl.RevokeToken(ctx, "app"), kvd.ErrNotFound, "revoked already")
	list, err = opsCl.Tokens(ctx)
	require.NoError(t, err)
	require.Len(t, list.Tokens, 1)
	require.Equal(t, "ops", list.Tokens[0].Name)

	// Revoked: refused by every node within a second.
	revoked := time.Now()
	require.Eventually(t, func() bool {
		_, err := cl.Get(ctx, "app/x")
		return errors.Is(err, kvd.ErrUnauthenticated)
	}, 5*time.Second, 10*time.Millisecond)
	require.Less(t, time.Since(revoked), 1500*time.Millisecond)
	// A node that is not the leader forwards a key's read to it (which
	// refuses the token at once); its own copy of the table, which serves
	// /v1/cluster, is read again within tokenRefresh.
	require.Eventually(t, func() bool {
		for i := range c.Size() {
			if secures[c].Do(t, "GET", c.SecureURL(i)+"/v1/cluster", nil, "Authorization", "Bearer "+app.Token).Status != 401 {
				return false
			}
		}
		return true
	}, 5*time.Second, 100*time.Millisecond)
	require.Less(t, time.Since(revoked), 1500*time.Millisecond)
	for i := range c.Size() {
		r := secures[c].Do(t, "GET", c.SecureURL(i)+"/v1/kv/app/x", nil, "Authorization", "Bearer "+app.Token)
		require.Equal(t, 401, r.Status, "node %d: %s", i, r.Body)
	}
	cfg := client.DefaultConfig(c.SecureURLs()...)
	cfg.TLS, cfg.Token = secures[c].TLS, app.Token
	_, err = client.New(ctx, cfg)
	require.ErrorIs(t, err, kvd.ErrUnauthenticated)
}
