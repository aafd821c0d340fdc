package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// recheck is how often a file is looked at for a change, at most: on a
// handshake, not in the background.
const recheck = time.Second

// suites are the TLS 1.2 cipher suites allowed: forward secret, AEAD.
// (TLS 1.3's suites are not configurable, and all are.)
var suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// watched is a value read from files, read again when one of them
// changes (its size or modification time), at most once per recheck.
type watched[T any] struct {
	files []string
	parse func() (T, error)

	mu      sync.Mutex // protects the fields below
	cur     T
	stamp   string
	checked time.Time
	// err is the last failed reload's: the value read before stays in
	// use until the files read well again.
	err error
}

func newWatched[T any](parse func() (T, error), files ...string) (*watched[T], error) {
	w := &watched[T]{files: files, parse: parse}
	if err := w.reload(); err != nil {
		return nil, err
	}
	return w, nil
}

// stampOf sums up the files' sizes and modification times.
func (w *watched[T]) stampOf() string {
	s := ""
	for _, f := range w.files {
		st, err := os.Stat(f)
		if err != nil {
			s += f + ":missing;"
			continue
		}
		s += fmt.Sprintf("%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
	}
	return s
}

func (w *watched[T]) reload() error {
	stamp := w.stampOf()
	v, err := w.parse()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.checked = time.Now()
	if err != nil {
		w.err = err
		return err
	}
	w.cur, w.stamp, w.err = v, stamp, nil
	return nil
}

func (w *watched[T]) get() T {
	w.mu.Lock()
	due := time.Since(w.checked) >= recheck
	if due {
		w.checked = time.Now()
	}
	w.mu.Unlock()
	if due && w.stampOf() != w.stamp {
		_ = w.reload() // a bad new file leaves the old value in use
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

// KeyPair is a certificate and its key, read from files and read again
// when they change (or on Reload).
type KeyPair struct{ w *watched[*tls.Certificate] }

// LoadKeyPair reads a certificate (PEM, with its chain) and its key.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	w, err := newWatched(func() (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("read certificate %s and key %s: %w", certFile, keyFile, err)
		}
		return &c, nil
	}, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &KeyPair{w: w}, nil
}

// Certificate returns the pair as last read.
func (k *KeyPair) Certificate() *tls.Certificate { return k.w.get() }

// Reload reads the files again now. On an error the pair read before
// stays in use.
func (k *KeyPair) Reload() error { return k.w.reload() }

// Pool is a set of CA certificates read from a PEM file, read again when
// it changes (or on Reload).
type Pool struct{ w *watched[cas] }

// cas are the certificates of a CA file, and their pool.
type cas struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

// LoadPool reads the CA certificates of a PEM file.
func LoadPool(file string) (*Pool, error) {
	w, err := newWatched(func() (cas, error) {
		raw, err := os.ReadFile(file)
		if err != nil {
			return cas{}, fmt.Errorf("read CA file: %w", err)
		}
		c := cas{pool: x509.NewCertPool()}
		for {
			var blk *pem.Block
			if blk, raw = pem.Decode(raw); blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return cas{}, fmt.Errorf("CA file %s: %w", file, err)
			}
			c.pool.AddCert(cert)
			c.certs = append(c.certs, cert)
		}
		if len(c.certs) == 0 {
			return cas{}, fmt.Errorf("CA file %s holds no PEM certificate", file)
		}
		return c, nil
	}, file)
	if err != nil {
		return nil, err
	}
	return &Pool{w: w}, nil
}

// CertPool returns the pool as last read.
func (p *Pool) CertPool() *x509.CertPool { return p.w.get().pool }

// Certs returns the CA certificates as last read.
func (p *Pool) Certs() []*x509.Certificate { return p.w.get().certs }

// Reload reads the file again now.
func (p *Pool) Reload() error { return p.w.reload() }

// base returns the settings every configuration shares.
func base() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		CipherSuites:     suites,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
	}
}

// ServerConfig returns the configuration of a TLS server presenting kp's
// certificate. With clientCAs, it requires a client certificate signed by
// one of them.
func ServerConfig(kp *KeyPair, clientCAs *Pool) *tls.Config {
	c := base()
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.Certificate(), nil }
	if clientCAs != nil {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = clientCAs.CertPool()
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cc := c.Clone()
			cc.GetConfigForClient = nil
			cc.ClientCAs = clientCAs.CertPool()
			return cc, nil
		}
	}
	return c
}

// ClientConfig returns the configuration of a TLS client that trusts the
// servers whose certificates roots signs (the system's roots if nil) and,
// with kp, presents kp's certificate.
func ClientConfig(roots *Pool, kp *KeyPair) *tls.Config {
	c := base()
	if roots != nil {
		c.RootCAs = roots.CertPool()
	}
	if kp != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.Certificate(), nil }
	}
	return c
}

// ClientFiles builds a ClientConfig from file names: caFile ("" for the
// system's roots) and, both or neither, certFile and keyFile.
func ClientFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	var roots *Pool
	var kp *KeyPair
	var err error
	if caFile != "" {
		if roots, err = LoadPool(caFile); err != nil {
			return nil, err
		}
	}
	switch {
	case certFile != "" && keyFile != "":
		if kp, err = LoadKeyPair(certFile, keyFile); err != nil {
			return nil, err
		}
	case certFile != "" || keyFile != "":
		return nil, errors.New("a client certificate needs both --cert and --key")
	}
	return ClientConfig(roots, kp), nil
}
