// Package pki makes the certificates of a kvd cluster (a CA, a certificate
// per node with its addresses as names, client certificates) and the TLS
// configurations that nodes and clients use with them: TLS 1.2 at least,
// forward-secret AEAD suites only, and certificate files read again when
// they change, so that certificates are replaced without a restart.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kvd-project/kvd/internal/fsutil"
)

// File names in a certificates directory.
const (
	CAFile    = "ca.crt"
	CAKeyFile = "ca.key"
)

// Kinds of certificates.
const (
	// Node certificates serve and dial: a node is a server to clients and
	// peers, and a client of its peers.
	Node = "node"
	// Client certificates only dial.
	Client = "client"
)

// Default lifetimes.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	CertLifetime = 2 * 365 * 24 * time.Hour
)

// ErrExists means a file would be overwritten.
var ErrExists = errors.New("already exists")

// CertFiles returns the paths of the certificate and key of kind named
// name in dir: node-NAME.crt and node-NAME.key, or client-NAME.*.
func CertFiles(dir, kind, name string) (cert, key string) {
	base := filepath.Join(dir, kind+"-"+name)
	return base + ".crt", base + ".key"
}

// CreateCA creates a CA in dir (ca.crt, and ca.key readable by its owner
// only) valid for lifetime. It refuses to replace an existing CA unless
// overwrite: every certificate it signed would stop being trusted.
func CreateCA(dir string, lifetime time.Duration, overwrite bool) (string, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if err := checkAbsent(overwrite, certPath, keyPath); err != nil {
		return "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("create ca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"kvd"}, CommonName: "kvd CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", fmt.Errorf("create ca: %w", err)
	}
	if err := writePair(dir, certPath, keyPath, der, key); err != nil {
		return "", fmt.Errorf("create ca: %w", err)
	}
	return certPath, nil
}

// CreateCert creates a certificate of kind (Node or Client) named name,
// signed by the CA in dir, valid for lifetime. A node's certificate names
// hosts (IP addresses or DNS names, as clients and peers dial it; "host:port"
// is taken as host) and its id; a client's names its user in its common
// name. The key is readable by its owner only.
func CreateCert(dir, kind, name string, hosts []string, lifetime time.Duration, overwrite bool) (cert, key string, err error) {
	if err := checkName(name); err != nil {
		return "", "", err
	}
	if kind != Node && kind != Client {
		return "", "", fmt.Errorf("a certificate is of kind %s or %s, not %q", Node, Client, kind)
	}
	if kind == Node && len(hosts) == 0 {
		return "", "", fmt.Errorf("a node certificate names the addresses clients and peers dial it at: give at least one host")
	}
	ca, caKey, err := LoadCA(dir)
	if err != nil {
		return "", "", err
	}
	cert, key = CertFiles(dir, kind, name)
	if err := checkAbsent(overwrite, cert, key); err != nil {
		return "", "", err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter // a certificate outliving its CA would not verify anyway
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"kvd"}, OrganizationalUnit: []string{kind}, CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if kind == Node {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if host, _, err := net.SplitHostPort(h); err == nil {
				h = host
			}
			h = strings.Trim(h, "[]")
			switch ip := net.ParseIP(h); {
			case h == "":
				return "", "", fmt.Errorf("an empty host")
			case ip != nil:
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			default:
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		if !slices.Contains(tmpl.DNSNames, name) {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &priv.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("create %s certificate %s: %w", kind, name, err)
	}
	if err := writePair(dir, cert, key, der, priv); err != nil {
		return "", "", fmt.Errorf("create %s certificate %s: %w", kind, name, err)
	}
	return cert, key, nil
}

// LoadCA reads the CA of dir, with its key.
func LoadCA(dir string) (*x509.Certificate, any, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	ca, err := ReadCert(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CA (create it with \"kvd certs create-ca\"): %w", err)
	}
	raw, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CA's key: %w", err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", keyPath)
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	return ca, key, nil
}

// ReadCert reads the first certificate of a PEM file.
func ReadCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(raw)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Info describes a certificate file.
type Info struct {
	File     string
	Subject  string
	Kind     string
	Names    []string
	NotAfter time.Time
	IsCA     bool
}

// List describes the certificates of dir (every *.crt file).
func List(dir string) ([]Info, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, p := range paths {
		c, err := ReadCert(p)
		if err != nil {
			return nil, err
		}
		in := Info{File: filepath.Base(p), Subject: c.Subject.CommonName, NotAfter: c.NotAfter, IsCA: c.IsCA}
		if len(c.Subject.OrganizationalUnit) > 0 {
			in.Kind = c.Subject.OrganizationalUnit[0]
		}
		if c.IsCA {
			in.Kind = "ca"
		}
		for _, ip := range c.IPAddresses {
			in.Names = append(in.Names, ip.String())
		}
		in.Names = append(in.Names, c.DNSNames...)
		out = append(out, in)
	}
	return out, nil
}

func checkName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("a certificate's name is 1 to 63 characters, not %q", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("a certificate's name has letters, digits, '-', '_' and '.' only, not %q", name)
		}
	}
	return nil
}

func checkAbsent(overwrite bool, paths ...string) error {
	if overwrite {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s %w (give --overwrite to replace it)", p, ErrExists)
		}
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// writePair writes a certificate (mode 0644) and its key (mode 0600),
// each whole (fsutil.WriteFile), so that a reader never sees half a file.
func writePair(dir, certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), 0o600); err != nil {
		return err
	}
	return fsutil.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
