package testcluster

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/server"
)

// Secure is a cluster's security settings for tests: client TLS with
// client certificates required, peer mutual TLS and auth, all from one
// CA made in Dir.
type Secure struct {
	// Dir holds the CA (pki.CAFile), node-N certificates, the client
	// certificate "client" and the root token file.
	Dir string
	// TLS is a client's settings: the CA, and the client certificate.
	TLS *tls.Config
	// CAFile, CertFile and KeyFile are the client's files (kvcli's
	// --cacert, --cert, --key).
	CAFile, CertFile, KeyFile string
	// RootTokenFile is the nodes' root token file.
	RootTokenFile string
}

// NewSecure makes the certificates of a cluster of up to 9 nodes.
func NewSecure(t testing.TB) *Secure {
	t.Helper()
	dir := t.TempDir()
	_, err := pki.CreateCA(dir, pki.CALifetime, false)
	require.NoError(t, err)
	for i := 0; i < 9; i++ {
		_, _, err := pki.CreateCert(dir, pki.Node, NodeID(i), []string{"127.0.0.1", "localhost"}, pki.CertLifetime, false)
		require.NoError(t, err)
	}
	s := &Secure{Dir: dir, CAFile: filepath.Join(dir, pki.CAFile), RootTokenFile: filepath.Join(dir, "root.token")}
	s.CertFile, s.KeyFile, err = pki.CreateCert(dir, pki.Client, "client", nil, pki.CertLifetime, false)
	require.NoError(t, err)
	s.TLS, err = pki.ClientFiles(s.CAFile, s.CertFile, s.KeyFile)
	require.NoError(t, err)
	return s
}

// Option returns the cluster Option that puts every node on these
// settings.
func (s *Secure) Option() Option {
	tlsOnly := s.TLSOption()
	return func(cfg *server.Config) {
		tlsOnly(cfg)
		cfg.Auth, cfg.RootTokenFile = true, s.RootTokenFile
	}
}

// TLSOption is Option without auth: client and peer TLS only.
func (s *Secure) TLSOption() Option {
	return func(cfg *server.Config) {
		cert, key := pki.CertFiles(s.Dir, pki.Node, cfg.NodeID)
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = cert, key, s.CAFile
		cfg.PeerTLSCertFile, cfg.PeerTLSKeyFile, cfg.PeerTLSCAFile = cert, key, s.CAFile
	}
}

// RootToken returns the cluster's root token (once a node made it).
func (s *Secure) RootToken(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile(s.RootTokenFile)
	require.NoError(t, err)
	return strings.TrimSpace(string(raw))
}

// SecureURL returns node i's HTTPS base URL.
func (c *Cluster) SecureURL(i int) string { return "https://" + c.ic.Nodes[i].HTTP }

// SecureURLs returns every node's HTTPS base URL.
func (c *Cluster) SecureURLs() []string {
	var us []string
	for i := range c.nodes {
		us = append(us, c.SecureURL(i))
	}
	return us
}

// Do is the package's Do over HTTPS with these settings.
func (s *Secure) Do(t testing.TB, method, url string, body []byte, header ...string) Response {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: s.TLS}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return Response{resp.StatusCode, resp.Header, b}
}
