package server

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/store"
)

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
	if grp, ok := s.servingReplica(g); ok && grp.Serving() == nil {
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
	if grp, ok := s.servingReplica(g); ok && grp.Serving() == nil {
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
		p.events = append(p.events, store.Event{Pos: pos, Delete: e.Delete, Key: e.Key, Value: e.Value, Ver: e.Version})
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
		out.Events = append(out.Events, api.HistoryEvent{Pos: e.Pos.String(), Delete: e.Delete, Key: e.Key, Value: e.Value, Version: e.Ver})
	}
	return out, nil
}
