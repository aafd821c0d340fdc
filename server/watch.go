package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
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

// historyPage is one group's history after a position.
type historyPage struct {
	events []store.Event
	upto   store.Pos
	floor  store.Pos
}

// fetchHistory reads group g's history after pos ("now" when head is
// set): from the local replica if this node hosts one (any replica holds
// the same committed history), else from a member. With wait it waits up
// to that long for something new.
func (s *Server) fetchHistory(ctx context.Context, g kvd.GroupID, pos store.Pos, head bool, prefix string, limit int, wait time.Duration) (historyPage, error) {
	if grp, ok := s.hosted()[g]; ok && grp.Serving() == nil {
		if head {
			pos = grp.Store().HistoryHead()
		}
		return localHistory(ctx, grp.Store(), pos, prefix, limit, wait)
	}
	grp, ok := s.Map().Group(g)
	if !ok {
		return historyPage{}, fmt.Errorf("group %d is not in the map: %w", g, kvd.ErrUnavailable)
	}
	after := pos.String()
	if head {
		after = "now"
	}
	q := url.Values{"group": {strconv.FormatUint(uint64(g), 10)}, "after": {after}, "prefix": {prefix},
		"limit": {strconv.Itoa(limit)}, "wait": {strconv.FormatInt(wait.Milliseconds(), 10)}}
	members := append([]string{s.leaderOrPreferred(ctx, g)}, grp.Members...)
	var lastErr error
	for _, m := range members {
		var hp api.HistoryPage
		err := s.peerGet(ctx, m, "/v1/internal/history?"+q.Encode(), nil, &hp)
		if err != nil {
			lastErr = err
			continue
		}
		return pageFromAPI(hp)
	}
	return historyPage{}, fmt.Errorf("history of group %d: %w", g, lastErr)
}

func localHistory(ctx context.Context, db *store.DB, pos store.Pos, prefix string, limit int, wait time.Duration) (historyPage, error) {
	deadline := time.Now().Add(wait)
	// The caller compares its position with the floor to tell whether
	// history it never saw was dropped. While waiting, this loop reads on
	// from where it got (skipping nothing), so the floor reported is the
	// one of the first read, unless a later read started below its own
	// floor (then history really was lost, and that floor says so).
	var seen *store.Pos
	for {
		ch := db.AppliedCh()
		evs, upto, floor, err := db.History(pos, prefix, limit)
		if err != nil {
			return historyPage{}, err
		}
		if seen == nil || pos.Less(floor) {
			seen = &floor
		}
		if len(evs) > 0 || wait <= 0 || time.Now().After(deadline) {
			return historyPage{events: evs, upto: upto, floor: *seen}, nil
		}
		pos = upto
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
		case <-ctx.Done():
			return historyPage{upto: pos, floor: *seen}, nil
		}
	}
}

func pageFromAPI(hp api.HistoryPage) (historyPage, error) {
	var p historyPage
	var err error
	if p.upto, err = parsePos(hp.Upto); err != nil {
		return p, err
	}
	if p.floor, err = parsePos(hp.Floor); err != nil {
		return p, err
	}
	for _, e := range hp.Events {
		pos, err := parsePos(e.Pos)
		if err != nil {
			return p, err
		}
		p.events = append(p.events, store.Event{Pos: pos, Delete: e.Delete, Key: e.Key, Value: e.Value})
	}
	return p, nil
}

// History serves the internal history endpoint from this node's replica.
func (b backend) History(ctx context.Context, g kvd.GroupID, after, prefix string, limit int, wait time.Duration) (api.HistoryPage, error) {
	grp, ok := b.s.hosted()[g]
	if !ok {
		return api.HistoryPage{}, fmt.Errorf("%w: node %s hosts no replica of group %d", kvd.ErrWrongGroup, b.s.id, g)
	}
	var pos store.Pos
	if after == "now" {
		pos = grp.Store().HistoryHead()
	} else {
		var err error
		if pos, err = parsePos(after); err != nil {
			return api.HistoryPage{}, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
		}
	}
	p, err := localHistory(ctx, grp.Store(), pos, prefix, min(max(limit, 1), 1000), min(wait, 10*time.Second))
	if err != nil {
		return api.HistoryPage{}, err
	}
	out := api.HistoryPage{Upto: p.upto.String(), Floor: p.floor.String(), Events: []api.HistoryEvent{}}
	for _, e := range p.events {
		out.Events = append(out.Events, api.HistoryEvent{Pos: e.Pos.String(), Delete: e.Delete, Key: e.Key, Value: e.Value})
	}
	return out, nil
}

// errCompacted explains a watch that cannot resume.
func errCompacted(g kvd.GroupID, pos, floor store.Pos) error {
	return fmt.Errorf("%w: group %d's history now starts after %s; the watch asked for %s: start a new watch from now and read the current state",
		kvd.ErrCompacted, g, floor, pos)
}

// watchProgressInterval is how often a watch sends a progress mark.
const watchProgressInterval = 5 * time.Second

// Watch streams the changes to keys with prefix, in every group, from the
// cursor since ("" means now). It calls start with the starting cursor
// once the watch is established (a watch too far behind fails with
// kvd.ErrCompacted first), then send for every event, with a cursor that
// resumes right after it, until ctx ends or send fails. Events of one
// group, and so of one key, come in log order. An event with an empty
// Type is a progress mark: only its Cursor counts (the watch read that far
// and found nothing to send).
func (s *Server) Watch(ctx context.Context, prefix, since string, start func(cursor string) error, send func(kvd.Event) error) error {
	s.metrics.watchesOpen.Add(1)
	defer s.metrics.watchesOpen.Add(-1)
	m := s.Map()
	cur := map[kvd.GroupID]store.Pos{}
	fromNow := map[kvd.GroupID]bool{}
	if since != "" {
		var err error
		if cur, err = decodeCursor(since); err != nil {
			return err
		}
	}
	for _, grp := range m.Groups {
		if _, ok := cur[grp.ID]; !ok {
			fromNow[grp.ID] = true
		}
	}
	// A group's reader sends its events in order, then a progress mark
	// (progress set, ev empty) with the position it has read up to: every
	// event of the group up to it has been sent before it.
	type groupEvent struct {
		g        kvd.GroupID
		ev       store.Event
		progress *store.Pos
	}
	// The first page of every group, before anything is sent: a watch
	// that cannot resume is refused outright.
	first := map[kvd.GroupID]historyPage{}
	for _, grp := range m.Groups {
		p, err := s.fetchHistory(ctx, grp.ID, cur[grp.ID], fromNow[grp.ID], prefix, 256, 0)
		if err != nil {
			return err
		}
		if !fromNow[grp.ID] && cur[grp.ID].Less(p.floor) {
			return errCompacted(grp.ID, cur[grp.ID], p.floor)
		}
		if fromNow[grp.ID] {
			// Start right before the first event the page holds (if any),
			// so resuming from the starting cursor skips none of them.
			cur[grp.ID] = p.upto
			if len(p.events) > 0 {
				cur[grp.ID] = p.events[0].Pos.Before()
			}
		}
		first[grp.ID] = p
	}
	if err := start(encodeCursor(cur)); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	events := make(chan groupEvent, 64)
	errs := make(chan error, len(m.Groups))
	for _, grp := range m.Groups {
		p := first[grp.ID]
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := grp.ID
			for {
				for _, ev := range p.events {
					select {
					case events <- groupEvent{g: g, ev: ev}:
					case <-ctx.Done():
						return
					}
				}
				pos := p.upto
				select {
				case events <- groupEvent{g: g, progress: &pos}:
				case <-ctx.Done():
					return
				}
				var err error
				for attempt := 0; ; attempt++ {
					p, err = s.fetchHistory(ctx, g, pos, false, prefix, 256, 2*time.Second)
					if err == nil || ctx.Err() != nil {
						break
					}
					select {
					case <-time.After(time.Duration(50<<min(attempt, 4)) * time.Millisecond):
					case <-ctx.Done():
						return
					}
				}
				if ctx.Err() != nil {
					return
				}
				if pos.Less(p.floor) {
					errs <- errCompacted(g, pos, p.floor)
					return
				}
			}
		}()
	}
	// Progress marks go out at most once per interval, and only when the
	// position moved without an event: a client watching a quiet prefix
	// then holds a cursor that stays inside the retained history.
	tick := time.NewTicker(watchProgressInterval)
	defer tick.Stop()
	moved := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case <-tick.C:
			if moved {
				moved = false
				if err := send(kvd.Event{Cursor: encodeCursor(cur)}); err != nil {
					return err
				}
			}
		case ge := <-events:
			if ge.progress != nil {
				if cur[ge.g].Less(*ge.progress) {
					cur[ge.g], moved = *ge.progress, true
				}
				continue
			}
			moved = false
			cur[ge.g] = ge.ev.Pos
			ev := kvd.Event{Type: "put", Key: ge.ev.Key, Value: ge.ev.Value, Version: ge.ev.Version(), Cursor: encodeCursor(cur)}
			if ge.ev.Delete {
				ev.Type, ev.Value = "delete", nil
			}
			if err := send(ev); err != nil {
				return err
			}
		}
	}
}

// Watch serves GET /v1/watch.
func (b backend) Watch(ctx context.Context, prefix, since string, start func(string) error, send func(kvd.Event) error) error {
	return b.s.Watch(ctx, prefix, since, start, send)
}
