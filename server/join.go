package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// joinFor bounds how long a joining node keeps trying its members.
const joinFor = 2 * time.Minute

// join registers this node, on its first start with Config.Join, with
// the first member that takes it: the request carries the credential
// derived from the peer secret the operator gave, which is the proof that
// this node belongs to the cluster. It writes node.json with the map it
// joined and returns it.
func (s *Server) join(httpAdv, raftAdv string) (*nodeFile, error) {
	secret := s.givenSecret()
	if secret == nil {
		return nil, fmt.Errorf("joining a cluster needs its peer secret: give --peer-secret-file FILE, a copy of a member's %s", peerSecretName)
	}
	req := api.NodeRequest{ID: s.id, HTTP: httpAdv, Raft: raftAdv}
	if err := checkNodeRequest(req); err != nil {
		return nil, fmt.Errorf("join: this node's own addresses: %w", err)
	}
	body, _ := json.Marshal(req)
	hc := wire.NewPeerClient()
	if s.tls != nil {
		hc = wire.NewPeerClientTLS(s.tls.peer, nil)
	}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), joinFor)
	defer cancel()
	var lastErr error
	for attempt := 0; ; attempt++ {
		for _, u := range s.cfg.Join {
			jr, err := joinAt(ctx, hc, s.tls.scheme(), u, keysOf(secret).http, s.id, body)
			if err == nil {
				return s.joined(jr, httpAdv, raftAdv)
			}
			if !retryJoin(err) {
				return nil, err
			}
			lastErr = err
			s.log.Info("join: member did not take this node yet; trying again", "member", u, "err", err)
		}
		if joinPace.Wait(ctx, attempt) != nil {
			return nil, fmt.Errorf("join: no member took this node within %s: %w", joinFor, lastErr)
		}
	}
}

// joinError is a join refused for good.
type joinError struct{ msg string }

func (e *joinError) Error() string { return e.msg }

func retryJoin(err error) bool { _, final := err.(*joinError); return !final }

// joinAt asks the member at url to register this node.
func joinAt(ctx context.Context, hc *http.Client, scheme, url, cred, self string, body []byte) (api.JoinResponse, error) {
	var jr api.JoinResponse
	if !strings.Contains(url, "://") {
		url = scheme + "://" + url
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, strings.TrimRight(url, "/")+"/v1/internal/join", bytes.NewReader(body))
	if err != nil {
		return jr, &joinError{fmt.Sprintf("join: member URL %q: %v", url, err)}
	}
	req.Header.Set(api.HeaderPeerAuth, cred)
	req.Header.Set(api.HeaderForwarded, self)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return jr, fmt.Errorf("join via %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	var e api.Error
	_ = json.Unmarshal(b, &e)
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := json.Unmarshal(b, &jr); err != nil {
			return jr, fmt.Errorf("join via %s: decode: %v", url, err)
		}
		return jr, nil
	case resp.StatusCode == http.StatusForbidden:
		return jr, &joinError{fmt.Sprintf("join via %s: the cluster refused this node's peer secret (give a copy of a member's %s with --peer-secret-file): %s", url, peerSecretName, e.Error.Message)}
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusMisdirectedRequest:
		return jr, &joinError{fmt.Sprintf("join via %s: refused: %s %s", url, resp.Status, e.Error.Message)}
	}
	return jr, fmt.Errorf("join via %s: %s %s", url, resp.Status, e.Error.Message)
}

// joined checks the cluster's answer and writes node.json.
func (s *Server) joined(jr api.JoinResponse, httpAdv, raftAdv string) (*nodeFile, error) {
	m := new(kvd.Map)
	if err := json.Unmarshal(jr.Map, m); err != nil {
		return nil, fmt.Errorf("join: the cluster's map: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("join: the cluster's map: %w", err)
	}
	self, ok := m.Node(s.id)
	if !ok || self.HTTP != httpAdv || self.Raft != raftAdv {
		return nil, fmt.Errorf("join: the cluster's map does not hold this node as registered (%+v)", self)
	}
	if jr.Cluster == "" {
		return nil, fmt.Errorf("join: the cluster did not name its id")
	}
	nf := &nodeFile{ID: s.id, Map: m, Cluster: jr.Cluster, Joined: true}
	if err := writeNodeFile(s.cfg.DataDir, nf); err != nil {
		return nil, err
	}
	s.log.Info("joined the cluster; waiting for replicas", "cluster", jr.Cluster, "epoch", m.Epoch)
	return nf, nil
}

// runMembership keeps this node's replicas in line with the map (see
// replicas.go), the map stored in every group it leads, and, on the
// system group's leader, the cluster's placement (see placement.go).
func (s *Server) runMembership(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lastCluster time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.membershipKick:
		}
		s.learnMap(s.Map()) // remembers a map first seen in a group's log
		s.openReplicas()
		s.propagateMap(ctx)
		s.reconcileGroups(ctx)
		if time.Since(lastCluster) < time.Second {
			continue
		}
		lastCluster = time.Now()
		s.retireReplicas(ctx)
		s.superviseMoves(ctx)
		s.superviseRestore(ctx)
		s.liftStaleFreezes(ctx)
		s.sweepStray(ctx)
		if s.systemLeader(ctx) == nil && !s.cfg.Embedded {
			s.reconcileCluster(ctx)
		}
	}
}
