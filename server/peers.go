package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
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

// remoteScan reads one group's page from node, as a routed request.
func (s *Server) remoteScan(ctx context.Context, node string, gid kvd.GroupID, epoch uint64, want *kvd.SlotSet, o kvd.ScanOptions, c kvd.Consistency) ([]kvd.Item, string, error) {
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
	hdr.Set(api.HeaderSlots, want.String())
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
	repeat(ctx, every, func() {
		m := s.Map()
		for gid, g := range s.hosted() {
			grp, ok := m.Group(gid)
			if !ok || len(grp.Members) == 0 || grp.Members[0] == s.id || !g.IsLeader() {
				continue
			}
			if time.Since(lastTry[gid]) < 10*every {
				continue
			}
			if s.handBack(ctx, g, gid, grp.Members[0]) {
				lastTry[gid] = time.Now()
			}
		}
	})
}

// handBack hands group gid's leadership to its preferred leader if that
// node has room on its disk and follows this one; it reports whether it
// tried.
func (s *Server) handBack(ctx context.Context, g *replication.Group, gid kvd.GroupID, preferred string) bool {
	if s.peerDisks.isLow(preferred) {
		return false // it would refuse the group's writes
	}
	st, err := s.peerStatus(ctx, preferred)
	if err != nil || !followsMe(st, gid, s.id) {
		return false
	}
	if err := g.TransferLeadershipTo(preferred); err != nil {
		s.log.Debug("leadership hand-back to the preferred leader failed", "group", gid, "to", preferred, "err", err)
	} else {
		s.log.Info("leadership handed to the preferred leader", "group", gid, "to", preferred)
	}
	return true
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
