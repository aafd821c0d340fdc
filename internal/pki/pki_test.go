package pki

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serve accepts TLS connections on 127.0.0.1 with cfg, answering "ok" to
// each, until the test ends; it returns the address.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc, ok := c.(*tls.Conn); ok && tc.Handshake() == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dial connects with cfg and reads the server's answer.
func dial(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestMutualTLSAcceptsTheCAsCertificatesOnly(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	_, err := CreateCA(dir, CALifetime, false)
	require.NoError(t, err)
	_, err = CreateCA(other, CALifetime, false)
	require.NoError(t, err)
	nodeCert, nodeKey, err := CreateCert(dir, Node, "n1", []string{"127.0.0.1", "localhost:7070"}, CertLifetime, false)
	require.NoError(t, err)
	cliCert, cliKey, err := CreateCert(dir, Client, "alice", nil, CertLifetime, false)
	require.NoError(t, err)
	strangerCert, strangerKey, err := CreateCert(other, Node, "n1", []string{"127.0.0.1"}, CertLifetime, false)
	require.NoError(t, err)
	expCert, expKey, err := CreateCert(dir, Client, "old", nil, -time.Minute, false)
	require.NoError(t, err)

	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the CA's key is its owner's")
	st, err = os.Stat(nodeKey)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	kp, err := LoadKeyPair(nodeCert, nodeKey)
	require.NoError(t, err)
	cas, err := LoadPool(filepath.Join(dir, CAFile))
	require.NoError(t, err)
	addr := serve(t, ServerConfig(kp, cas))

	client := func(ca, cert, key string) (string, error) {
		cfg, err := ClientFiles(ca, cert, key)
		require.NoError(t, err)
		cfg.ServerName = "127.0.0.1"
		return dial(addr, cfg)
	}
	got, err := client(filepath.Join(dir, CAFile), cliCert, cliKey)
	require.NoError(t, err)
	require.Equal(t, "ok", got)
	_, err = client(filepath.Join(dir, CAFile), "", "")
	require.Error(t, err, "no client certificate")
	_, err = client(filepath.Join(dir, CAFile), strangerCert, strangerKey)
	require.Error(t, err, "a certificate of another CA")
	_, err = client(filepath.Join(dir, CAFile), expCert, expKey)
	require.Error(t, err, "an expired certificate")
	_, err = client(filepath.Join(other, CAFile), cliCert, cliKey)
	require.Error(t, err, "the client does not trust a server of another CA")

	cfg, err := ClientFiles(filepath.Join(dir, CAFile), cliCert, cliKey)
	require.NoError(t, err)
	cfg.MaxVersion, cfg.MinVersion, cfg.ServerName = tls.VersionTLS11, tls.VersionTLS10, "127.0.0.1"
	_, err = dial(addr, cfg)
	require.Error(t, err, "TLS 1.1 is refused")
}

// A node's certificate files replaced while it serves are presented from
// the next handshake on, without a restart; a damaged replacement leaves
// the pair read before in use.
func TestKeyPairReloadsWhenTheFilesChange(t *testing.T) {
	dir := t.TempDir()
	_, err := CreateCA(dir, CALifetime, false)
	require.NoError(t, err)
	cert, key, err := CreateCert(dir, Node, "n1", []string{"127.0.0.1"}, CertLifetime, false)
	require.NoError(t, err)
	kp, err := LoadKeyPair(cert, key)
	require.NoError(t, err)
	first := kp.Certificate().Leaf.SerialNumber

	_, _, err = CreateCert(dir, Node, "n1", []string{"127.0.0.1"}, CertLifetime, false)
	require.ErrorIs(t, err, ErrExists, "no silent overwrite")
	_, _, err = CreateCert(dir, Node, "n1", []string{"127.0.0.1"}, CertLifetime, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return kp.Certificate().Leaf.SerialNumber.Cmp(first) != 0 },
		5*time.Second, 50*time.Millisecond, "the new certificate is read")
	second := kp.Certificate().Leaf.SerialNumber

	require.NoError(t, os.WriteFile(cert, []byte("garbage"), 0o644))
	require.Error(t, kp.Reload())
	require.Equal(t, second, kp.Certificate().Leaf.SerialNumber, "the good pair stays in use")
}

func TestCreateRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	_, _, err := CreateCert(dir, Node, "n1", []string{"127.0.0.1"}, CertLifetime, false)
	require.ErrorContains(t, err, "create-ca", "no CA yet")
	_, err = CreateCA(dir, CALifetime, false)
	require.NoError(t, err)
	_, err = CreateCA(dir, CALifetime, false)
	require.True(t, errors.Is(err, ErrExists), "a CA is not replaced by accident")
	for _, tc := range []struct{ kind, name string }{{Node, ""}, {Node, "a/b"}, {Node, "../x"}, {"admin", "x"}} {
		_, _, err := CreateCert(dir, tc.kind, tc.name, []string{"h"}, CertLifetime, false)
		require.Error(t, err, "%q %q", tc.kind, tc.name)
	}
	_, _, err = CreateCert(dir, Node, "n2", nil, CertLifetime, false)
	require.ErrorContains(t, err, "host")
	infos, err := List(dir)
	require.NoError(t, err)
	require.Len(t, infos, 1)
	require.True(t, infos[0].IsCA)
	_, err = ClientFiles("", "only-cert.crt", "")
	require.Error(t, err)
}
