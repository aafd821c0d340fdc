package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
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

// historyPage is one group's history after a position.
type historyPage struct {
	events []store.Event
	upto   store.Pos
	floor  store.Pos
}

// eventsBytes returns what the events' keys and values take.
func eventsBytes(evs []store.Event) int64 {
	var n int64
	for _, e := range evs {
		n += eventBytes(e)
	}
	return n
}

func eventBytes(e store.Event) int64 { return int64(len(e.Key) + len(e.Value)) }

// watchPageBytes is how many bytes of keys and values a watch reads from
// one group at a time (a page holds at least one event).
const watchPageBytes = 512 << 10

// fetchHistory reads up to limit events and maxBytes of group g's history
// after pos ("now" when head is set), without waiting: from the local
// replica if this node hosts one (any replica holds the same committed
// history), else from a member.
func (s *Server) fetchHistory(ctx context.Context, g kvd.GroupID, pos store.Pos, head bool, prefix string, limit, maxBytes int) (historyPage, error) {
	if grp, ok := s.hosted()[g]; ok && grp.Serving() == nil {
		db := grp.Store()
		if head {
			pos = db.HistoryHead()
		}
		evs, upto, floor, err := db.History(pos, prefix, limit, maxBytes)
		return historyPage{events: evs, upto: upto, floor: floor}, err
	}
	after := pos.String()
	if head {
		after = "now"
	}
	hp, err := s.remoteHistory(ctx, g, url.Values{"after": {after}, "prefix": {prefix},
		"limit": {strconv.Itoa(limit)}, "bytes": {strconv.Itoa(maxBytes)}})
	if err != nil {
		return historyPage{}, err
	}
	return pageFromAPI(hp)
}

// waitHistory waits up to wait for an event with prefix after pos in
// group g, reading none: it returns whether one is there, the position up
// to which none is (reading on from it skips nothing) and the history's
// floor. A watch waits this way holding no buffer, then reads.
func (s *Server) waitHistory(ctx context.Context, g kvd.GroupID, pos store.Pos, prefix string, wait time.Duration) (pending bool, upto, floor store.Pos, err error) {
	if grp, ok := s.hosted()[g]; ok && grp.Serving() == nil {
		return waitLocal(ctx, grp.Store(), pos, prefix, wait)
	}
	hp, err := s.remoteHistory(ctx, g, url.Values{"after": {pos.String()}, "prefix": {prefix},
		"limit": {"0"}, "wait": {strconv.FormatInt(wait.Milliseconds(), 10)}})
	if err != nil {
		return false, pos, floor, err
	}
	if floor, err = parsePos(hp.Floor); err != nil {
		return false, pos, floor, err
	}
	if upto, err = parsePos(hp.Upto); err != nil {
		return false, pos, floor, err
	}
	if upto.Less(pos) {
		upto = pos
	}
	return hp.Pending, upto, floor, nil
}

// remoteHistory asks the group's members for a page of its history.
func (s *Server) remoteHistory(ctx context.Context, g kvd.GroupID, q url.Values) (api.HistoryPage, error) {
	q.Set("group", strconv.FormatUint(uint64(g), 10))
	var hp api.HistoryPage
	if err := s.askMembers(ctx, g, "/v1/internal/history?"+q.Encode(), &hp); err != nil {
		return api.HistoryPage{}, fmt.Errorf("history of group %d: %w", g, err)
	}
	return hp, nil
}

// waitLocal waits up to wait for an event with prefix after pos in db's
// history (see waitHistory).
func waitLocal(ctx context.Context, db *store.DB, pos store.Pos, prefix string, wait time.Duration) (pending bool, upto, floor store.Pos, err error) {
	deadline := time.Now().Add(wait)
	// The caller compares its position with the floor to tell whether
	// history it never saw was dropped. While waiting, this loop reads on
	// from where it got (skipping nothing), so the floor reported is the
	// one of the first read, unless a later read started below its own
	// floor (then history really was lost, and that floor says so).
	var seen *store.Pos
	for {
		ch := db.AppliedCh()
		pending, upto, floor, err := db.HistoryPending(pos, prefix)
		if err != nil {
			return false, pos, floor, err
		}
		if seen == nil || pos.Less(floor) {
			seen = &floor
		}
		if pending || wait <= 0 || time.Now().After(deadline) {
			return pending, upto, *seen, nil
		}
		pos = upto
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
		case <-ctx.Done():
			return false, pos, *seen, nil
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

// History serves the internal history endpoint from this node's replica:
// up to limit events and maxBytes after a position; with limit 0 it only
// waits up to wait for one and says whether it is there (Pending),
// reading none.
func (s *Server) History(ctx context.Context, g kvd.GroupID, after, prefix string, limit, maxBytes int, wait time.Duration) (api.HistoryPage, error) {
	grp, err := s.replica(g)
	if err != nil {
		return api.HistoryPage{}, err
	}
	if err := grp.Serving(); err != nil {
		return api.HistoryPage{}, err
	}
	db := grp.Store()
	pos := db.HistoryHead()
	if after != "now" {
		if pos, err = parsePos(after); err != nil {
			return api.HistoryPage{}, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
		}
	}
	out := api.HistoryPage{Events: []api.HistoryEvent{}}
	if limit == 0 {
		pending, upto, floor, err := waitLocal(ctx, db, pos, prefix, min(wait, 10*time.Second))
		if err != nil {
			return api.HistoryPage{}, err
		}
		out.Upto, out.Floor, out.Pending = upto.String(), floor.String(), pending
		return out, nil
	}
	evs, upto, floor, err := db.History(pos, prefix, min(limit, 1000), min(max(maxBytes, 1), store.HistoryPageBytes))
	if err != nil {
		return api.HistoryPage{}, err
	}
	out.Upto, out.Floor = upto.String(), floor.String()
	for _, e := range evs {
		out.Events = append(out.Events, api.HistoryEvent{Pos: e.Pos.String(), Delete: e.Delete, Key: e.Key, Value: e.Value})
	}
	return out, nil
}

// checkCursor refuses a cursor position past everything group g has
// committed: reading on from it would skip, silently, every event up to
// it (a cursor from another cluster, or kept from before the cluster was
// rebuilt). The group's read index is what it has committed; a replica
// here that lags is given a moment to catch up first.
func (s *Server) checkCursor(ctx context.Context, g kvd.GroupID, pos store.Pos) error {
	grp, hosted := s.hosted()[g]
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
	n := s.metrics.watchesOpen.Add(1)
	defer s.metrics.watchesOpen.Add(-1)
	if max := s.cfg.MaxWatches; max > 0 && n > int64(max) {
		s.metrics.watchesShed.Add(1)
		return fmt.Errorf("the node serves %d watches, its limit; watch through another node or later: %w", max, kvd.ErrOverloaded)
	}
	m := s.Map()
	cur := map[kvd.GroupID]store.Pos{}
	fromNow := map[kvd.GroupID]bool{}
	if since != "" {
		var err error
		if cur, err = decodeCursor(since); err != nil {
			return err
		}
		for g, pos := range cur {
			if _, ok := m.Group(g); !ok {
				return fmt.Errorf("%w: the watch cursor names group %d, which the cluster does not have", kvd.ErrInvalid, g)
			}
			if err := s.checkCursor(ctx, g, pos); err != nil {
				return err
			}
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
	// Every event read counts against the node's watch buffer until it
	// is sent, and a reader takes room for a page before it reads one, so
	// slow watchers make the others wait instead of filling memory.
	// Waiting for news takes no room.
	reserve := func(n int64) (settle func(got int64), err error) {
		if err := s.watchMem.acquire(ctx, n); err != nil {
			return nil, err
		}
		return func(got int64) {
			if got > n {
				s.watchMem.charge(got - n)
			} else {
				s.watchMem.release(n - got)
			}
		}, nil
	}
	// The first page of every group, before anything is sent: a watch
	// that cannot resume is refused outright. Room for all of them is
	// taken at once: a watch never holds room while waiting for more.
	first := map[kvd.GroupID]historyPage{}
	// With many groups the first pages are smaller, so that starting a
	// watch never needs more than a quarter of the buffer.
	firstPage := int64(watchPageBytes)
	if limit := s.watchMem.max; limit > 0 {
		firstPage = min(max(limit/int64(4*max(len(m.Groups), 1)), 4<<10), watchPageBytes)
	}
	settle, err := reserve(int64(len(m.Groups)) * firstPage)
	if err != nil {
		return err
	}
	var firstErr error
	var firstBytes int64
	for _, grp := range m.Groups {
		p, err := s.fetchHistory(ctx, grp.ID, cur[grp.ID], fromNow[grp.ID], prefix, 256, int(firstPage))
		if err == nil && !fromNow[grp.ID] && cur[grp.ID].Less(p.floor) {
			err = errCompacted(grp.ID, cur[grp.ID], p.floor)
		}
		if err != nil {
			firstErr = err
			break
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
		firstBytes += eventsBytes(p.events)
	}
	settle(firstBytes)
	unsent := func(evs []store.Event) { s.watchMem.release(eventsBytes(evs)) }
	if firstErr == nil {
		firstErr = start(encodeCursor(cur))
	}
	if firstErr != nil {
		s.watchMem.release(firstBytes)
		return firstErr
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	events := make(chan groupEvent, 16)
	defer func() {
		cancel()
		wg.Wait()
		for {
			select {
			case ge := <-events:
				s.watchMem.release(eventBytes(ge.ev))
			default:
				return
			}
		}
	}()
	errs := make(chan error, len(m.Groups))
	// retry runs f until it succeeds or ctx ends, backing off.
	retry := func(f func() error) error {
		for attempt := 0; ; attempt++ {
			err := f()
			if err == nil || ctx.Err() != nil {
				return err
			}
			select {
			case <-time.After(time.Duration(50<<min(attempt, 4)) * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	for _, grp := range m.Groups {
		p := first[grp.ID]
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := grp.ID
			for {
				for i, ev := range p.events {
					select {
					case events <- groupEvent{g: g, ev: ev}:
						// Sent on, it is counted until written; the page
						// must not keep it alive past that.
						p.events[i] = store.Event{}
					case <-ctx.Done():
						unsent(p.events[i:])
						return
					}
				}
				pos := p.upto
				p = historyPage{}
				select {
				case events <- groupEvent{g: g, progress: &pos}:
				case <-ctx.Done():
					return
				}
				var pending bool
				var upto, floor store.Pos
				if retry(func() (err error) {
					pending, upto, floor, err = s.waitHistory(ctx, g, pos, prefix, 2*time.Second)
					return err
				}) != nil {
					return
				}
				if pos.Less(floor) {
					errs <- errCompacted(g, pos, floor)
					return
				}
				p = historyPage{upto: upto}
				if !pending {
					continue // a progress mark, then wait again
				}
				settle, err := reserve(watchPageBytes)
				if err != nil {
					return
				}
				err = retry(func() (err error) {
					p, err = s.fetchHistory(ctx, g, upto, false, prefix, 256, watchPageBytes)
					return err
				})
				settle(eventsBytes(p.events))
				if err != nil {
					unsent(p.events)
					return
				}
				if upto.Less(p.floor) {
					unsent(p.events)
					errs <- errCompacted(g, upto, p.floor)
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
			err := send(ev)
			s.watchMem.release(eventBytes(ge.ev))
			if err != nil {
				return err
			}
		}
	}
}
