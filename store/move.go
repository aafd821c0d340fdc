package store

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
)

// A slot move (see server/moves.go) copies the state of its slots from
// the source group to the target group through the target's log: the
// keys with their values, versions and expiry deadlines, and the
// idempotency records. Intents do not move: the hand-off waits until the
// transactions holding locks in the slots have settled, and the source
// takes no new ones meanwhile. The copies enter no history: they are not
// changes, and a watch reads the source's history up to the hand-off and
// the target's after it.

// MovedKey is a key's state as a move copies it: its record, or its
// absence (Deleted) at version Version.
type MovedKey struct {
	Key     string `json:"key"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version"`
	Expires int64  `json:"expires,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
}

// MovedDedup is an idempotency record as a move copies it.
type MovedDedup struct {
	Token  string          `json:"token"`
	Record json.RawMessage `json:"record"`
}

// MoveIngest is the payload of a CmdMoveIngest: a piece of a move's copy
// for the target group. Reset (the first piece of an attempt) drops what
// the group holds in the move's slots and makes Attempt the one whose
// pieces it takes; a piece of another attempt is refused, so that a
// driver that lost its place cannot interleave its copies with the
// current one's.
type MoveIngest struct {
	Move    string `json:"move"`
	Attempt uint64 `json:"attempt"`
	Reset   bool   `json:"reset,omitempty"`
	// MinVersion, if set, raises the group's versions above it: the
	// source's newest version, so that a key deleted in the source (and
	// so not copied) gets no lower version here than its deletion had.
	MinVersion uint64       `json:"min_version,omitempty"`
	Keys       []MovedKey   `json:"keys,omitempty"`
	Dedup      []MovedDedup `json:"dedup,omitempty"`
}

// DropKeys is the payload of a CmdDropKeys: keys the group holds in slots
// that are no longer its own (a finished move's source, a failed move's
// target). A key whose slot is the group's, or in a move involving it, is
// kept.
type DropKeys struct {
	Keys []string `json:"keys"`
}

// metaMoveAttempt is the meta key of a move's current attempt here.
func metaMoveAttempt(move string) []byte { return []byte("move_attempt/" + move) }

// moveIngest applies a CmdMoveIngest. A piece for a move that is not
// (or no longer) coming into this group, or of another attempt than the
// one reset last, is refused with kvd.ErrConflict, and nothing is
// written.
func (a *applier) moveIngest(in *MoveIngest) (Result, error) {
	if a.placement == nil || a.group == 0 {
		return Result{Err: fmt.Errorf("%w: move %s: this state belongs to no group", kvd.ErrInvalid, in.Move)}, nil
	}
	mv, ok := a.incomingMove(in.Move)
	if !ok {
		return Result{Err: fmt.Errorf("%w: move %s does not copy into group %d now", kvd.ErrConflict, in.Move, a.group)}, nil
	}
	if in.Reset {
		if err := a.dropMoveKeys(mv); err != nil {
			return Result{}, err
		}
		if err := putMeta(a.meta, metaMoveAttempt(in.Move), be64(in.Attempt)); err != nil {
			return Result{}, err
		}
	} else if cur, err := metaU64(a.meta, metaMoveAttempt(in.Move)); err != nil {
		return Result{}, err
	} else if cur != in.Attempt {
		return Result{Err: fmt.Errorf("%w: move %s is at attempt %d here, not %d", kvd.ErrConflict, in.Move, cur, in.Attempt)}, nil
	}
	if err := a.raiseBase(in.MinVersion); err != nil {
		return Result{}, err
	}
	return Result{Version: a.index}, a.ingestPiece(mv, in)
}

// ingestPiece writes a piece's keys and idempotency records.
func (a *applier) ingestPiece(mv kvd.Move, in *MoveIngest) error {
	for _, k := range in.Keys {
		if !mv.Has(kvd.Slot(k.Key)) || k.Key == "" {
			continue
		}
		if err := a.clearExpiry(k.Key); err != nil {
			return err
		}
		if k.Deleted {
			if err := a.del(a.kv, []byte(k.Key)); err != nil {
				return err
			}
		} else {
			if k.Expires != 0 {
				if err := a.expiry.Put(expiryKey(k.Expires, k.Key), nil); err != nil {
					return err
				}
			}
			if err := a.put(a.kv, []byte(k.Key), encodeRecord(k.Version, k.Expires, k.Value)); err != nil {
				return err
			}
		}
		if err := a.raiseBase(k.Version); err != nil {
			return err
		}
	}
	for _, d := range in.Dedup {
		if d.Token == "" || len(d.Token) > MaxIdemKeyBytes {
			continue
		}
		e := &dedupEntry{}
		if json.Unmarshal(d.Record, e) != nil {
			continue
		}
		old, err := a.dedupGet(d.Token)
		switch {
		case err != nil:
			return err
		case old == nil:
			err = a.dedupCreate(d.Token, e)
		case old.Reg && !e.Reg && fpEqual(old.FP, e.FP):
			// Registered here (the token's home) and run in the source:
			// the outcome is what a retry must find here now.
			err = a.dedupPut(d.Token, e)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// incomingMove returns the move under way into this group with the given
// id, before its flip.
func (a *applier) incomingMove(id string) (kvd.Move, bool) {
	for _, mv := range a.placement.moving {
		if mv != nil && mv.ID == id {
			return *mv, mv.To == a.group && !mv.Flipped
		}
	}
	return kvd.Move{}, false
}

// dropMoveKeys deletes every key the group holds in mv's slots.
func (a *applier) dropMoveKeys(mv kvd.Move) error {
	var keys []string
	c := a.kv.b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if mv.Has(kvd.Slot(string(k))) {
			keys = append(keys, string(k))
		}
	}
	for _, k := range keys {
		if err := a.clearExpiry(k); err != nil {
			return err
		}
		if err := a.del(a.kv, []byte(k)); err != nil {
			return err
		}
	}
	return nil
}

// clearExpiry removes key's entry in the expiry index, if it has one.
func (a *applier) clearExpiry(key string) error {
	if _, exp := a.recordHead(key); exp != 0 {
		return a.expiry.Delete(expiryKey(exp, key))
	}
	return nil
}

// dropKeys applies a CmdDropKeys; its result's Version counts the keys
// dropped.
func (a *applier) dropKeys(d *DropKeys) (Result, error) {
	if a.placement == nil || a.group == 0 {
		return Result{}, nil
	}
	n := uint64(0)
	for _, k := range d.Keys {
		if k == "" || !a.placement.stray(a.group, kvd.Slot(k)) || !a.exists(k) {
			continue
		}
		if err := a.clearExpiry(k); err != nil {
			return Result{}, err
		}
		if err := a.del(a.kv, []byte(k)); err != nil {
			return Result{}, err
		}
		n++
	}
	return Result{Version: n}, nil
}

// Readable tells whether this group serves reads of key by the map it
// stores: nil, kvd.ErrWrongGroup, or kvd.ErrUnavailable while a move
// hands the key's slot over.
func (db *DB) Readable(key string) error {
	if err := db.sealedErr(); err != nil {
		return err
	}
	p := db.placement.Load()
	if p == nil || db.opts.Group == 0 {
		return nil
	}
	return p.readable(db.opts.Group, kvd.Slot(key))
}

// ServedSlots returns the slots this group serves reads of by the map it
// stores (every slot without a map). Every routed scan asks, twice: the
// set is kept until the stored map changes.
func (db *DB) ServedSlots() kvd.SlotSet {
	if db.sealedErr() != nil {
		return kvd.SlotSet{}
	}
	p := db.placement.Load()
	if c := db.served.Load(); c != nil && c.p == p {
		return c.set
	}
	c := &servedSlots{p: p}
	for s := 0; s < kvd.SlotCount; s++ {
		if p == nil || db.opts.Group == 0 || p.readable(db.opts.Group, s) == nil {
			c.set.Add(s)
		}
	}
	db.served.Store(c)
	return c.set
}

// servedSlots is ServedSlots' answer under one placement.
type servedSlots struct {
	p   *placement
	set kvd.SlotSet
}

// CopySlots reads a page of the keys in slots, in key order after key
// after ("" from the first), of at most maxBytes of keys and values (but
// at least one key), from one consistent view; next is the key to go on
// after ("" when done) and at the view's applied index.
func (db *DB) CopySlots(slots *kvd.SlotSet, after string, maxBytes int) (keys []MovedKey, next string, at uint64, err error) {
	size := 0
	err = db.view(func(tx *bolt.Tx) error {
		at = u64(mustMeta(bucketsOf(tx, db.opts.Keys).meta, metaApplied))
		c := bucketsOf(tx, db.opts.Keys).kv.cursor()
		k, v := c.seek([]byte(after))
		if k != nil && string(k) == after && after != "" {
			k, v = c.next()
		}
		for ; k != nil; k, v = c.next() {
			if !slots.Has(kvd.Slot(string(k))) {
				continue
			}
			if len(keys) > 0 && size+len(k)+len(v) > maxBytes {
				return c.err
			}
			keys = append(keys, MovedKey{Key: string(k), Value: append([]byte(nil), recValue(v)...), Version: version(v), Expires: recExpires(v)})
			size += len(k) + len(v)
			next = string(k)
		}
		next = ""
		return c.err
	})
	if err != nil {
		return nil, "", 0, fmt.Errorf("copy slots: %w", err)
	}
	return keys, next, at, nil
}

// mustMeta reads a meta value, unchecked errors reading as absent.
func mustMeta(meta bucket, key []byte) []byte {
	v, _ := meta.get(key)
	return v
}

// Changes is a page of ChangedKeys.
type Changes struct {
	// Keys is the current state of each key changed.
	Keys []MovedKey
	// Upto is the position to go on from; More tells that changes were
	// left for the next page.
	Upto Pos
	More bool
	// Floor is the history's floor (the position asked below it:
	// changes were lost, and the copy must start over), Last the
	// position of its last event.
	Floor, Last Pos
	// High is the version of the last entry applied (its index plus the
	// version base): no change of the group has a higher one.
	High uint64
}

// ChangedKeys reads the history after position after for changes of
// keys in slots, and returns the current state of each key changed (at
// most maxKeys of them, of at most maxBytes of keys and values but at
// least one), all from one consistent view.
func (db *DB) ChangedKeys(slots *kvd.SlotSet, after Pos, maxKeys, maxBytes int) (Changes, error) {
	c := Changes{Upto: after}
	err := db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		applied, _ := metaU64(bs.meta, metaApplied)
		base, _ := metaU64(bs.meta, metaVersionBase)
		c.High = applied + base
		fb, err := bs.meta.get(metaHistFloor)
		if err != nil {
			return err
		}
		c.Floor = posOf(fb)
		if k, _ := bs.hist.b.Cursor().Last(); k != nil {
			c.Last = posOf(k)
		}
		if after.Less(c.Floor) {
			return nil
		}
		seen := map[string]bool{}
		size := 0
		cur := bs.hist.cursor()
		start := after
		start.Seq++
		for k, v := cur.seek(start.bytes()); k != nil; k, v = cur.next() {
			pos := posOf(k)
			if !after.Less(pos) {
				continue
			}
			ev, err := decodeEvent(pos, v)
			if err != nil {
				return err
			}
			if slots.Has(kvd.Slot(ev.Key)) && !seen[ev.Key] {
				rec, err := bs.kv.get([]byte(ev.Key))
				if err != nil {
					return err
				}
				mk := MovedKey{Key: ev.Key, Version: ev.Version(), Deleted: true}
				if rec != nil {
					mk = MovedKey{Key: ev.Key, Value: append([]byte(nil), recValue(rec)...), Version: version(rec), Expires: recExpires(rec)}
				}
				if len(c.Keys) == maxKeys || (len(c.Keys) > 0 && size+len(mk.Key)+len(mk.Value) > maxBytes) {
					c.More = true
					break
				}
				seen[ev.Key] = true
				c.Keys = append(c.Keys, mk)
				size += len(mk.Key) + len(mk.Value)
			}
			c.Upto = pos
		}
		return cur.err
	})
	if err != nil {
		return Changes{Upto: after}, fmt.Errorf("read changes: %w", err)
	}
	return c, nil
}

// ErrHistoryLost means the history no longer reaches back to a position
// a move's catch-up asked to read from.
var ErrHistoryLost = errors.New("the history no longer holds the changes asked for")

// DedupSince returns a page of the idempotency records made at or after
// Unix ns since (of at most limit), in the order they were made, from
// after on (an opaque position; "" from the first), and the position to
// go on from ("" when done).
func (db *DB) DedupSince(since int64, after string, limit int) (out []MovedDedup, next string, newest int64, err error) {
	start := be64(uint64(max(since, 0)))
	if after != "" {
		b, err := hex.DecodeString(after)
		if err != nil {
			return nil, "", 0, fmt.Errorf("%w: idempotency records: bad position", kvd.ErrInvalid)
		}
		start = append(b, 0) // just past after
	}
	err = db.view(func(tx *bolt.Tx) error {
		bs := bucketsOf(tx, db.opts.Keys)
		c := bs.dedupAt.Cursor()
		for k, _ := c.Seek(start); k != nil; k, _ = c.Next() {
			if len(out) == limit {
				return nil
			}
			next = hex.EncodeToString(k)
			if len(k) < 8 {
				continue
			}
			newest = max(newest, int64(u64(k[:8])))
			token := string(k[8:])
			rec, err := bs.dedup.get([]byte(token))
			if err != nil {
				return err
			}
			if rec != nil {
				out = append(out, MovedDedup{Token: token, Record: append(json.RawMessage(nil), rec...)})
			}
		}
		next = ""
		return nil
	})
	if err != nil {
		return nil, "", 0, fmt.Errorf("read idempotency records: %w", err)
	}
	return out, next, newest, nil
}

// StrayKeys returns up to limit keys the group holds in slots that are
// not its own and that no move under way involves it in, for the leader
// to drop (CmdDropKeys).
//
// Keys become leftovers only when the stored map changes, so a search
// that found none is not repeated until it does.
func (db *DB) StrayKeys(limit int) ([]string, error) {
	p := db.placement.Load()
	if p == nil || db.opts.Group == 0 || db.strayClean.Load() == p {
		return nil, nil
	}
	var stray [kvd.SlotCount]bool
	any := false
	for s := range stray {
		stray[s] = p.stray(db.opts.Group, s)
		any = any || stray[s]
	}
	if !any {
		return nil, nil
	}
	var out []string
	err := db.view(func(tx *bolt.Tx) error {
		c := bucketsOf(tx, db.opts.Keys).kv.cursor()
		for k, _ := c.seek(nil); k != nil && len(out) < limit; k, _ = c.next() {
			if stray[kvd.Slot(string(k))] {
				out = append(out, string(k))
			}
		}
		return c.err
	})
	if err == nil && len(out) == 0 {
		db.strayClean.Store(p)
	}
	return out, err
}

// SlotStats counts the keys and the bytes of keys and values the group
// holds in each slot it owns.
func (db *DB) SlotStats() (keys, bytes [kvd.SlotCount]uint64, err error) {
	err = db.view(func(tx *bolt.Tx) error {
		c := bucketsOf(tx, db.opts.Keys).kv.b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			s := kvd.Slot(string(k))
			keys[s]++
			bytes[s] += uint64(len(k) + len(v))
		}
		return nil
	})
	return keys, bytes, err
}
