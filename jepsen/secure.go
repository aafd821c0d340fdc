package jepsen

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// A secure run (Options.Secure) runs its cluster as a production one
// should run: every node serves HTTPS only and requires a client
// certificate of the run's CA, calls its peers (HTTP and Raft) on mutual
// TLS, requires a bearer token on every client request, and encrypts
// what it writes to disk (--encryption-key-file, one key file made with
// "kvd rotate-key" and given to every node). The harness
// holds a client certificate of that CA and the root token. Its workload
// clients call with a token whose grants cover the workload's keys only
// (made with the root token before the clients start); everything else
// (nemeses and their probes, status and readiness probes, backups and
// restores, the checks' reads) calls with the root token. Every answer
// 401 or 403 to the harness is counted: one means the harness's
// credentials were wrong or a node refused a token it had accepted
// before, and fails the run (the "auth" check).
//
// The per-link proxies carry TCP and need no change: a node dials a peer
// through its proxy and names the peer's id as the TLS server name, which
// the peer's node certificate holds whatever address it was dialed at.

// Security is a secure cluster's credentials, all in one folder: a CA,
// a node certificate per node id (made when a node is first started), the
// harness's client certificate and the root token file every node is
// given. The certificates are made with the kvd binary's own "kvd certs",
// as an operator would make them. A cluster started with it and the
// clusters its backups are restored into share it.
type Security struct {
	bin       string
	dir       string
	ca        string
	rootFile  string
	rootToken string
	keyFile   string
	tls       *tls.Config

	// sent counts the harness's requests; refused those answered 401
	// or 403.
	sent, refused atomic.Int64
	// mu protects refusals.
	mu sync.Mutex
	// refusals describes the first refused requests.
	refusals []string
}

// NewSecurity creates, with the kvd binary bin, a CA and the harness's
// client certificate in dir, and a root token.
func NewSecurity(bin, dir string) (*Security, error) {
	s := &Security{bin: bin, dir: dir, ca: filepath.Join(dir, "ca.crt"), rootFile: filepath.Join(dir, "root.token"), keyFile: filepath.Join(dir, "kvd.key")}
	if err := s.certs("create-ca"); err != nil {
		return nil, err
	}
	if err := s.certs("create-client", "jepsen"); err != nil {
		return nil, err
	}
	cfg, err := clientTLS(s.ca, filepath.Join(dir, "client-jepsen.crt"), filepath.Join(dir, "client-jepsen.key"))
	if err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	s.tls = cfg
	if out, err := exec.Command(bin, "rotate-key", "--encryption-key-file", s.keyFile).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("security: kvd rotate-key: %v: %s", err, bytes.TrimSpace(out))
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	s.rootToken = "kvd_" + base64.RawURLEncoding.EncodeToString(b[:])
	if err := os.WriteFile(s.rootFile, []byte(s.rootToken+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("security: root token file: %w", err)
	}
	return s, nil
}

// certs runs "kvd certs" with args in s's folder.
func (s *Security) certs(args ...string) error {
	out, err := exec.Command(s.bin, append(append([]string{"certs"}, args...), "--certs-dir", s.dir)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kvd certs %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// clientTLS returns the settings of a client that trusts the CA in
// caFile only and presents the certificate in certFile.
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, Certificates: []tls.Certificate{pair}}, nil
}

// ClientTLS returns the TLS settings of the harness's client: its
// certificate, and the run's CA as the only root.
func (s *Security) ClientTLS() *tls.Config { return s.tls }

// RootToken returns the root token: an admin token every node accepts.
func (s *Security) RootToken() string { return s.rootToken }

// clusterArgs are the flags every node takes: auth, with the shared root
// token file, and encryption at rest, with the shared key file.
func (s *Security) clusterArgs() []string {
	return []string{"--auth", "--root-token-file", s.rootFile, "--encryption-key-file", s.keyFile}
}

// nodeArgs returns the TLS flags of node id, making its certificate
// (for 127.0.0.1, and its id) unless it exists: client TLS requiring
// certificates of the run's CA, and peer mutual TLS.
func (s *Security) nodeArgs(id string) ([]string, error) {
	cert, key := filepath.Join(s.dir, "node-"+id+".crt"), filepath.Join(s.dir, "node-"+id+".key")
	if _, err := os.Stat(cert); errors.Is(err, os.ErrNotExist) {
		if err := s.certs("create-node", id, "127.0.0.1"); err != nil {
			return nil, err
		}
	}
	return []string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", s.ca,
		"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", s.ca}, nil
}

// transport returns base, set to present the harness's certificate, in a
// transport that gives every request token (unless it has an
// Authorization header) and counts the answers 401 and 403.
func (s *Security) transport(base *http.Transport, token string) http.RoundTripper {
	base.TLSClientConfig = s.tls
	return &authorized{s: s, token: token, next: base}
}

// maxRefusals bounds the refused requests the auth check lists.
const maxRefusals = 10

// check is the auth check over the requests since the cluster started.
func (s *Security) check() CheckResult {
	res := CheckResult{Checker: "auth", Verdict: Valid}
	sent, refused := s.sent.Load(), s.refused.Load()
	res.Summary = fmt.Sprintf("%d requests over TLS with the harness's client certificate and a token; %d answered 401 or 403", sent, refused)
	if refused > 0 {
		res.Verdict = Invalid
		s.mu.Lock()
		res.Errors = append(res.Errors, s.refusals...)
		s.mu.Unlock()
	}
	return res
}

// authorized is a transport that sets a bearer token and counts the
// requests refused for their credentials.
type authorized struct {
	s     *Security
	token string
	next  http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (a *authorized) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+a.token)
	}
	a.s.sent.Add(1)
	resp, err := a.next.RoundTrip(r)
	if err == nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		if a.s.refused.Add(1) <= maxRefusals {
			a.s.mu.Lock()
			a.s.refusals = append(a.s.refusals, fmt.Sprintf("%s %s on %s: %s", r.Method, r.URL.Path, r.URL.Host, resp.Status))
			a.s.mu.Unlock()
		}
	}
	return resp, err
}

// secured returns hc set up to call c's nodes: on a secure cluster, its
// transport presents the harness's client certificate and gives every
// request token (the root token if ""); on a plain cluster, hc as it is.
// hc's transport must be an *http.Transport of its own.
func (c *Cluster) secured(hc *http.Client, token string) *http.Client {
	if c.sec == nil {
		return hc
	}
	if token == "" {
		token = c.sec.rootToken
	}
	tr, ok := hc.Transport.(*http.Transport)
	if !ok {
		panic(fmt.Sprintf("jepsen: secured wants an *http.Transport, not %T", hc.Transport))
	}
	hc.Transport = c.sec.transport(tr, token)
	return hc
}

// kvClient returns a client of the HTTP API that calls c's nodes with
// token (see secured).
func (c *Cluster) kvClient(timeout time.Duration, token string) *kvClient {
	k := newKVClient(timeout)
	c.secured(k.hc, token)
	return k
}

// KeySpace is a workload that names the keys it reads and writes: a
// secure run's clients call with a token whose grants cover only these.
type KeySpace interface {
	// KeyPrefixes returns the prefixes of every key the workload
	// touches, none within another.
	KeyPrefixes() []string
}

// workloadToken makes the token a secure run's clients call with: write
// grants on the prefixes of w's keys, nothing else. It waits until every
// node accepts it (each reads the token table again four times a second).
func (c *Cluster) workloadToken(ctx context.Context, w Workload) (string, error) {
	ks, ok := w.(KeySpace)
	if !ok || len(ks.KeyPrefixes()) == 0 {
		return "", fmt.Errorf("workload %s does not name its keys (KeySpace): a secure run cannot make its token", w.Name())
	}
	req := api.TokenRequest{Name: "jepsen-" + w.Name()}
	for _, p := range ks.KeyPrefixes() {
		req.Grants = append(req.Grants, api.Grant{Prefix: p, Access: api.AccessWrite})
	}
	var created api.TokenCreated
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		status, b, err := c.Call(cctx, attempt%c.Size(), http.MethodPost, "/v1/admin/tokens", req)
		cancel()
		if err == nil && status == http.StatusOK {
			if err := json.Unmarshal(b, &created); err != nil {
				return "", fmt.Errorf("create token %s: %w", req.Name, err)
			}
			break
		}
		if err == nil && status != http.StatusServiceUnavailable && status != http.StatusTooManyRequests {
			return "", fmt.Errorf("create token %s: %d %s", req.Name, status, b)
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("create token %s: %w (last: %d %s %v)", req.Name, ctx.Err(), status, b, err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	// Not through secured: the refusals of a token not known yet are
	// expected here, and not counted.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: c.sec.tls}}
	defer hc.CloseIdleConnections()
	probe := "/v1/kv/" + url.PathEscape(req.Grants[0].Prefix) + "?consistency=" + string(kvd.Stale)
	for i := range c.Size() {
		var last string
		for {
			status, body, err := getStatus(ctx, hc, c.URL(i)+probe, created.Token)
			if err == nil && (status == http.StatusOK || status == http.StatusNotFound) {
				break
			}
			if err == nil {
				last = fmt.Sprintf("%d %s", status, body)
			} else if last == "" || ctx.Err() == nil {
				last = err.Error()
			}
			if ctx.Err() != nil {
				return "", fmt.Errorf("token %s not accepted by %s: %w (last answer: %s)", req.Name, c.Nodes[i].ID, ctx.Err(), last)
			}
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	return created.Token, nil
}

// checkRefusals checks that node 0 refuses what a secure cluster must: a
// request without a token (401), and a connection without a client
// certificate or in plain HTTP. It proves the run is secure, not merely
// configured to be.
func (c *Cluster) checkRefusals(ctx context.Context) error {
	u := c.URL(0) + "/v1/status"
	noCert := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: c.sec.tls.RootCAs}}}
	defer noCert.CloseIdleConnections()
	if status, _, err := getStatus(ctx, noCert, u, c.sec.rootToken); err == nil {
		return fmt.Errorf("%s answered %d to a client without a certificate", c.Nodes[0].ID, status)
	}
	plain := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer plain.CloseIdleConnections()
	if status, _, err := getStatus(ctx, plain, "http://"+c.Nodes[0].HTTP+"/v1/status", c.sec.rootToken); err != nil || status != http.StatusBadRequest {
		return fmt.Errorf("%s answered plain HTTP with %d %v, want 400", c.Nodes[0].ID, status, err)
	}
	withCert := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: c.sec.tls}}
	defer withCert.CloseIdleConnections()
	if status, _, err := getStatus(ctx, withCert, u, ""); err != nil || status != http.StatusUnauthorized {
		return fmt.Errorf("%s answered a request without a token with %d %v, want 401", c.Nodes[0].ID, status, err)
	}
	return nil
}

// getStatus GETs u with token (none if "") and returns the answer's
// status and the start of its body.
func getStatus(ctx context.Context, hc *http.Client, u, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}
