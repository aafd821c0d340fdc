package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// A cluster with auth: no token is 401, a token for app/ may do what its
// grants allow and gets 403 for anything reaching outside them (a key, a
// scan, a transaction, a watch, the operations API), a revoked token is
// refused by every node within a second, and bad tokens and grants are
// clear errors.
func TestAuth_TokensGrantPrefixesAndRevokeEverywhere(t *testing.T) {
	rootFile := filepath.Join(t.TempDir(), "root.token")
	c, certs := tlsCluster(t, 3, 2, func(cfg *server.Config) {
		cfg.Auth, cfg.RootTokenFile = true, rootFile
	})
	aliceCert, aliceKey := pki.CertFiles(certs, pki.Client, "client")
	tlsCfg, err := pki.ClientFiles(filepath.Join(certs, pki.CAFile), aliceCert, aliceKey)
	require.NoError(t, err)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer hc.CloseIdleConnections()
	raw, err := os.ReadFile(rootFile)
	require.NoError(t, err)
	st, err := os.Stat(rootFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	root := "Bearer " + strings.TrimSpace(string(raw))
	do := func(i int, method, path, auth string, body []byte) testcluster.Response {
		t.Helper()
		req, _ := http.NewRequest(method, strings.Replace(c.URL(i), "http://", "https://", 1)+path, bytes.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return testcluster.Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	}

	r := do(0, "GET", "/v1/kv/app/x", "", nil)
	require.Equal(t, 401, r.Status)
	require.Equal(t, api.CodeUnauthenticated, r.ErrCode(t))
	require.Equal(t, 200, do(0, "GET", "/healthz", "", nil).Status, "health stays open")
	require.Equal(t, 401, do(1, "GET", "/v1/cluster", "", nil).Status)
	require.Equal(t, 200, do(1, "GET", "/v1/cluster", root, nil).Status)
	// The console's page loads without a token (it holds no data) and
	// then asks for one: what it shows comes through the API above.
	ui := do(1, "GET", "/ui/", "", nil)
	require.Equal(t, 200, ui.Status)
	require.Contains(t, string(ui.Body), "kvd console")

	mk := func(req api.TokenRequest) (int, api.TokenCreated, string) {
		body, _ := json.Marshal(req)
		r := do(1, "POST", "/v1/admin/tokens", root, body)
		var out api.TokenCreated
		json.Unmarshal(r.Body, &out)
		return r.Status, out, string(r.Body)
	}
	status, app, body := mk(api.TokenRequest{Name: "app", Grants: []api.Grant{{Prefix: "app/", Access: api.AccessWrite}}})
	require.Equal(t, 200, status, body)
	require.True(t, strings.HasPrefix(app.Token, "kvd_"))
	status, rd, body := mk(api.TokenRequest{Name: "reader", Grants: []api.Grant{{Prefix: "app/", Access: api.AccessRead}}, TTL: "1h"})
	require.Equal(t, 200, status, body)
	require.NotEmpty(t, rd.Expires)
	for _, bad := range []api.TokenRequest{
		{Name: "e", Grants: []api.Grant{{Prefix: "", Access: api.AccessRead}}},
		{Name: "o", Grants: []api.Grant{{Prefix: "a/", Access: api.AccessRead}, {Prefix: "a/b", Access: api.AccessWrite}}},
		{Name: "x", Grants: []api.Grant{{Prefix: "a/", Access: "all"}}},
		{Name: "", Grants: []api.Grant{{Prefix: "a/", Access: api.AccessRead}}},
		{Name: "nothing"},
		{Name: "t", Grants: []api.Grant{{Prefix: "a/", Access: api.AccessRead}}, TTL: "forever"},
	} {
		status, _, body := mk(bad)
		require.Equal(t, 400, status, "%+v: %s", bad, body)
	}
	status, _, body = mk(api.TokenRequest{Name: "app", Grants: []api.Grant{{Prefix: "z/", Access: api.AccessRead}}})
	require.Equal(t, 409, status, "a name is taken: %s", body)

	appAuth, rdAuth := "Bearer "+app.Token, "Bearer "+rd.Token

	// Every node learns the new tokens.
	require.Eventually(t, func() bool {
		for i := 0; i < 3; i++ {
			if do(i, "GET", "/v1/kv/app/none", appAuth, nil).Status != 404 {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond)

	// The Go client sends its token, and maps the refusals.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ccfg := client.DefaultConfig(c.URLs()...)
	ccfg.Token, ccfg.TLS = app.Token, tlsCfg
	for i, u := range ccfg.Endpoints {
		ccfg.Endpoints[i] = strings.Replace(u, "http://", "https://", 1)
	}
	var cl *client.Client
	require.Eventually(t, func() bool {
		cl, err = client.New(ctx, ccfg)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	defer cl.Close()
	_, err = cl.Put(ctx, "app/from-client", []byte("v"))
	require.NoError(t, err)
	_, err = cl.Put(ctx, "other/from-client", []byte("v"))
	require.ErrorIs(t, err, kvd.ErrForbidden)
	ccfg.Token = ""
	_, err = client.New(ctx, ccfg)
	require.ErrorIs(t, err, kvd.ErrUnauthenticated)

	r = do(0, "PUT", "/v1/kv/app/x", appAuth, []byte("1"))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.Equal(t, 403, do(0, "PUT", "/v1/kv/other/x", appAuth, []byte("1")).Status)
	require.Equal(t, 403, do(0, "DELETE", "/v1/kv/other/x", appAuth, nil).Status)
	require.Equal(t, 200, do(2, "GET", "/v1/kv/app/x", rdAuth, nil).Status)
	require.Equal(t, 403, do(2, "PUT", "/v1/kv/app/y", rdAuth, []byte("1")).Status, "a read grant does not write")
	require.Equal(t, 200, do(1, "GET", "/v1/kv?prefix=app/", appAuth, nil).Status)
	require.Equal(t, 200, do(1, "GET", "/v1/kv?start=app/&end=app0", appAuth, nil).Status)
	require.Equal(t, 403, do(1, "GET", "/v1/kv?prefix=ap", appAuth, nil).Status, "a scan reaching outside app/")
	require.Equal(t, 403, do(1, "GET", "/v1/kv", appAuth, nil).Status, "a scan of everything")
	txn := func(ops string) int {
		return do(0, "POST", "/v1/txn", appAuth, []byte(`{"ops":[`+ops+`]}`)).Status
	}
	require.Equal(t, 200, txn(`{"op":"put","key":"app/a","value":"eA=="},{"op":"get","key":"app/x"}`))
	require.Equal(t, 403, txn(`{"op":"put","key":"app/b","value":"eA=="},{"op":"put","key":"other/b","value":"eA=="}`))
	require.Equal(t, 404, do(0, "GET", "/v1/kv/app/b", root, nil).Status, "the refused transaction wrote nothing")
	require.Equal(t, 403, do(0, "GET", "/v1/watch?prefix=other/", appAuth, nil).Status)
	require.Equal(t, 403, do(0, "GET", "/v1/admin/tokens", appAuth, nil).Status, "the operations API is an admin's")
	require.Equal(t, 403, do(0, "GET", "/v1/admin/backup", appAuth, nil).Status)

	r = do(2, "GET", "/v1/admin/tokens", root, nil)
	require.Equal(t, 200, r.Status)
	require.Contains(t, string(r.Body), `"name":"app"`)
	require.NotContains(t, string(r.Body), app.Token)
	require.NotContains(t, string(r.Body), "hash")

	// Revoked on one node, refused by all within a second.
	require.Equal(t, 200, do(1, "DELETE", "/v1/admin/tokens/app", root, nil).Status)
	revoked := time.Now()
	// (Polled every 100 ms: each refusal counts against this address.)
	require.Eventually(t, func() bool {
		for i := 0; i < 3; i++ {
			if do(i, "GET", "/v1/kv/app/x", appAuth, nil).Status != 401 {
				return false
			}
		}
		return true
	}, 5*time.Second, 100*time.Millisecond)
	require.Less(t, time.Since(revoked), time.Second+500*time.Millisecond)
	require.Equal(t, 404, do(1, "DELETE", "/v1/admin/tokens/app", root, nil).Status, "revoked already")

	// Malformed and huge tokens; then too many failures from one
	// address (another loopback address than the checks above used).
	hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	require.Equal(t, 401, do(0, "GET", "/v1/kv/app/x", "Basic Zm9vOmJhcg==", nil).Status)
	require.Equal(t, 401, do(0, "GET", "/v1/kv/app/x", "Bearer "+strings.Repeat("k", 4000), nil).Status)
	limited := false
	for i := 0; i < 60 && !limited; i++ {
		limited = do(0, "GET", "/v1/kv/app/x", "Bearer kvd_guess", nil).Status == 429
	}
	require.True(t, limited, "failed attempts are limited per address")
	require.Equal(t, 200, do(0, "GET", "/v1/kv/app/x", root, nil).Status, "a valid token still passes from that address")
	r = do(0, "GET", "/metrics", "", nil)
	require.Equal(t, 200, r.Status)
	require.True(t, metricAtLeast(string(r.Body), "kvd_auth_failures_total", 20) || strings.Contains(string(r.Body), "kvd_auth_failures_total{"))
}

// Idempotency keys belong to their token: another token's request with
// the same key is its own (applied, not answered with the first one's
// outcome, nor refused), a repeat through any node (forwarded or not)
// still gets the first outcome, and a client cannot name another's scope.
func TestAuth_IdempotencyKeysAreEachTokensOwn(t *testing.T) {
	rootFile := filepath.Join(t.TempDir(), "root.token")
	c, certs := tlsCluster(t, 3, 1, func(cfg *server.Config) {
		cfg.Auth, cfg.RootTokenFile = true, rootFile
	})
	cert, key := pki.CertFiles(certs, pki.Client, "client")
	tlsCfg, err := pki.ClientFiles(filepath.Join(certs, pki.CAFile), cert, key)
	require.NoError(t, err)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer hc.CloseIdleConnections()
	raw, err := os.ReadFile(rootFile)
	require.NoError(t, err)
	root := "Bearer " + strings.TrimSpace(string(raw))
	do := func(i int, method, path, auth string, body []byte, hdr ...string) testcluster.Response {
		t.Helper()
		req, _ := http.NewRequest(method, strings.Replace(c.URL(i), "http://", "https://", 1)+path, bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		for j := 0; j+1 < len(hdr); j += 2 {
			req.Header.Set(hdr[j], hdr[j+1])
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return testcluster.Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	}
	token := func(name string) string {
		body, _ := json.Marshal(api.TokenRequest{Name: name, Grants: []api.Grant{{Prefix: "shared/", Access: api.AccessWrite}}})
		r := do(0, "POST", "/v1/admin/tokens", root, body)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		var out api.TokenCreated
		require.NoError(t, json.Unmarshal(r.Body, &out))
		return "Bearer " + out.Token
	}
	a, b := token("a"), token("b")
	require.Eventually(t, func() bool {
		for i := range 3 {
			if do(i, "GET", "/v1/kv/shared/none", a, nil).Status != 404 || do(i, "GET", "/v1/kv/shared/none", b, nil).Status != 404 {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond)
	version := func(r testcluster.Response) uint64 {
		t.Helper()
		require.Equal(t, 200, r.Status, "%s", r.Body)
		var pr api.PutResponse
		require.NoError(t, json.Unmarshal(r.Body, &pr))
		return pr.Version
	}
	leader := c.Leader(1)
	follower := (leader + 1) % 3
	const idem = "Idempotency-Key"
	va := version(do(follower, "PUT", "/v1/kv/shared/x", a, []byte("from a"), idem, "k1"))
	vb := version(do(leader, "PUT", "/v1/kv/shared/x", b, []byte("from b"), idem, "k1"))
	require.Greater(t, vb, va, "b's request is applied, not answered with a's outcome")
	require.Equal(t, va, version(do(leader, "PUT", "/v1/kv/shared/x", a, []byte("from a"), idem, "k1")), "a's repeat gets its first outcome")
	require.Equal(t, vb, version(do((leader+2)%3, "PUT", "/v1/kv/shared/x", b, []byte("from b"), idem, "k1")), "b's repeat too, through a follower")
	// a cannot pass as b.
	r := do(follower, "PUT", "/v1/kv/shared/x", a, []byte("from b"), idem, "k1", "X-Kvd-Idempotency-Scope", "b")
	require.Equal(t, 422, r.Status, "a's own key k1, with another body: %s", r.Body)

	// A batch is checked op by op: what the token does not cover fails
	// alone, 403.
	r = do(follower, "POST", "/v1/batch", a, []byte(`{"ops":[{"op":"put","key":"shared/y","value":"eQ=="},{"op":"put","key":"other/z","value":"eg=="},{"op":"get","key":"other/z"}]}`))
	require.Equal(t, 200, r.Status, "%s", r.Body)
	var br api.BatchResponse
	require.NoError(t, json.Unmarshal(r.Body, &br))
	require.Equal(t, []int{200, 403, 403}, []int{br.Results[0].Status, br.Results[1].Status, br.Results[2].Status})
	require.Equal(t, api.CodeForbidden, br.Results[1].Error.Code)
	require.Equal(t, 401, do(follower, "POST", "/v1/batch", "", []byte(`{"ops":[{"op":"get","key":"shared/y"}]}`)).Status)
}
