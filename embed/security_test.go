package embed_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/embed"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/node"
)

// An embedded store serving HTTP can serve it over TLS with client
// certificates and require tokens; its in-process calls need neither.
func TestEmbedded_ServesHTTPSWithAuth(t *testing.T) {
	certs, dir := t.TempDir(), t.TempDir()
	_, err := pki.CreateCA(certs, pki.CALifetime, false)
	require.NoError(t, err)
	cert, key, err := pki.CreateCert(certs, pki.Node, "n1", []string{"127.0.0.1"}, pki.CertLifetime, false)
	require.NoError(t, err)
	ccert, ckey, err := pki.CreateCert(certs, pki.Client, "app", nil, pki.CertLifetime, false)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	st, err := embed.Open(dir, embed.Options{HTTPAddr: addr, Frontend: node.HTTP,
		TLSCertFile: cert, TLSKeyFile: key, TLSClientCAFile: filepath.Join(certs, pki.CAFile), Auth: true})
	require.NoError(t, err)
	defer st.Close()
	ctx := context.Background()
	_, err = st.Put(ctx, "k", []byte("v"))
	require.NoError(t, err, "in process: no token needed")

	root, err := os.ReadFile(filepath.Join(dir, "root.token"))
	require.NoError(t, err)
	cfg, err := pki.ClientFiles(filepath.Join(certs, pki.CAFile), ccert, ckey)
	require.NoError(t, err)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	get := func(tok string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+addr+"/v1/kv/k", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, _ := get("")
	require.Equal(t, 401, status)
	status, body := get(strings.TrimSpace(string(root)))
	require.Equal(t, 200, status)
	require.Equal(t, "v", body)
	_, err = (&http.Client{Timeout: 5 * time.Second}).Get("https://" + addr + "/v1/kv/k")
	require.Error(t, err, "no client certificate, no trust in the CA")
}
