package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func certs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := runCerts(args, &out, &errb)
	return code, out.String(), errb.String()
}

// kvd certs makes a CA, node and client certificates in one command
// each, that verify against each other, and refuses what it cannot do
// with a message and a usage or failure code.
func TestKvdCerts_CreatesACAAndCertificates(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := certs("create-ca", "--certs-dir", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "ca.crt")
	code, _, errs = certs("create-node", "n1", "127.0.0.1", "node1.example", "--certs-dir", dir)
	require.Equal(t, 0, code, errs)
	code, _, errs = certs("create-client", "--certs-dir", dir, "alice")
	require.Equal(t, 0, code, errs)

	code, out, _ = certs("list", "--certs-dir", dir)
	require.Equal(t, 0, code)
	for _, want := range []string{"ca.crt", "node-n1.crt", "client-alice.crt", "127.0.0.1,node1.example,n1", "alice"} {
		require.Contains(t, out, want)
	}

	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(ca))
	for _, name := range []string{"node-n1", "client-alice"} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		require.NoError(t, err)
		_, err = pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		require.NoError(t, err, name)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "node-n1.crt"), filepath.Join(dir, "node-n1.key"))
	require.NoError(t, err)
	_, err = pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"})
	require.NoError(t, err, "the node's address is in its certificate")

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"create-ca", "--certs-dir", dir}, 1, "already exists"},
		{[]string{"create-node", "n2", "--certs-dir", dir}, 2, "wrong arguments"},
		{[]string{"create-client", "--certs-dir", dir, "a/b"}, 1, "letters, digits"},
		{[]string{"create-ca"}, 2, "--certs-dir is required"},
		{[]string{"create-ca", "--certs-dir", dir, "--lifetime", "-1h"}, 2, "positive"},
		{[]string{"frobnicate", "--certs-dir", dir}, 2, "unknown command"},
		{[]string{"create-node", "n3", "h", "--certs-dir", t.TempDir()}, 1, "create-ca"},
		{nil, 2, "usage"},
	} {
		code, _, errs := certs(tc.args...)
		require.Equal(t, tc.code, code, "%v: %s", tc.args, errs)
		require.Contains(t, errs, tc.msg, "%v", tc.args)
		require.False(t, strings.Contains(errs, "panic"))
	}
}
