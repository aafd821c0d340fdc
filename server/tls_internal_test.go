package server

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Settings that would let a node's credential travel where it can be
// captured are refused, except in an embedded store (no peers).
func TestCheckTLS_NeedsPeerTLSForClientCAsAndAuth(t *testing.T) {
	c := DefaultConfig()
	c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = "a", "b", "c"
	require.ErrorContains(t, c.checkTLS(), "peer TLS")
	c.Embedded = true
	require.NoError(t, c.checkTLS())

	c = DefaultConfig()
	c.Auth = true
	require.ErrorContains(t, c.checkTLS(), "--auth needs peer TLS")
	c.PeerTLSCertFile, c.PeerTLSKeyFile, c.PeerTLSCAFile = "a", "b", "c"
	require.NoError(t, c.checkTLS())
	c = DefaultConfig()
	c.Auth, c.Embedded = true, true
	require.NoError(t, c.checkTLS())
}
