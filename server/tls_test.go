package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
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

// tlsCluster starts nodes nodes with client TLS (client certificates
// required) and peer mutual TLS, all from one CA (testcluster.NewSecure,
// whose client certificate is "client"), and returns the cluster and the
// certificates directory.
func tlsCluster(t *testing.T, nodes, groups int, opts ...testcluster.Option) (*testcluster.Cluster, string) {
	t.Helper()
	sec := testcluster.NewSecure(t)
	c := testcluster.New(t, nodes, groups, append([]testcluster.Option{sec.TLSOption()}, opts...)...)
	c.WaitReady()
	return c, sec.Dir
}

// httpsGet gets path from the node at url (http://...) over TLS with
// cfg, the peer credential if cred is set.
func httpsGet(url, path string, cfg *tls.Config, cred string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest("GET", strings.Replace(url, "http://", "https://", 1)+path, nil)
	if cred != "" {
		req.Header.Set(api.HeaderPeerAuth, cred)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// A cluster on TLS: clients with a certificate of the CA read and write
// through any node (forwarded requests and transactions across groups
// travel between nodes on mutual TLS); plain HTTP, clients without a
// certificate or with another CA's are refused; node-to-node endpoints
// take a node's certificate only, even from a client holding the
// cluster's secret.
func TestTLS_ClusterServesClientsAndPeersOverMutualTLS(t *testing.T) {
	c, dir := tlsCluster(t, 3, 3)
	ca := filepath.Join(dir, pki.CAFile)
	aliceCert, aliceKey := pki.CertFiles(dir, pki.Client, "client")
	cfg, err := pki.ClientFiles(ca, aliceCert, aliceKey)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ccfg := client.DefaultConfig(strings.Replace(c.URL(0), "http://", "", 1))
	ccfg.TLS = cfg
	cl, err := client.New(ctx, ccfg)
	require.NoError(t, err)
	defer cl.Close()
	for i := 0; i < 30; i++ {
		_, err := cl.Put(ctx, fmt.Sprintf("k%02d", i), []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	resp, err := cl.Txn(ctx, kvd.Txn{Ops: []kvd.Op{kvd.OpPut("k00", []byte("a")), kvd.OpPut("k01", []byte("b")), kvd.OpPut("k02", []byte("c"))}})
	require.NoError(t, err)
	require.True(t, resp.Committed)
	it, err := cl.Get(ctx, "k01")
	require.NoError(t, err)
	require.Equal(t, "b", string(it.Value))

	// Through every node, forwarded to the leaders as needed.
	for i := 0; i < 3; i++ {
		status, body, err := httpsGet(c.URL(i), "/v1/kv/k02", cfg, "")
		require.NoError(t, err)
		require.Equal(t, 200, status, body)
		require.Equal(t, "c", body)
	}

	// Plain HTTP is refused.
	plain := &http.Client{Timeout: 5 * time.Second}
	if r, err := plain.Get(c.URL(0) + "/v1/kv/k01"); err == nil {
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		require.Equal(t, 400, r.StatusCode, "%s", b)
		require.NotContains(t, string(b), "b")
	}
	// No client certificate, or one of another CA: refused at the handshake.
	noCert, err := pki.ClientFiles(ca, "", "")
	require.NoError(t, err)
	_, _, err = httpsGet(c.URL(0), "/v1/kv/k01", noCert, "")
	require.Error(t, err)
	other := t.TempDir()
	_, err = pki.CreateCA(other, pki.CALifetime, false)
	require.NoError(t, err)
	oc, ok, err := pki.CreateCert(other, pki.Client, "mallory", nil, pki.CertLifetime, false)
	require.NoError(t, err)
	stranger, err := pki.ClientFiles(ca, oc, ok)
	require.NoError(t, err)
	_, _, err = httpsGet(c.URL(0), "/v1/kv/k01", stranger, "")
	require.Error(t, err)
	// The server must be the cluster's: a client trusting another CA
	// does not talk to it.
	wrongRoot, err := pki.ClientFiles(filepath.Join(other, pki.CAFile), aliceCert, aliceKey)
	require.NoError(t, err)
	_, _, err = httpsGet(c.URL(0), "/v1/kv/k01", wrongRoot, "")
	require.Error(t, err)

	// A node-to-node endpoint: a client's certificate with the right
	// secret is refused; a node's certificate with it is served.
	status, _, err := httpsGet(c.URL(0), "/v1/internal/readindex?group=1", cfg, c.PeerCredential())
	require.NoError(t, err)
	require.Equal(t, 403, status, "a client certificate does not make a peer")
	nodeCert, nodeKey := pki.CertFiles(dir, pki.Node, "n2")
	peer, err := pki.ClientFiles(ca, nodeCert, nodeKey)
	require.NoError(t, err)
	status, body, err := httpsGet(c.URL(0), "/v1/internal/readindex?group=1", peer, c.PeerCredential())
	require.NoError(t, err)
	require.NotEqual(t, 403, status, body)
	status, _, err = httpsGet(c.URL(0), "/v1/internal/readindex?group=1", peer, "")
	require.NoError(t, err)
	require.Equal(t, 403, status, "a node's certificate without the secret")

	// Raft is on mutual TLS too: a plain connection, and a TLS one
	// with a client certificate rather than a node's, are refused
	// before the handshake that proves the secret.
	raftAddr := c.Node(0).Map().Nodes[0].Raft
	conn, err := net.DialTimeout("tcp", raftAddr, 5*time.Second)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write([]byte("KVDRAFT1 plain text is not TLS"))
	_, err = io.ReadAll(conn)
	conn.Close()
	require.NoError(t, err, "the node closes the connection")
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", raftAddr, cfg.Clone())
	if err == nil {
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = tc.Write([]byte("x"))
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		tc.Close()
	}
	require.Error(t, err, "a client certificate does not make a Raft peer")
	require.Eventually(t, func() bool {
		_, body, err := httpsGet(c.URL(0), "/metrics", cfg, "")
		return err == nil && metricAtLeast(body, "kvd_raft_connections_refused_total", 2)
	}, 5*time.Second, 50*time.Millisecond)
}

// metricAtLeast tells whether the exposition body has metric name at v
// or more.
func metricAtLeast(body, name string, v float64) bool {
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			var got float64
			fmt.Sscan(f[1], &got)
			return got >= v
		}
	}
	return false
}

func TestTLS_ConfigRefusesHalfSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*server.Config)
		want string
	}{
		{"cert without key", func(c *server.Config) { c.TLSCertFile = "x.crt" }, "--tls-key"},
		{"peer cert alone", func(c *server.Config) { c.PeerTLSCertFile = "a" }, "--peer-tls-ca"},
		{"missing files", func(c *server.Config) { c.TLSCertFile, c.TLSKeyFile = "/nonexistent.crt", "/nonexistent.key" }, "nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := server.DefaultConfig()
			cfg.NodeID, cfg.DataDir, cfg.Embedded, cfg.HTTPAddr = "n1", t.TempDir(), true, ""
			tc.set(&cfg)
			_, err := server.New(cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
