package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
)

// A backup (server/backup.go) takes one consistent cut of every group.
// It freezes the groups in two steps through their logs (CmdFreeze):
// first no new transaction may prepare, so the locks held drain; then no
// write of any kind applies. While every group is frozen with no lock
// held, the state of each is the cluster's state at one instant, and a
// snapshot of each is taken; the freeze is then lifted and the snapshots
// are streamed. A freeze left behind by a driver that died is lifted by
// the group's leader after FreezeMax.
//
// A restore loads a backup in three steps through each group's log
// (CmdRestore): it stages the keys out of sight, seals the group (which
// then serves no read and takes no write), and moves the staged keys in
// by steps of bounded size; the last step unseals. A restore fails or is
// abandoned before it seals without leaving a trace the clients see;
// once every group is sealed, it is finished whatever crashes.

// Freeze levels (Freeze.Level).
const (
	// FreezeLift lifts the freeze.
	FreezeLift = 0
	// FreezePrepares refuses new transaction prepares.
	FreezePrepares = 1
	// FreezeWrites refuses every write.
	FreezeWrites = 2
)

// Freeze is the payload of a CmdFreeze: freeze the group for backup ID
// at Level, or lift it (FreezeLift; an ID names the freeze to lift, none
// lifts any).
type Freeze struct {
	ID    string `json:"id"`
	Level int    `json:"level"`
}

// FreezeState is a group's freeze: the backup that holds it, its level,
// when it began and when it reached FreezeWrites (the entries' times,
// Unix ns).
type FreezeState struct {
	ID     string `json:"id,omitempty"`
	Level  int    `json:"level,omitempty"`
	Since  int64  `json:"since,omitempty"`
	Writes int64  `json:"writes,omitempty"`
}

// Restore operations (RestoreOp.Op).
const (
	RestoreStage   = "stage"
	RestoreQuiesce = "quiesce"
	RestoreSeal    = "seal"
	RestoreStep    = "step"
	RestoreAbort   = "abort"
)

// RestoreOp is the payload of a CmdRestore, one step of restore ID in
// this group:
//
//   - stage keeps Keys out of sight; Reset (the first piece) drops what
//     another restore staged and makes ID the one staged;
//   - quiesce makes the group refuse new transaction prepares, so that
//     the locks held drain before it seals;
//   - seal makes the group serve nothing until the restore is loaded; it
//     is refused (unavailable) while a transaction holds a lock here, whose
//     resolution would write over the keys loaded. Force also drops the
//     keys the group holds;
//   - step loads a bounded part of what is staged; the result's Version
//     counts the staged keys left, and the last step (0 left) unseals;
//   - abort drops what ID staged, if it has not sealed.
type RestoreOp struct {
	ID    string     `json:"id"`
	Op    string     `json:"op"`
	Reset bool       `json:"reset,omitempty"`
	Force bool       `json:"force,omitempty"`
	Keys  []MovedKey `json:"keys,omitempty"`
}

// restoreState is the restore a group is staging or loading.
type restoreState struct {
	ID       string `json:"id,omitempty"`
	Quiesced bool   `json:"quiesced,omitempty"`
	Sealed   bool   `json:"sealed,omitempty"`
	Force    bool   `json:"force,omitempty"`
	Cleared  bool   `json:"cleared,omitempty"`
	Staged   uint64 `json:"staged,omitempty"`
	// Done is the last restore loaded, so that a step or a seal repeated
	// after it changes nothing.
	Done string `json:"done,omitempty"`
}

// gate is what backups and restores make a group refuse, published with
// each applied batch.
type gate struct {
	freeze  FreezeState
	restore restoreState
}

// Meta keys of the gate; bucket of staged keys.
var (
	metaFreeze    = []byte("freeze")
	metaRestore   = []byte("restore")
	bucketRestore = []byte("restore")
)

// tagRestore tags the staged keys' checksums.
const tagRestore byte = 8

// Bounds of one restore step.
const (
	restoreStepBytes = 4 << 20
	restoreStepKeys  = 20000
)

// loadGate reads the gate from meta.
func loadGate(meta bucket) (*gate, error) {
	g := &gate{}
	for _, d := range []struct {
		key []byte
		v   any
	}{{metaFreeze, &g.freeze}, {metaRestore, &g.restore}} {
		raw, err := meta.get(d.key)
		if err != nil {
			return nil, err
		}
		if raw != nil {
			if err := json.Unmarshal(raw, d.v); err != nil {
				return nil, corruptf("meta %s: %v", d.key, err)
			}
		}
	}
	return g, nil
}

// setGate stores g as the group's gate.
func (a *applier) setGate(g *gate) error {
	for _, d := range []struct {
		key []byte
		v   any
	}{{metaFreeze, g.freeze}, {metaRestore, g.restore}} {
		doc, err := json.Marshal(d.v)
		if err != nil {
			return err
		}
		if err := putMeta(a.meta, d.key, doc); err != nil {
			return err
		}
	}
	a.gate, a.gateChanged = g, true
	return nil
}

// pausedText is in every refusal of a paused group: the node waits for
// the pause to pass before it answers (see server.placed).
const pausedText = "is paused"

// Paused tells whether err is a paused group's refusal.
func Paused(err error) bool {
	return errors.Is(err, kvd.ErrUnavailable) && strings.Contains(err.Error(), pausedText)
}

// paused refuses a command that the group's gate holds back: with
// kvd.ErrUnavailable, nothing applied.
func (a *applier) paused(c *Cmd, doc any) error {
	g := a.gate
	if g == nil {
		return nil
	}
	level := 0
	switch c.Kind {
	case CmdTxnPrepare:
		level = FreezePrepares
	case CmdPut, CmdDelete, CmdExpire, CmdTxnOnePhase, CmdMoveIngest, CmdDropKeys:
		level = FreezeWrites
	case CmdRestore:
		// A restore changes nothing a backup's cut may see: staging is out
		// of sight, but a seal or a load step is not.
		if op, ok := doc.(*RestoreOp); ok && op.Op != RestoreAbort {
			level = FreezeWrites
		}
	default:
		return nil
	}
	switch {
	case level == 0:
		return nil
	case g.restore.Sealed && c.Kind != CmdRestore:
		return fmt.Errorf("%w: group %d %s: restore %s is loading", kvd.ErrUnavailable, a.group, pausedText, g.restore.ID)
	case g.restore.Quiesced && c.Kind == CmdTxnPrepare:
		return fmt.Errorf("%w: group %d %s: restore %s is about to load", kvd.ErrUnavailable, a.group, pausedText, g.restore.ID)
	case g.freeze.Level >= level:
		return fmt.Errorf("%w: group %d %s: backup %s is taking its cut", kvd.ErrUnavailable, a.group, pausedText, g.freeze.ID)
	}
	return nil
}

// freeze applies a CmdFreeze.
func (a *applier) freeze(f *Freeze) (Result, error) {
	cur := a.gate.freeze
	ng := *a.gate
	switch {
	case f.Level == FreezeLift:
		if cur.ID == "" || (f.ID != "" && f.ID != cur.ID) {
			return Result{Version: a.index}, nil
		}
		ng.freeze = FreezeState{}
	case cur.ID != "" && cur.ID != f.ID:
		return Result{Err: fmt.Errorf("%w: group %d is frozen by backup %s", kvd.ErrConflict, a.group, cur.ID)}, nil
	default:
		ng.freeze = FreezeState{ID: f.ID, Level: max(f.Level, cur.Level), Since: cur.Since, Writes: cur.Writes}
		if cur.ID == "" {
			ng.freeze.Since = a.now
		}
		if ng.freeze.Level == FreezeWrites && ng.freeze.Writes == 0 {
			ng.freeze.Writes = a.now
		}
	}
	return Result{Version: a.index}, a.setGate(&ng)
}

// restore applies a CmdRestore.
func (a *applier) restore(op *RestoreOp) (Result, error) {
	cur := a.gate.restore
	ng := *a.gate
	conflict := func(format string, args ...any) (Result, error) {
		return Result{Err: fmt.Errorf("%w: restore %s in group %d: %s", kvd.ErrConflict, op.ID, a.group, fmt.Sprintf(format, args...))}, nil
	}
	switch op.Op {
	case RestoreStage:
		switch {
		case cur.Sealed:
			return conflict("restore %s is loading", cur.ID)
		case op.Reset:
			if err := a.dropStaged(); err != nil {
				return Result{}, err
			}
			ng.restore = restoreState{ID: op.ID, Done: cur.Done}
		case cur.ID != op.ID:
			return conflict("its staging was replaced by restore %q", cur.ID)
		}
		for _, k := range op.Keys {
			if k.Key == "" {
				continue
			}
			if a.restoreB.b.Get([]byte(k.Key)) == nil {
				ng.restore.Staged++
			}
			if err := a.put(a.restoreB, []byte(k.Key), encodeRecord(0, k.Expires, k.Value)); err != nil {
				return Result{}, err
			}
		}
		return Result{Version: ng.restore.Staged}, a.setGate(&ng)
	case RestoreQuiesce:
		switch {
		case cur.Done == op.ID:
			return Result{}, nil
		case cur.ID != op.ID:
			return conflict("nothing of it is staged here")
		}
		ng.restore.Quiesced = true
		return Result{Version: cur.Staged}, a.setGate(&ng)
	case RestoreSeal:
		switch {
		case cur.Done == op.ID:
			return Result{}, nil
		case cur.ID != op.ID:
			return conflict("nothing of it is staged here")
		case cur.Sealed:
			return Result{Version: cur.Staged}, nil
		}
		if k, _ := a.locks.b.Cursor().First(); k != nil {
			return Result{Err: fmt.Errorf("%w: restore %s in group %d: transaction locks are held: it seals once they are released", kvd.ErrUnavailable, op.ID, a.group)}, nil
		}
		ng.restore.Quiesced, ng.restore.Sealed, ng.restore.Force = true, true, op.Force
		return Result{Version: cur.Staged}, a.setGate(&ng)
	case RestoreStep:
		switch {
		case cur.Done == op.ID:
			return Result{}, nil
		case cur.ID != op.ID || !cur.Sealed:
			return conflict("it is not sealed here")
		}
		return a.restoreStep(&ng)
	case RestoreAbort:
		switch {
		case cur.ID != op.ID:
			return Result{}, nil
		case cur.Sealed:
			return conflict("it is sealed: it can only finish")
		}
		if err := a.dropStaged(); err != nil {
			return Result{}, err
		}
		ng.restore = restoreState{Done: cur.Done}
		return Result{}, a.setGate(&ng)
	}
	return Result{Err: fmt.Errorf("%w: restore: unknown op %q", kvd.ErrInvalid, op.Op)}, nil
}

// restoreStep loads a bounded part of the staged keys (first dropping
// the group's own keys, under force) and answers how many are left.
func (a *applier) restoreStep(ng *gate) (Result, error) {
	budget, n := restoreStepBytes, 0
	if ng.restore.Force && !ng.restore.Cleared {
		var keys []string
		c := a.kv.b.Cursor()
		for k, v := c.First(); k != nil && budget > 0 && n < restoreStepKeys; k, v = c.Next() {
			keys = append(keys, string(k))
			budget -= len(k) + len(v)/16 // a delete writes no value
			n++
		}
		for _, k := range keys {
			if err := a.delKey(k); err != nil {
				return Result{}, err
			}
		}
		if len(keys) > 0 {
			return Result{Version: ng.restore.Staged + 1}, a.setGate(ng)
		}
		ng.restore.Cleared = true
	}
	type staged struct {
		key, val []byte
		exp      int64
	}
	var batch []staged
	c := a.restoreB.b.Cursor()
	for k, raw := c.First(); k != nil && budget > 0 && n < restoreStepKeys; k, raw = c.Next() {
		rec, _, err := unseal(a.restoreB.keys, tagRestore, k, raw)
		if err != nil {
			return Result{}, err
		}
		batch = append(batch, staged{key: append([]byte(nil), k...), val: append([]byte(nil), recValue(rec)...), exp: recExpires(rec)})
		budget -= len(k) + len(rec)
		n++
	}
	for _, s := range batch {
		if err := a.del(a.restoreB, s.key); err != nil {
			return Result{}, err
		}
		ng.restore.Staged--
		if s.exp != 0 && s.exp <= a.now {
			continue // expired meanwhile
		}
		if err := a.setKeyAt(string(s.key), s.val, s.exp); err != nil {
			return Result{}, err
		}
	}
	if k, _ := a.restoreB.b.Cursor().First(); k == nil {
		ng.restore = restoreState{Done: ng.restore.ID}
	} else if ng.restore.Staged == 0 {
		ng.restore.Staged = 1 // more is left than was counted
	}
	return Result{Version: ng.restore.Staged}, a.setGate(ng)
}

// dropStaged deletes every staged key.
func (a *applier) dropStaged() error {
	var keys [][]byte
	c := a.restoreB.b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := a.del(a.restoreB, k); err != nil {
			return err
		}
	}
	return nil
}

// setKeyAt writes key's value at the current version with an absolute
// expiry deadline (0: never), keeping the expiry index and the history
// in step.
func (a *applier) setKeyAt(key string, val []byte, exp int64) error {
	if err := a.clearExpiry(key); err != nil {
		return err
	}
	if exp != 0 {
		if err := a.expiry.Put(expiryKey(exp, key), nil); err != nil {
			return err
		}
	}
	if err := a.put(a.kv, []byte(key), encodeRecord(a.version(), exp, val)); err != nil {
		return err
	}
	return a.logChange(false, key, val)
}

// checkRestore checks a CmdRestore's keys.
func checkRestore(op *RestoreOp) error {
	if op.ID == "" {
		return fmt.Errorf("%w: restore: no id", kvd.ErrInvalid)
	}
	for _, k := range op.Keys {
		if k.Key == "" || len(k.Key) > kvd.MaxKeyBytesLimit || !utf8.ValidString(k.Key) || len(k.Value) > MaxValueBytes {
			return fmt.Errorf("%w: restore %s: a key is empty, too long, not UTF-8, or its value too large", kvd.ErrInvalid, op.ID)
		}
	}
	return nil
}

// Frozen returns the group's freeze (its zero value when none).
func (db *DB) Frozen() FreezeState {
	if g := db.gate.Load(); g != nil {
		return g.freeze
	}
	return FreezeState{}
}

// sealedErr answers a read while a restore loads the group.
func (db *DB) sealedErr() error {
	if g := db.gate.Load(); g != nil && g.restore.Sealed {
		return fmt.Errorf("%w: group %d %s: restore %s is loading", kvd.ErrUnavailable, db.opts.Group, pausedText, g.restore.ID)
	}
	return nil
}

// Restoring returns the restore staged or loading in this group ("" if
// none) and whether it sealed the group.
func (db *DB) Restoring() (id string, sealed bool) {
	if g := db.gate.Load(); g != nil {
		return g.restore.ID, g.restore.Sealed
	}
	return "", false
}

// BackupPart describes a snapshot's part of a backup.
type BackupPart struct {
	// Index is the snapshot's applied index.
	Index uint64
	// Freeze is the group's freeze in the snapshot.
	Freeze FreezeState
	// Locks counts the transaction locks held.
	Locks int
	// Served is the set of slots the group serves reads of.
	Served kvd.SlotSet
	// Restoring is a restore sealed in the group (loading), if any.
	Restoring string
}

// BackupPart returns what the snapshot holds for a backup.
func (s *Snapshot) BackupPart() (BackupPart, error) {
	p := BackupPart{Index: s.applied}
	err := guard(func() error {
		bs := bucketsOf(s.tx, s.keys)
		g, err := loadGate(bs.meta)
		if err != nil {
			return err
		}
		p.Freeze = g.freeze
		if g.restore.Sealed {
			p.Restoring = g.restore.ID
		}
		p.Locks = bs.locks.b.Stats().KeyN
		m, err := storedMap(bs.meta)
		if err != nil {
			return err
		}
		pl := placementOf(m)
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if pl == nil || s.group == 0 || pl.readable(s.group, sl) == nil {
				p.Served.Add(sl)
			}
		}
		return nil
	})
	if err != nil {
		return p, fmt.Errorf("backup part: %w", err)
	}
	return p, nil
}

// ForEachKey calls fn with every key of the served slots, in key order,
// except those expired at time now (Unix ns): its value (which aliases
// the snapshot's memory: copy it before fn returns) and expiry deadline
// (0: never). Every value's seal is checked.
func (s *Snapshot) ForEachKey(served *kvd.SlotSet, now int64, fn func(key string, val []byte, expires int64) error) error {
	return guard(func() error {
		c := s.tx.Bucket(bucketKV).Cursor()
		for k, raw := c.First(); k != nil; k, raw = c.Next() {
			if !served.Has(kvd.Slot(string(k))) {
				continue
			}
			rec, _, err := unseal(s.keys, tagKV, k, raw)
			if err != nil {
				return err
			}
			exp := recExpires(rec)
			if exp != 0 && exp <= now {
				continue
			}
			if err := fn(string(k), recValue(rec), exp); err != nil {
				return err
			}
		}
		return nil
	})
}
