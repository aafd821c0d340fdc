package main

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
	"github.com/kvd-project/kvd/server"
)

// tlsGet gets url (https) with cfg; hdr are header pairs.
func tlsGet(url string, cfg *tls.Config, hdr ...string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// servedSerial dials addr with cfg and returns the serial of the
// certificate the server presents.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// A 3-node cluster of processes with client TLS (certificates required),
// peer mutual TLS and auth: plain HTTP, a wrong CA, an expired
// certificate and a node certificate of another CA are refused on the
// client port and the Raft port; a client certificate with the cluster's
// secret is refused on node-to-node endpoints; no token is 401, a token
// for app/ is 403 outside it (a key, a scan, a transaction) and 200
// inside; a revoked token is refused by every node within a second; a
// certificate replaced on disk is served after SIGHUP without a restart.
func TestKvd_TLSClusterRefusesStrangers(t *testing.T) {
	certs, other := t.TempDir(), t.TempDir()
	_, err := pki.CreateCA(certs, pki.CALifetime, false)
	require.NoError(t, err)
	_, err = pki.CreateCA(other, pki.CALifetime, false)
	require.NoError(t, err)
	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 3, 2, 3)
	require.NoError(t, err)
	ca := filepath.Join(certs, pki.CAFile)
	c.Args = []string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms", "--log-level", "debug"}
	for _, n := range c.Nodes {
		cert, key, err := pki.CreateCert(certs, pki.Node, n.ID, []string{"127.0.0.1"}, pki.CertLifetime, false)
		require.NoError(t, err)
		c.NodeArgs[n.ID] = []string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca,
			"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca,
			"--auth", "--root-token-file", filepath.Join(certs, "root.token")}
	}
	aliceCert, aliceKey, err := pki.CreateCert(certs, pki.Client, "alice", nil, pki.CertLifetime, false)
	require.NoError(t, err)
	alice, err := pki.ClientFiles(ca, aliceCert, aliceKey)
	require.NoError(t, err)
	c.UseTLS(alice)
	launch(t, c)
	raw, err := os.ReadFile(filepath.Join(certs, "root.token"))
	require.NoError(t, err)
	root := "Bearer " + strings.TrimSpace(string(raw))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: alice}}
	send := func(method, url, auth, body string) int {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	for i := range c.Nodes {
		require.Equal(t, 200, send("PUT", c.Nodes[i].URL()+"/v1/kv/k"+c.Nodes[i].ID, root, "v"))
		status, body, err := tlsGet(c.Nodes[(i+1)%3].URL()+"/v1/kv/k"+c.Nodes[i].ID, alice, "Authorization", root)
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.Equal(t, "v", body)
	}

	// Tokens: none is 401; app/ is 403 outside it and 200 inside.
	require.Equal(t, 401, send("GET", c.Nodes[0].URL()+"/v1/kv/kn1", "", ""))
	var created struct{ Token string }
	req, _ := http.NewRequest("POST", c.Nodes[1].URL()+"/v1/admin/tokens", strings.NewReader(`{"name":"app","grants":[{"prefix":"app/","access":"write"}]}`))
	req.Header.Set("Authorization", root)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&created))
	resp.Body.Close()
	app := "Bearer " + created.Token
	require.Eventually(t, func() bool {
		for i := range c.Nodes {
			if send("PUT", c.Nodes[i].URL()+"/v1/kv/app/"+c.Nodes[i].ID, app, "x") != 200 {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 403, send("PUT", c.Nodes[0].URL()+"/v1/kv/other/x", app, "x"))
	require.Equal(t, 403, send("GET", c.Nodes[0].URL()+"/v1/kv?prefix=a", app, ""), "a scan reaching outside app/")
	require.Equal(t, 200, send("GET", c.Nodes[0].URL()+"/v1/kv?prefix=app/", app, ""))
	require.Equal(t, 403, send("POST", c.Nodes[0].URL()+"/v1/txn", app, `{"ops":[{"op":"put","key":"app/t","value":"eA=="},{"op":"get","key":"other/x"}]}`))
	require.Equal(t, 200, send("POST", c.Nodes[0].URL()+"/v1/txn", app, `{"ops":[{"op":"put","key":"app/t","value":"eA=="}]}`))
	require.Equal(t, 403, send("GET", c.Nodes[2].URL()+"/v1/admin/tokens", app, ""))
	require.Equal(t, 200, send("DELETE", c.Nodes[2].URL()+"/v1/admin/tokens/app", root, ""))
	revoked := time.Now()
	// Polled every 50 ms: each refusal counts against this address.
	require.Eventually(t, func() bool {
		for i := range c.Nodes {
			if send("GET", c.Nodes[i].URL()+"/v1/kv/app/n1", app, "") != 401 {
				return false
			}
		}
		return true
	}, 5*time.Second, 50*time.Millisecond)
	t.Logf("a revoked token was refused by every node %v after the revocation was acknowledged", time.Since(revoked).Round(time.Millisecond))
	require.Less(t, time.Since(revoked), 1500*time.Millisecond)

	// Plain HTTP gets 400.
	resp, err = (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Nodes[0].HTTP + "/v1/kv/kn1")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 400, resp.StatusCode)
	require.Contains(t, string(b), `"code":"invalid_request"`, "a JSON error")
	require.Contains(t, string(b), "HTTPS")

	// Strangers on the client port and on the Raft port.
	expCert, expKey, err := pki.CreateCert(certs, pki.Client, "expired", nil, -time.Minute, false)
	require.NoError(t, err)
	malCert, malKey, err := pki.CreateCert(other, pki.Client, "mallory", nil, pki.CertLifetime, false)
	require.NoError(t, err)
	impCert, impKey, err := pki.CreateCert(other, pki.Node, "n1", []string{"127.0.0.1"}, pki.CertLifetime, false)
	require.NoError(t, err)
	for name, files := range map[string][3]string{
		"a client certificate of another CA": {ca, malCert, malKey},
		"an expired certificate":             {ca, expCert, expKey},
		"a node certificate of another CA":   {ca, impCert, impKey},
		"no certificate":                     {ca, "", ""},
		"a client trusting another CA":       {filepath.Join(other, pki.CAFile), aliceCert, aliceKey},
	} {
		cfg, err := pki.ClientFiles(files[0], files[1], files[2])
		require.NoError(t, err)
		_, _, err = tlsGet(c.Nodes[0].URL()+"/v1/kv/kn1", cfg)
		require.Error(t, err, "client port: %s", name)
		cfg.ServerName = "n1"
		raft, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", c.Nodes[0].Raft, cfg)
		if err == nil {
			raft.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err = raft.Write([]byte("KVDRAFT")); err == nil {
				_, err = raft.Read(make([]byte, 1))
			}
			raft.Close()
		}
		require.Error(t, err, "raft port: %s", name)
	}

	// A client's certificate with the cluster's secret is no peer.
	secret, err := os.ReadFile(c.PeerSecretPath())
	require.NoError(t, err)
	status, _, err := tlsGet(c.Nodes[0].URL()+"/v1/internal/readindex?group=1", alice, api.HeaderPeerAuth, server.PeerCredential(secret), "Authorization", root)
	require.NoError(t, err)
	require.Equal(t, 403, status)

	// A certificate replaced on disk, then SIGHUP: served at once.
	before := servedSerial(t, c.Nodes[0].HTTP, alice)
	_, _, err = pki.CreateCert(certs, pki.Node, "n1", []string{"127.0.0.1"}, pki.CertLifetime, true)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(c.Nodes[0].Pid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return servedSerial(t, c.Nodes[0].HTTP, alice) != before }, 10*time.Second, 100*time.Millisecond)
	status, body, err := tlsGet(c.Nodes[0].URL()+"/v1/kv/kn2", alice, "Authorization", root)
	require.NoError(t, err)
	require.Equal(t, 200, status, body)
}
