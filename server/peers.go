package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// leaderTTL is how long a leader learned from a peer is trusted before it
// is asked again.
const leaderTTL = 2 * time.Second

// leaderCache remembers the leaders of groups this node does not host.
type leaderCache struct {
	mu sync.Mutex // protects m
	m  map[kvd.GroupID]leaderEntry
}

type leaderEntry struct {
	leader string
	term   uint64
	at     time.Time
}

// leaderOf returns the node id of group gid's leader as best this node
// knows: live from raft for a hosted group; otherwise from the group's
// members, asked at most every leaderTTL. It returns "" if no leader is
// known.
func (s *Server) leaderOf(ctx context.Context, gid kvd.GroupID) string {
	if g, ok := s.hosted()[gid]; ok {
		return g.LeaderID()
	}
	s.leaders.mu.Lock()
	e, ok := s.leaders.m[gid]
	s.leaders.mu.Unlock()
	if ok && time.Since(e.at) < leaderTTL {
		return e.leader
	}
	grp, ok := s.Map().Group(gid)
	if !ok {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	type answer struct {
		leader string
		term   uint64
	}
	answers := make(chan answer, len(grp.Members))
	for _, mem := range grp.Members {
		go func() {
			st, err := s.peerStatus(ctx, mem)
			a := answer{}
			if err == nil {
				for _, gs := range st.Groups {
					if gs.Group == uint64(gid) {
						a = answer{gs.Leader, gs.Term}
					}
				}
			}
			answers <- a
		}()
	}
	best := answer{}
	for range grp.Members {
		a := <-answers
		if a.leader != "" && a.term >= best.term {
			best = a
		}
	}
	s.leaders.mu.Lock()
	s.leaders.m[gid] = leaderEntry{leader: best.leader, term: best.term, at: time.Now()}
	s.leaders.mu.Unlock()
	return best.leader
}

// peerRequest builds a node-to-node request to node: it names this node
// as the sender and carries the cluster's credential.
func (s *Server) peerRequest(ctx context.Context, method, node, pathAndQuery string, body io.Reader) (*http.Request, error) {
	addr, ok := s.PeerHTTP(node)
	if !ok {
		return nil, fmt.Errorf("no address for node %q: %w", node, kvd.ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+pathAndQuery, body)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, kvd.ErrInvalid)
	}
	req.Header.Set(api.HeaderForwarded, s.id)
	req.Header.Set(api.HeaderPeerAuth, s.keys.http)
	return req, nil
}

// peerError turns a node-to-node answer other than 200 into an error
// carrying the matching sentinel.
func peerError(node string, resp *http.Response, body []byte) error {
	var e api.Error
	_ = json.Unmarshal(body, &e)
	switch resp.StatusCode {
	case http.StatusServiceUnavailable:
		return &kvd.NotLeaderError{Group: kvd.GroupID(e.Error.Group), Leader: e.Error.Leader}
	case http.StatusMisdirectedRequest:
		return fmt.Errorf("ask %s: %s: %w", node, e.Error.Message, kvd.ErrWrongGroup)
	case http.StatusBadRequest:
		return fmt.Errorf("ask %s: %s: %w", node, e.Error.Message, kvd.ErrInvalid)
	case http.StatusNotFound:
		return fmt.Errorf("ask %s: %s: %w", node, e.Error.Message, kvd.ErrNotFound)
	case http.StatusForbidden:
		return fmt.Errorf("ask %s: %s (does it hold this cluster's peer secret?): %w", node, e.Error.Message, kvd.ErrUnavailable)
	case http.StatusTooManyRequests:
		return fmt.Errorf("ask %s: %s: %w", node, e.Error.Message, kvd.ErrOverloaded)
	case http.StatusInsufficientStorage:
		return fmt.Errorf("ask %s: %s: %w", node, e.Error.Message, kvd.ErrInsufficientStorage)
	}
	return fmt.Errorf("ask %s: %s %s: %w", node, resp.Status, e.Error.Message, kvd.ErrUnavailable)
}

// peerGet performs a node-to-node GET and decodes a 200 answer into out.
// Errors carry the kvd sentinel matching the answer.
func (s *Server) peerGet(ctx context.Context, node, pathAndQuery string, hdr http.Header, out any) error {
	req, err := s.peerRequest(ctx, http.MethodGet, node, pathAndQuery, nil)
	if err != nil {
		return err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("ask %s: %v: %w", node, err, kvd.ErrUnavailable)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("ask %s: %v: %w", node, err, kvd.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		return peerError(node, resp, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("ask %s: decode: %v: %w", node, err, kvd.ErrUnavailable)
	}
	return nil
}

// askMembers GETs pathAndQuery from group g's members other than this
// node, its leader first, and decodes the first 200 answer into out.
func (s *Server) askMembers(ctx context.Context, g kvd.GroupID, pathAndQuery string, out any) error {
	grp, ok := s.Map().Group(g)
	if !ok {
		return fmt.Errorf("group %d is not in the map: %w", g, kvd.ErrUnavailable)
	}
	asked := map[string]bool{s.id: true, "": true}
	var errs []error
	for _, m := range append([]string{s.leaderOrPreferred(ctx, g)}, grp.Members...) {
		if asked[m] {
			continue
		}
		asked[m] = true
		err := s.peerGet(ctx, m, pathAndQuery, nil, out)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("no other member of group %d to ask: %w", g, kvd.ErrUnavailable)
	}
	return errors.Join(errs...)
}

func (s *Server) peerStatus(ctx context.Context, node string) (api.Status, error) {
	var st api.Status
	err := s.peerGet(ctx, node, "/v1/status", nil, &st)
	return st, err
}

// remoteScan reads one group's page from node, as a routed request.
func (s *Server) remoteScan(ctx context.Context, node string, gid kvd.GroupID, epoch uint64, o kvd.ScanOptions, c kvd.Consistency) ([]kvd.Item, string, error) {
	q := url.Values{}
	if o.Prefix != "" {
		q.Set("prefix", o.Prefix)
	}
	if o.Start != "" {
		q.Set("start", o.Start)
	}
	if o.End != "" {
		q.Set("end", o.End)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.MaxBytes > 0 {
		q.Set("bytes", strconv.Itoa(o.MaxBytes))
	}
	q.Set("consistency", string(c))
	hdr := http.Header{}
	hdr.Set(api.HeaderGroup, strconv.FormatUint(uint64(gid), 10))
	hdr.Set(api.HeaderEpoch, strconv.FormatUint(epoch, 10))
	var sr api.ScanResponse
	if err := s.peerGet(ctx, node, "/v1/kv?"+q.Encode(), hdr, &sr); err != nil {
		return nil, "", fmt.Errorf("scan group %d: %w", gid, err)
	}
	items := make([]kvd.Item, len(sr.Items))
	for i, it := range sr.Items {
		items[i] = kvd.Item{Key: it.Key, Value: it.Value, Version: it.Version}
	}
	return items, sr.Next, nil
}

// balanceLeaders moves leadership of each group this node leads to the
// group's preferred leader (its first member) when that node is up and
// following, so that leadership spreads over the nodes as placement
// intends, also after failovers. It runs until ctx ends.
func (s *Server) balanceLeaders(ctx context.Context, every time.Duration) {
	lastTry := map[kvd.GroupID]time.Time{}
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := s.Map()
		for gid, g := range s.hosted() {
			grp, ok := m.Group(gid)
			if !ok || len(grp.Members) == 0 || grp.Members[0] == s.id || !g.IsLeader() {
				continue
			}
			if time.Since(lastTry[gid]) < 10*every {
				continue
			}
			preferred := grp.Members[0]
			if s.peerDisks.isLow(preferred) {
				continue // it would refuse the group's writes
			}
			sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := s.peerStatus(sctx, preferred)
			cancel()
			if err != nil || !followsMe(st, gid, s.id) {
				continue
			}
			lastTry[gid] = time.Now()
			if err := g.TransferLeadershipTo(preferred); err != nil {
				s.log.Debug("leadership hand-back to the preferred leader failed", "group", gid, "to", preferred, "err", err)
			} else {
				s.log.Info("leadership handed to the preferred leader", "group", gid, "to", preferred)
			}
		}
		t.Reset(every)
	}
}

// followsMe reports whether st shows group gid's replica following leader.
func followsMe(st api.Status, gid kvd.GroupID, leader string) bool {
	for _, gs := range st.Groups {
		if gs.Group == uint64(gid) {
			return gs.Role == "follower" && gs.Leader == leader
		}
	}
	return false
}
