package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/internal/wire"
	"github.com/kvd-project/kvd/replication"
)

// nodeTLS is what a node's TLS settings make of its files: how its HTTP
// port serves, and how it dials its peers.
type nodeTLS struct {
	// server serves the HTTP port (nil: plain HTTP).
	server *tls.Config
	// peer dials other nodes' HTTP ports (nil: plain HTTP).
	peer *tls.Config
	// peerCA, with peer TLS, is the CA whose node certificates the node
	// takes as its peers'; peerPair is the node's own certificate.
	peerCA   *pki.Pool
	peerPair *pki.KeyPair
	// reload reads every file again (ReloadTLS).
	reload []func() error
}

// scheme is the scheme of the node's (and so its peers') HTTP port.
func (t *nodeTLS) scheme() string {
	if t != nil && t.server != nil {
		return "https"
	}
	return "http"
}

// checkTLS checks the TLS flags of a Config.
func (c *Config) checkTLS() error {
	switch {
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return errors.New("client TLS needs both --tls-cert and --tls-key")
	case c.TLSClientCAFile != "" && c.TLSCertFile == "":
		return errors.New("--tls-client-ca needs --tls-cert and --tls-key")
	}
	peer := []string{c.PeerTLSCertFile, c.PeerTLSKeyFile, c.PeerTLSCAFile}
	if n := len(slices.DeleteFunc(slices.Clone(peer), func(s string) bool { return s == "" })); n != 0 && n != 3 {
		return errors.New("peer TLS needs --peer-tls-cert, --peer-tls-key and --peer-tls-ca")
	}
	if c.Auth && c.PeerTLSCAFile == "" && !c.Embedded {
		// A node's own calls pass with the cluster's credential instead
		// of a token: only peer TLS keeps it from being read or replayed.
		return errors.New("--auth needs peer TLS (--peer-tls-cert, --peer-tls-key, --peer-tls-ca): nodes call each other with the cluster's credential, which peer TLS alone keeps from being captured")
	}
	if c.TLSClientCAFile != "" && c.PeerTLSCAFile == "" && !c.Embedded {
		// Nodes call each other on the HTTP port: one that requires
		// client certificates must take its peers' too.
		return errors.New("--tls-client-ca needs peer TLS (--peer-tls-cert, --peer-tls-key, --peer-tls-ca): nodes call each other on the HTTP port")
	}
	return nil
}

// loadTLS reads the node's certificate files. Without peer TLS but with
// client TLS, a node dials its peers' HTTPS ports without checking their
// certificates (the peer secret still proves who calls); with peer TLS it
// checks them against the peer CA, naming the peer's id as the server
// name, and presents its own node certificate.
func loadTLS(c Config) (*nodeTLS, error) {
	if c.TLSCertFile == "" && c.PeerTLSCertFile == "" {
		return nil, nil
	}
	t := &nodeTLS{}
	var clientPair, peerPair *pki.KeyPair
	var err error
	if c.TLSCertFile != "" {
		if clientPair, err = pki.LoadKeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
	}
	var clientCA *pki.Pool
	if c.TLSClientCAFile != "" {
		if clientCA, err = pki.LoadPool(c.TLSClientCAFile); err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
	}
	if c.PeerTLSCertFile != "" {
		if peerPair, err = pki.LoadKeyPair(c.PeerTLSCertFile, c.PeerTLSKeyFile); err != nil {
			return nil, fmt.Errorf("peer TLS: %w", err)
		}
		t.peerPair = peerPair
		if t.peerCA, err = pki.LoadPool(c.PeerTLSCAFile); err != nil {
			return nil, fmt.Errorf("peer TLS: %w", err)
		}
	}
	serving := clientPair
	if serving == nil {
		serving = peerPair // peer TLS alone: the port serves the node certificate
	}
	srv := pki.ServerConfig(serving, nil)
	self := c.NodeID
	srv.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if peerPair != nil && hello.ServerName == self {
			return peerPair.Certificate(), nil // a peer names the node by its id
		}
		return serving.Certificate(), nil
	}
	if clientCA != nil || t.peerCA != nil {
		srv.ClientAuth = tls.VerifyClientCertIfGiven
		if clientCA != nil {
			srv.ClientAuth = tls.RequireAndVerifyClientCert
		}
		pools := func() *x509.CertPool {
			p := x509.NewCertPool()
			for _, src := range []*pki.Pool{clientCA, t.peerCA} {
				if src != nil {
					for _, c := range src.Certs() {
						p.AddCert(c)
					}
				}
			}
			return p
		}
		srv.ClientCAs = pools()
		srv.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cc := srv.Clone()
			cc.GetConfigForClient = nil
			cc.ClientCAs = pools()
			return cc, nil
		}
	}
	t.server = srv
	for _, kp := range []*pki.KeyPair{clientPair, peerPair} {
		if kp != nil {
			t.reload = append(t.reload, kp.Reload)
		}
	}
	for _, p := range []*pki.Pool{clientCA, t.peerCA} {
		if p != nil {
			t.reload = append(t.reload, p.Reload)
		}
	}
	if peerPair != nil {
		t.peer = pki.ClientConfig(t.peerCA, peerPair)
	} else {
		t.peer = pki.ClientConfig(nil, nil)
		t.peer.InsecureSkipVerify = true
	}
	return t, nil
}

// peerChain returns, with peer TLS, the test of a verified chain being a
// peer's: signed by the peer CA, for a node certificate (one that may
// serve, as kvd certs makes node certificates and not client ones).
func (t *nodeTLS) peerChain() func([][]*x509.Certificate) bool {
	if t == nil || t.peerCA == nil {
		return nil
	}
	return func(chains [][]*x509.Certificate) bool {
		for _, chain := range chains {
			if len(chain) < 2 || !slices.Contains(chain[0].ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
				continue
			}
			root := chain[len(chain)-1]
			for _, ca := range t.peerCA.Certs() {
				if root.Equal(ca) {
					return true
				}
			}
		}
		return false
	}
}

// peerName returns the id of the node whose HTTP address is addr ("" if
// none): the name its certificate must carry for its peers.
func (s *Server) peerName(addr string) string {
	for _, n := range s.Map().Nodes {
		if a, ok := s.PeerHTTP(n.ID); ok && a == addr {
			return n.ID
		}
	}
	return ""
}

// serverConfig returns the settings the HTTP port serves TLS with (nil:
// plain HTTP).
func (t *nodeTLS) serverConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return t.server
}

// raftTLS returns, with peer TLS, the option that puts the node's Raft
// connections on mutual TLS: both ends present their node certificates
// and verify the other's against the peer CA, the dialer naming the
// peer's id.
func (s *Server) raftTLS() []replication.MuxOption {
	t := s.tls
	if t == nil || t.peerCA == nil {
		return nil
	}
	client := func(address string) *tls.Config {
		c := pki.ClientConfig(t.peerCA, t.peerPair)
		c.ServerName = s.raftPeerName(address)
		if c.ServerName == "" {
			// An address the map does not name (yet): the peer's
			// certificate must still be a node certificate of the CA.
			c.InsecureSkipVerify = true
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				return verifyChain(t.peerCA, cs.PeerCertificates)
			}
		}
		return c
	}
	server := pki.ServerConfig(t.peerPair, t.peerCA)
	server.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyChain(t.peerCA, cs.PeerCertificates) // a node's, not a client's
	}
	return []replication.MuxOption{replication.WithTLS(server, client)}
}

// raftPeerName returns the id of the node whose Raft address is address.
func (s *Server) raftPeerName(address string) string {
	for _, n := range s.Map().Nodes {
		if a, err := s.ServerAddr(raft.ServerID(n.ID)); err == nil && string(a) == address {
			return n.ID // the address dialed, --peer-addrs overrides included
		}
	}
	return ""
}

// verifyChain verifies a peer's certificates against the CA, for a node
// certificate (one that may serve).
func verifyChain(ca *pki.Pool, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: ca.CertPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// ReloadTLS reads the node's certificate, key and CA files again now (kvd
// does on SIGHUP; they are also read again when they change). A file that
// does not read leaves the one read before in use, and is reported.
func (s *Server) ReloadTLS() error {
	if s.tls == nil {
		return nil
	}
	var errs []error
	for _, r := range s.tls.reload {
		errs = append(errs, r())
	}
	err := errors.Join(errs...)
	if err != nil {
		s.log.Warn("TLS files reloaded with errors; the ones read before stay in use", "err", err)
	} else {
		s.log.Info("TLS files reloaded")
	}
	return err
}

// newPeerClient returns an HTTP client for calls to other nodes, on TLS
// when the node is. The frontend forwards requests on a client of its
// own: the node's calls keep connections to every peer open (status
// probes), and a request forwarded on one that a dead peer left would
// fail once sent, its outcome unknown, where a new connection fails to
// dial, promising nothing was sent.
func (s *Server) newPeerClient() *http.Client {
	if s.tls != nil {
		return wire.NewPeerClientTLS(s.tls.peer, s.peerName)
	}
	return wire.NewPeerClient()
}
