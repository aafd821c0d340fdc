package server

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/backoff"
	"github.com/kvd-project/kvd/store"
)

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
	cur, fromNow, err := s.resolveCursor(ctx, m, since)
	if err != nil {
		return err
	}
	first, firstBytes, err := s.firstPages(ctx, m, prefix, cur, fromNow)
	if err == nil {
		err = start(encodeCursor(cur))
	}
	if err != nil {
		s.watchMem.release(firstBytes)
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{s: s, prefix: prefix, cur: cur, events: make(chan groupEvent, 16), errs: make(chan error, 1),
		epoch: m.Epoch, held: map[kvd.GroupID][]groupEvent{}, recv: maps.Clone(cur)}
	defer w.stop(cancel)
	for _, grp := range m.Groups {
		p := first[grp.ID]
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.follow(ctx, grp.ID, p)
		}()
	}
	return w.forward(ctx, send)
}

// followNew starts reading, from the start of its history, every group of
// the map that the watch does not follow yet (groups created since it
// started: slots may move to them).
func (w *watcher) followNew(ctx context.Context) {
	m := w.s.Map()
	if m.Epoch == w.epoch {
		return
	}
	w.epoch = m.Epoch
	for _, grp := range m.Groups {
		if _, ok := w.cur[grp.ID]; ok {
			continue
		}
		w.cur[grp.ID], w.recv[grp.ID] = store.Pos{}, store.Pos{}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			if p, ok := w.readPage(ctx, grp.ID, store.Pos{}); ok {
				w.follow(ctx, grp.ID, p)
			}
		}()
	}
}

// mustWait tells whether group g's event ev must wait: its key's slot
// moved to g (after the move's end in g's log) from a group whose events
// up to the move's last change there (kvd.Move.SourceIndex) the watch
// has not all sent, so that a key's events stay in version order across
// moves.
func (w *watcher) mustWait(g kvd.GroupID, ev store.Event) bool {
	m := w.s.Map()
	if len(m.Moves) == 0 {
		return false
	}
	slot := kvd.Slot(ev.Key)
	for _, mv := range m.Moves {
		if mv.To != g || mv.SourceIndex == 0 || (mv.State != kvd.MoveDone && !mv.Flipped) || ev.Pos.Index <= mv.TargetIndex || !mv.Has(slot) {
			continue
		}
		if _, ok := m.Group(mv.From); !ok {
			continue // the source was removed since: its history is gone
		}
		if _, ok := w.recv[mv.From]; !ok {
			continue
		}
		if w.sentThrough(mv.From).Less(store.Pos{Index: mv.SourceIndex, Seq: mv.SourceSeq}) {
			return true
		}
	}
	return false
}

// sentThrough returns the position up to which the watch has sent (or
// passed) every event of group h: just before its first held event, or
// all it received.
func (w *watcher) sentThrough(h kvd.GroupID) store.Pos {
	if q := w.held[h]; len(q) > 0 {
		return q[0].ev.Pos.Before()
	}
	return w.recv[h]
}

// fail hands a reader's reason to end the watch to forward.
func (w *watcher) fail(ctx context.Context, err error) {
	select {
	case w.errs <- err:
	case <-ctx.Done():
	}
}

// firstPages reads the first page of every group's history, before
// anything is sent: a watch that cannot resume is refused outright. In a
// group the watch starts now (fromNow) it sets cur to where the page
// starts. It returns the pages and the bytes their events hold in the
// node's watch buffer, which the caller gives back if the watch does not
// go on (an error included: held then counts the pages read before it).
func (s *Server) firstPages(ctx context.Context, m *kvd.Map, prefix string, cur map[kvd.GroupID]store.Pos, fromNow map[kvd.GroupID]bool) (first map[kvd.GroupID]historyPage, held int64, err error) {
	// Room for all of them is taken at once: a watch never holds room
	// while waiting for more.
	first = map[kvd.GroupID]historyPage{}
	// With many groups the first pages are smaller, so that starting a
	// watch never needs more than a quarter of the buffer.
	firstPage := int64(watchPageBytes)
	if limit := s.watchMem.max; limit > 0 {
		firstPage = min(max(limit/int64(4*max(len(m.Groups), 1)), 4<<10), watchPageBytes)
	}
	settle, err := reserve(ctx, s.watchMem, int64(len(m.Groups))*firstPage)
	if err != nil {
		return nil, 0, err
	}
	for _, grp := range m.Groups {
		var p historyPage
		p, err = s.fetchHistory(ctx, grp.ID, cur[grp.ID], fromNow[grp.ID], prefix, 256, int(firstPage))
		if err == nil && !fromNow[grp.ID] && cur[grp.ID].Less(p.floor) {
			err = errCompacted(grp.ID, cur[grp.ID], p.floor)
		}
		if err != nil {
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
		held += eventsBytes(p.events)
	}
	settle(held)
	return first, held, err
}

// reserve takes room for n bytes in b, waiting until ctx ends; settle
// then trims or grows it to the got bytes actually read.
//
// Every event read counts against the node's watch buffer until it is
// sent, and a reader takes room for a page before it reads one, so slow
// watchers make the others wait instead of filling memory. Waiting for
// news takes no room.
func reserve(ctx context.Context, b *byteBudget, n int64) (settle func(got int64), err error) {
	if err := b.acquire(ctx, n); err != nil {
		return nil, err
	}
	return func(got int64) {
		if got > n {
			b.charge(got - n)
		} else {
			b.release(n - got)
		}
	}, nil
}

// A watcher runs an established watch: a reader per group follows the
// group's history and hands what it reads to forward, which sends it on.
type watcher struct {
	s      *Server
	prefix string
	// cur is the position the watch has sent up to in each group; once
	// the readers run, only forward uses it.
	cur map[kvd.GroupID]store.Pos
	// events carries the readers' events and progress marks to forward.
	events chan groupEvent
	// errs carries a reader's reason to end the watch.
	errs chan error
	// wg counts the readers.
	wg sync.WaitGroup
	// epoch is the map's when forward last looked for new groups.
	epoch uint64
	// held are each group's events (and progress marks) that wait, in
	// order, behind one that must wait (see mustWait).
	held map[kvd.GroupID][]groupEvent
	// recv is the position up to which each group's reader has handed
	// over its events and progress marks (held ones included).
	recv map[kvd.GroupID]store.Pos
}

// A group's reader sends its events in order, then a progress mark
// (progress set, ev empty) with the position it has read up to: every
// event of the group up to it has been sent before it.
type groupEvent struct {
	g        kvd.GroupID
	ev       store.Event
	progress *store.Pos
}

// stop ends the readers (cancel ends their context), waits for them and
// gives back the room of the events they read that were not sent.
func (w *watcher) stop(cancel context.CancelFunc) {
	cancel()
	w.wg.Wait()
	for _, q := range w.held {
		for _, ge := range q {
			w.s.watchMem.release(eventBytes(ge.ev))
		}
	}
	for {
		select {
		case ge := <-w.events:
			w.s.watchMem.release(eventBytes(ge.ev))
		default:
			return
		}
	}
}

// unsent gives back the room of events read and not sent.
func (w *watcher) unsent(evs []store.Event) { w.s.watchMem.release(eventsBytes(evs)) }

// follow is group g's reader: it hands on the events of page p and a
// progress mark, then waits for and reads the next page, until ctx ends
// or the group's history is compacted past the watch (said on errs).
func (w *watcher) follow(ctx context.Context, g kvd.GroupID, p historyPage) {
	for {
		if !w.sendEvents(ctx, g, p.events) {
			return
		}
		pos := p.upto
		p = historyPage{}
		select {
		case w.events <- groupEvent{g: g, progress: &pos}:
		case <-ctx.Done():
			return
		}
		var ok bool
		if p, ok = w.nextPage(ctx, g, pos); !ok {
			return
		}
	}
}

// sendEvents hands group g's events to forward, in order. It reports
// false if ctx ended first, giving back the room of those not handed on.
func (w *watcher) sendEvents(ctx context.Context, g kvd.GroupID, evs []store.Event) bool {
	for i, ev := range evs {
		select {
		case w.events <- groupEvent{g: g, ev: ev}:
			// Sent on, it is counted until written; the page
			// must not keep it alive past that.
			evs[i] = store.Event{}
		case <-ctx.Done():
			w.unsent(evs[i:])
			return false
		}
	}
	return true
}

// nextPage waits for an event in group g after pos and reads a page from
// there; if none comes in the wait, the page holds no event, only the
// position the wait reached (a progress mark, then wait again). It
// reports false when the reader must stop.
func (w *watcher) nextPage(ctx context.Context, g kvd.GroupID, pos store.Pos) (historyPage, bool) {
	var pending bool
	var upto, floor store.Pos
	if watchBackoff.Retry(ctx, backoff.Always, func() (err error) {
		pending, upto, floor, err = w.s.waitHistory(ctx, g, pos, w.prefix, 2*time.Second)
		return err
	}) != nil {
		return historyPage{}, false
	}
	if pos.Less(floor) {
		w.fail(ctx, errCompacted(g, pos, floor))
		return historyPage{}, false
	}
	if !pending {
		return historyPage{upto: upto}, true
	}
	return w.readPage(ctx, g, upto)
}

// readPage reads a page of group g's history after upto, with room taken
// for it first. It reports false when the reader must stop.
func (w *watcher) readPage(ctx context.Context, g kvd.GroupID, upto store.Pos) (historyPage, bool) {
	settle, err := reserve(ctx, w.s.watchMem, watchPageBytes)
	if err != nil {
		return historyPage{}, false
	}
	var p historyPage
	err = watchBackoff.Retry(ctx, backoff.Always, func() (err error) {
		p, err = w.s.fetchHistory(ctx, g, upto, false, w.prefix, 256, watchPageBytes)
		return err
	})
	settle(eventsBytes(p.events))
	if err != nil {
		w.unsent(p.events)
		return historyPage{}, false
	}
	if upto.Less(p.floor) {
		w.unsent(p.events)
		w.fail(ctx, errCompacted(g, upto, p.floor))
		return historyPage{}, false
	}
	return p, true
}

// forward sends the readers' events on through send, each with a cursor
// that resumes right after it, and progress marks, until ctx ends, send
// fails or a reader ends the watch.
func (w *watcher) forward(ctx context.Context, send func(kvd.Event) error) error {
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
		case err := <-w.errs:
			return err
		case <-tick.C:
			w.followNew(ctx)
			if moved {
				moved = false
				if err := send(kvd.Event{Cursor: encodeCursor(w.cur)}); err != nil {
					return err
				}
			}
		case ge := <-w.events:
			w.followNew(ctx)
			at := ge.ev.Pos
			if ge.progress != nil {
				at = *ge.progress
			}
			if w.recv[ge.g].Less(at) {
				w.recv[ge.g] = at
			}
			if len(w.held[ge.g]) > 0 || (ge.progress == nil && w.mustWait(ge.g, ge.ev)) {
				w.held[ge.g] = append(w.held[ge.g], ge)
				continue
			}
			if err := w.emit(ge, &moved, send); err != nil {
				return err
			}
			if err := w.release(&moved, send); err != nil {
				return err
			}
		}
	}
}

// emit sends group event ge on (an event, or a progress mark that moves
// the cursor).
func (w *watcher) emit(ge groupEvent, moved *bool, send func(kvd.Event) error) error {
	if ge.progress != nil {
		if w.cur[ge.g].Less(*ge.progress) {
			w.cur[ge.g], *moved = *ge.progress, true
		}
		return nil
	}
	*moved = false
	w.cur[ge.g] = ge.ev.Pos
	ev := kvd.Event{Type: "put", Key: ge.ev.Key, Value: ge.ev.Value, Version: ge.ev.Version(), Cursor: encodeCursor(w.cur)}
	if ge.ev.Delete {
		ev.Type, ev.Value = "delete", nil
	}
	err := send(ev)
	w.s.watchMem.release(eventBytes(ge.ev))
	return err
}

// release sends the held events that need no longer wait, in each
// group's order, until none moves.
func (w *watcher) release(moved *bool, send func(kvd.Event) error) error {
	for progress := true; progress; {
		progress = false
		for g, q := range w.held {
			for len(q) > 0 && (q[0].progress != nil || !w.mustWait(g, q[0].ev)) {
				if err := w.emit(q[0], moved, send); err != nil {
					return err
				}
				q[0] = groupEvent{}
				q = q[1:]
				progress = true
			}
			if len(q) == 0 {
				delete(w.held, g)
			} else {
				w.held[g] = q
			}
		}
	}
	return nil
}
