package server

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// eventsKept bounds a node's event log.
const eventsKept = 256

// eventLog keeps the newest events this node recorded: its replicas
// becoming leaders, and the map changes it made. Recording is an append
// under a lock when something happens; nothing runs otherwise.
type eventLog struct {
	node string
	// mu protects ring and next.
	mu   sync.Mutex
	ring []api.Event
	next int
}

func (l *eventLog) record(kind string, g kvd.GroupID, format string, args ...any) {
	e := api.Event{Time: time.Now().UTC(), Node: l.node, Kind: kind, Group: uint64(g), Text: fmt.Sprintf(format, args...)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < eventsKept {
		l.ring = append(l.ring, e)
		return
	}
	l.ring[l.next] = e
	l.next = (l.next + 1) % eventsKept
}

// list returns the events, the newest first.
func (l *eventLog) list() []api.Event {
	l.mu.Lock()
	out := slices.Clone(l.ring)
	l.mu.Unlock()
	slices.SortStableFunc(out, func(a, b api.Event) int { return b.Time.Compare(a.Time) })
	return out
}

// Events returns the events this node recorded, the newest first.
func (s *Server) Events() []api.Event { return s.events.list() }

// groupTraffic returns the counter of group g's client requests this
// node served (GET /v1/status, the console's figures per group).
func (s *Server) groupTraffic(g kvd.GroupID) *api.TrafficCounter {
	if t, ok := s.traffic.Load(g); ok {
		return t.(*api.TrafficCounter)
	}
	t, _ := s.traffic.LoadOrStore(g, &api.TrafficCounter{})
	return t.(*api.TrafficCounter)
}

// countRequest counts a request of group g that started at start.
func (s *Server) countRequest(g kvd.GroupID, start time.Time) {
	s.groupTraffic(g).Observe(time.Since(start).Seconds())
}
