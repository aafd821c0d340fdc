package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// A watch cursor holds a position in every group's history. It is opaque
// to clients: base64url of "group:index.seq,...".

func encodeCursor(c map[kvd.GroupID]store.Pos) string {
	var gs []kvd.GroupID
	for g := range c {
		gs = append(gs, g)
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i] < gs[j] })
	var b strings.Builder
	for i, g := range gs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%s", g, c[g])
	}
	return base64.RawURLEncoding.EncodeToString([]byte(b.String()))
}

func parsePos(s string) (store.Pos, error) {
	i, q, ok := strings.Cut(s, ".")
	idx, err1 := strconv.ParseUint(i, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return store.Pos{}, fmt.Errorf("bad position %q", s)
	}
	return store.Pos{Index: idx, Seq: uint32(seq)}, nil
}

func decodeCursor(s string) (map[kvd.GroupID]store.Pos, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not a watch cursor", kvd.ErrInvalid)
	}
	out := map[kvd.GroupID]store.Pos{}
	for _, part := range strings.Split(string(raw), ",") {
		gs, ps, ok := strings.Cut(part, ":")
		g, err := strconv.ParseUint(gs, 10, 64)
		if !ok || err != nil || g == 0 {
			return nil, fmt.Errorf("%w: not a watch cursor", kvd.ErrInvalid)
		}
		pos, err := parsePos(ps)
		if err != nil {
			return nil, fmt.Errorf("%w: not a watch cursor", kvd.ErrInvalid)
		}
		out[kvd.GroupID(g)] = pos
	}
	return out, nil
}

// checkCursor refuses a cursor position past everything group g has
// committed: reading on from it would skip, silently, every event up to
// it (a cursor from another cluster, or kept from before the cluster was
// rebuilt). The group's read index is what it has committed; a replica
// here that lags is given a moment to catch up first.
func (s *Server) checkCursor(ctx context.Context, g kvd.GroupID, pos store.Pos) error {
	grp, hosted := s.servingReplica(g)
	if hosted && grp.Serving() == nil && pos.Index <= grp.Store().AppliedIndex() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	end, err := atLeader(ctx, s, g, func(err error) bool { return kvd.LeaderHint(err) != "" || errors.Is(err, kvd.ErrUnavailable) },
		func(grp *replication.Group) (uint64, error) { return grp.ReadIndex(ctx) },
		func(target string) (uint64, error) { return remote{s}.ReadIndex(ctx, target, g) })
	if err != nil {
		return fmt.Errorf("watch: check the cursor against group %d's log: %w", g, err)
	}
	if pos.Index > end {
		return fmt.Errorf("%w: the watch cursor asks for group %d's changes after index %d, but its log ends at %d: the cursor comes from another cluster or from before this one was rebuilt; start a new watch from now and read the current state",
			kvd.ErrInvalid, g, pos.Index, end)
	}
	return nil
}

// resolveCursor returns where a watch from the cursor since starts in
// each group of m: at the cursor's position, checked against the group's
// log; in a group the cursor does not name (created since: a watch's
// cursors name every group it follows), at the start of its history; and
// now (fromNow) in every group when since is "".
func (s *Server) resolveCursor(ctx context.Context, m *kvd.Map, since string) (cur map[kvd.GroupID]store.Pos, fromNow map[kvd.GroupID]bool, err error) {
	cur = map[kvd.GroupID]store.Pos{}
	fromNow = map[kvd.GroupID]bool{}
	if since != "" {
		if cur, err = decodeCursor(since); err != nil {
			return nil, nil, err
		}
		for g, pos := range cur {
			if _, ok := m.Group(g); !ok && g <= m.LastGroup {
				return nil, nil, fmt.Errorf("%w: the watch cursor names group %d, which was removed since; start a new watch from now and read the current state", kvd.ErrCompacted, g)
			}
			if _, ok := m.Group(g); !ok {
				return nil, nil, fmt.Errorf("%w: the watch cursor names group %d, which the cluster does not have", kvd.ErrInvalid, g)
			}
			if err := s.checkCursor(ctx, g, pos); err != nil {
				return nil, nil, err
			}
		}
	}
	for _, grp := range m.Groups {
		if _, ok := cur[grp.ID]; !ok {
			cur[grp.ID] = store.Pos{}
			fromNow[grp.ID] = since == ""
		}
	}
	return cur, fromNow, nil
}
