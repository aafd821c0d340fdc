package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
)

// Every change to a key (a put, a delete, an expiry, a transaction's
// write) appends an event to the replica's history, keyed by its position
// in the log: the entry's index and the change's rank within the entry.
// History is state like any other (replicated, snapshotted, restored), so
// every replica holds the same events at the same positions and a watch
// can resume on any replica after a leader change. It is bounded: past
// Options.HistoryMax events or Options.HistoryMaxBytes bytes the oldest
// are dropped, and the position of the newest dropped one is the floor
// below which a watch cannot resume.
var (
	bucketHistory = []byte("history")

	metaHistCount = []byte("hist_count")
	metaHistBytes = []byte("hist_bytes")
	metaHistFloor = []byte("hist_floor")
)

// Pos is a position in a group's history.
type Pos struct {
	Index uint64
	Seq   uint32
}

// Before returns the greatest position below p: reading history after it
// starts with p.
func (p Pos) Before() Pos {
	if p.Seq > 0 {
		return Pos{Index: p.Index, Seq: p.Seq - 1}
	}
	if p.Index == 0 {
		return p
	}
	return Pos{Index: p.Index - 1, Seq: math.MaxUint32}
}

// Less orders positions.
func (p Pos) Less(q Pos) bool { return p.Index < q.Index || (p.Index == q.Index && p.Seq < q.Seq) }

func (p Pos) bytes() []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, p.Index)
	binary.BigEndian.PutUint32(b[8:], p.Seq)
	return b
}

func posOf(b []byte) Pos {
	if len(b) != 12 {
		return Pos{}
	}
	return Pos{Index: binary.BigEndian.Uint64(b), Seq: binary.BigEndian.Uint32(b[8:])}
}

// String renders a position compactly.
func (p Pos) String() string { return fmt.Sprintf("%d.%d", p.Index, p.Seq) }

// Event is one change in the history.
type Event struct {
	Pos    Pos
	Delete bool
	Key    string
	Value  []byte
	// Ver is the change's version when it is not the entry's index (in
	// a group that took keys of higher versions from a slot move).
	Ver uint64
}

// Version is the event's version: the version the change gave the key.
func (e Event) Version() uint64 {
	if e.Ver != 0 {
		return e.Ver
	}
	return e.Pos.Index
}

// encodeEvent encodes a change: 'p' or 'd', the key and the value; or,
// when its version is not the entry's index, 'P' or 'D' and the version
// first.
func encodeEvent(del bool, key string, val []byte, ver, index uint64) []byte {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(key)+len(val))
	t := byte('p')
	if del {
		t = 'd'
	}
	if ver != index {
		b = append(b, t-'a'+'A')
		b = binary.AppendUvarint(b, ver)
	} else {
		b = append(b, t)
	}
	b = appendBytes(b, []byte(key))
	return appendBytes(b, val)
}

func decodeEvent(pos Pos, b []byte) (Event, error) {
	d := decoder{buf: b}
	t := d.byte()
	e := Event{Pos: pos, Delete: t == 'd' || t == 'D'}
	if t == 'P' || t == 'D' {
		e.Ver = d.uvarint()
	}
	e.Key = string(d.bytes())
	e.Value = append([]byte(nil), d.bytes()...)
	if d.err != nil {
		return Event{}, fmt.Errorf("decode history event at %s: %v", pos, d.err)
	}
	return e, nil
}

// HistorySize returns the events the history holds and the bytes of
// their keys and values (what its bounds count).
func (db *DB) HistorySize() (events, bytes uint64) {
	_ = db.view(func(tx *bolt.Tx) error {
		meta := bucketsOf(tx, db.opts.Keys).meta
		events, _ = metaU64(meta, metaHistCount)
		bytes, _ = metaU64(meta, metaHistBytes)
		return nil
	})
	return events, bytes
}

// History returns up to limit events with key prefix after position
// after, holding keys and values of at most maxBytes (but at least one
// event; maxBytes <= 0 means HistoryPageBytes), the position it read up to
// (to resume from, even when no event matched), and the history's floor.
// If after is below the floor, events were dropped and the caller must
// report the watch compacted.
func (db *DB) History(after Pos, prefix string, limit, maxBytes int) (events []Event, upto Pos, floor Pos, err error) {
	events, _, upto, floor, err = db.history(after, prefix, limit, maxBytes)
	return events, upto, floor, err
}

// HistoryPending tells whether an event with key prefix follows position
// after, without reading it: upto is the position up to which none did
// (reading on from it skips nothing), floor the history's floor.
func (db *DB) HistoryPending(after Pos, prefix string) (pending bool, upto Pos, floor Pos, err error) {
	_, pending, upto, floor, err = db.history(after, prefix, 0, 0)
	return pending, upto, floor, err
}

// history reads events with key prefix after position after until limit
// of them or maxBytes; with limit 0 it stops at the first and reads none,
// and says so (pending).
func (db *DB) history(after Pos, prefix string, limit, maxBytes int) (events []Event, pending bool, upto Pos, floor Pos, err error) {
	if maxBytes <= 0 {
		maxBytes = HistoryPageBytes
	}
	upto = after
	size := 0
	err = db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		fb, err := bs.meta.get(metaHistFloor)
		if err != nil {
			return err
		}
		floor = posOf(fb)
		c := bs.hist.cursor()
		start := after
		start.Seq++
		for k, v := c.seek(start.bytes()); k != nil; k, v = c.next() {
			pos := posOf(k)
			if !after.Less(pos) {
				continue
			}
			if !eventHasPrefix(v, prefix) {
				upto = pos
				continue
			}
			if limit == 0 || (len(events) > 0 && size+len(v) > maxBytes) {
				pending = true // the event does not fit: the next page starts with it
				break
			}
			ev, err := decodeEvent(pos, v)
			if err != nil {
				return err
			}
			upto = pos
			events = append(events, ev)
			size += len(ev.Key) + len(ev.Value)
			if len(events) >= limit {
				break
			}
		}
		return c.err
	})
	return events, pending, upto, floor, err
}

func eventHasPrefix(ev []byte, prefix string) bool {
	if prefix == "" {
		return true
	}
	d := decoder{buf: ev}
	if t := d.byte(); t == 'P' || t == 'D' {
		d.uvarint()
	}
	k := d.bytes()
	return d.err == nil && strings.HasPrefix(string(k), prefix)
}

// HistoryPageBytes is the default cap on the keys and values of one
// History page (a page holds at least one event).
const HistoryPageBytes = 4 << 20

// HistoryHead returns the position right after everything applied so far:
// a watch from now starts there.
func (db *DB) HistoryHead() Pos {
	return Pos{Index: db.AppliedIndex(), Seq: ^uint32(0)}
}

// ExpireCond is the condition of an expiry: the version the TTL was set
// at.
func ExpireCond(v uint64) kvd.Cond { return kvd.Cond{Kind: kvd.CondVersionEq, Version: v} }
