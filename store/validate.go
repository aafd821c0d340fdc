package store

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
)

// Hard limits the state machine enforces on every command it applies,
// whatever the node's configured limits (which are never larger and are
// enforced before proposing). They keep a command that reached the log by
// any other way (a forged request, a bug, a newer node) from writing what
// bbolt refuses, locking a key for ever or expiring a key at once: such a
// command is answered kvd.ErrInvalid on every replica alike, and nothing
// is written.
const (
	// MaxValueBytes is the largest value the store writes.
	MaxValueBytes = 1 << 30
	// MaxIdemKeyBytes is the longest idempotency key.
	MaxIdemKeyBytes = 256
	// MaxTxnIDBytes is the longest transaction id.
	MaxTxnIDBytes = 64
	// MaxTxnLifetime bounds how far past the entry's time a transaction's
	// deadline (and so its locks') may lie.
	MaxTxnLifetime = 10 * time.Minute
	// maxFingerprintBytes is the longest idempotency fingerprint.
	maxFingerprintBytes = 64
)

// CheckCmd reports whether c may be proposed to this replica's group:
// its keys are acceptable and, by the stored map, owned by the group, the
// groups it names are the map's, its sizes within the store's hard
// limits (and within limits, if given: a node's own, which a coordinator
// applies to the transactions it runs), its deadlines within
// MaxTxnLifetime of now (Unix ns). The state machine applies the same
// checks (but the node's limits) with the entry's time, so a command that
// passes here is applied the way it reads. It returns the command's
// decoded document (nil for a command without one).
func (db *DB) CheckCmd(c *Cmd, now int64, limits *kvd.Limits) (any, error) {
	doc, err := decodeDocument(c)
	if err != nil {
		return nil, err
	}
	k := checker{now: now, limits: limits}
	if db.opts.Group != 0 {
		k.group, k.placement = db.opts.Group, db.placement.Load()
	}
	return doc, k.cmd(c, doc)
}

// checker checks commands against the hard limits, the time and the
// map: the slots of group (no check without a placement) and the groups
// there are; and a transaction's keys and values against limits, if set.
type checker struct {
	now       int64
	group     kvd.GroupID
	placement *placement
	limits    *kvd.Limits
}

// owns tells whether the checked group may write key now: nil, or
// kvd.ErrWrongGroup, or kvd.ErrUnavailable while a move hands the key's
// slot off.
func (k checker) owns(key string) error {
	if k.placement == nil {
		return nil
	}
	return k.placement.writable(k.group, kvd.Slot(key))
}

// known checks that a command names a group of the map: a lock or record
// naming another would wait on a group no one can ask.
func (k checker) known(what string, g kvd.GroupID) error {
	if g == 0 {
		return fmt.Errorf("%w: %s: group 0", kvd.ErrInvalid, what)
	}
	if k.placement != nil && !k.placement.groups[g] {
		return fmt.Errorf("%w: %s: group %d is not in the cluster map", kvd.ErrInvalid, what, g)
	}
	return nil
}

// cmd checks command c, whose decoded document is doc (nil for a command
// without one).
func (k checker) cmd(c *Cmd, doc any) error {
	switch c.Kind {
	case CmdNoop, CmdHashCheck:
		return nil
	case CmdPut:
		return k.put(c)
	case CmdDelete:
		if err := k.key("delete", c.Key); err != nil {
			return err
		}
		return k.idem(c.Idem)
	case CmdExpire:
		return k.key("expire", c.Key)
	case CmdSetMap, CmdChangeMap:
		return nil // decoded and validated where it is applied
	}
	switch p := doc.(type) {
	case *TxnPrepare:
		return k.prepare(p)
	case *TxnDecide:
		return k.txnID(p.ID)
	case *TxnResolve:
		return k.txnID(p.ID)
	case *TxnRecover:
		return k.txnID(p.ID)
	case *TxnForget:
		return k.txnID(p.ID)
	case *TxnOnePhase:
		if err := k.txnBody(p.Compares, p.Ops); err != nil {
			return err
		}
		return k.idem(p.Idem)
	case *DedupClaim:
		if err := k.txnID(p.Txn); err != nil {
			return err
		}
		return k.idem(&p.Idem)
	case *DedupDone:
		if p.Txn != "" {
			if err := k.txnID(p.Txn); err != nil {
				return err
			}
		}
		return k.idem(&p.Idem)
	case *DedupRegister:
		if err := k.idem(&p.Idem); err != nil {
			return err
		}
		if err := k.owns(p.Idem.Key); err != nil {
			return fmt.Errorf("idempotency key %q is registered in the group of its own slot: %w", p.Idem.Key, err)
		}
		return nil
	case *DedupGC:
		return nil
	case *MoveIngest:
		for _, mk := range p.Keys {
			if mk.Key == "" || len(mk.Key) > kvd.MaxKeyBytesLimit || !utf8.ValidString(mk.Key) || len(mk.Value) > MaxValueBytes {
				return fmt.Errorf("%w: move %s: a copied key is empty, too long, not UTF-8, or its value too large", kvd.ErrInvalid, p.Move)
			}
		}
		return nil
	case *DropKeys:
		return nil
	case *Freeze:
		if p.Level < FreezeLift || p.Level > FreezeWrites || (p.Level != FreezeLift && p.ID == "") {
			return fmt.Errorf("%w: freeze: level %d, id %q", kvd.ErrInvalid, p.Level, p.ID)
		}
		return nil
	case *RestoreOp:
		return checkRestore(p)
	case *TokenOp:
		return checkTokenOp(p)
	}
	return fmt.Errorf("%w: unknown command kind %d", kvd.ErrInvalid, c.Kind)
}

// put checks a CmdPut.
func (k checker) put(c *Cmd) error {
	if err := k.key("put", c.Key); err != nil {
		return err
	}
	if len(c.Value) > MaxValueBytes {
		return fmt.Errorf("%w: put %q: value of %d bytes", kvd.ErrTooLarge, c.Key, len(c.Value))
	}
	if err := kvd.ValidateTTL(time.Duration(c.TTL)); err != nil {
		return fmt.Errorf("put %q: %w", c.Key, err)
	}
	return k.idem(c.Idem)
}

// prepare checks a transaction's prepare: the groups it names, its
// deadline, and its compares and ops.
func (k checker) prepare(p *TxnPrepare) error {
	if err := k.txnID(p.ID); err != nil {
		return err
	}
	if err := k.known("transaction "+p.ID+"'s record", p.RecordGroup); err != nil {
		return err
	}
	if p.Deadline <= 0 || p.Deadline-k.now > int64(MaxTxnLifetime) {
		return fmt.Errorf("%w: transaction %s: deadline %s is not within %v of %s", kvd.ErrInvalid, p.ID,
			time.Unix(0, p.Deadline).UTC().Format(time.RFC3339), MaxTxnLifetime, time.Unix(0, k.now).UTC().Format(time.RFC3339))
	}
	if len(p.Participants) > kvd.SlotCount {
		return fmt.Errorf("%w: transaction %s: %d participants", kvd.ErrInvalid, p.ID, len(p.Participants))
	}
	if len(p.Participants) > 0 && k.group != 0 && p.RecordGroup != k.group {
		// Only the record's group learns the participants.
		return fmt.Errorf("%w: transaction %s: participants sent to group %d, not to the record's group %d", kvd.ErrInvalid, p.ID, k.group, p.RecordGroup)
	}
	for _, g := range p.Participants {
		if err := k.known("transaction "+p.ID+"'s participant", g); err != nil {
			return err
		}
	}
	if len(p.Compares)+len(p.Ops) == 0 {
		return fmt.Errorf("%w: transaction %s: nothing to prepare", kvd.ErrInvalid, p.ID)
	}
	return k.txnBody(p.Compares, p.Ops)
}

// key checks a data key: bbolt accepts it, and it belongs here.
func (k checker) key(what, key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: %s: empty key", kvd.ErrInvalid, what)
	case len(key) > kvd.MaxKeyBytesLimit:
		return fmt.Errorf("%w: %s: key of %d bytes", kvd.ErrTooLarge, what, len(key))
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: %s: key is not valid UTF-8", kvd.ErrInvalid, what)
	}
	if err := k.owns(key); err != nil {
		return fmt.Errorf("%s %q: %w", what, key, err)
	}
	return nil
}

// idem checks an idempotency key and fingerprint, if any.
func (k checker) idem(i *Idem) error {
	if i == nil {
		return nil
	}
	if i.Key == "" || len(i.Key) > MaxIdemKeyBytes {
		return fmt.Errorf("%w: idempotency key must be 1 to %d bytes", kvd.ErrInvalid, MaxIdemKeyBytes)
	}
	if len(i.FP) > maxFingerprintBytes {
		return fmt.Errorf("%w: idempotency fingerprint of %d bytes", kvd.ErrInvalid, len(i.FP))
	}
	return nil
}

// txnID checks a transaction id.
func (k checker) txnID(id string) error {
	if id == "" || len(id) > MaxTxnIDBytes {
		return fmt.Errorf("%w: transaction id must be 1 to %d bytes", kvd.ErrInvalid, MaxTxnIDBytes)
	}
	return nil
}

// txnBody checks a transaction's compares and ops: their keys and values,
// the ops' kinds, no key written twice, and the node's limits if set.
func (k checker) txnBody(compares []TxnCompare, ops []TxnOp) error {
	keys := make(map[string]bool, len(compares)+len(ops))
	for _, c := range compares {
		if err := k.key("compare", c.Key); err != nil {
			return err
		}
		if len(c.Value) > MaxValueBytes {
			return fmt.Errorf("%w: compare on %q: value of %d bytes", kvd.ErrTooLarge, c.Key, len(c.Value))
		}
		if err := k.withinLimits(c.Key, len(c.Value)); err != nil {
			return fmt.Errorf("compare on %q: %w", c.Key, err)
		}
		keys[c.Key] = true
	}
	written := make(map[string]bool, len(ops))
	for _, op := range ops {
		switch op.Op {
		case "get":
		case "put", "delete", "add":
			// Two writes of one key would leave the outcome to the order
			// of applying them, and release the key's lock twice.
			if written[op.Key] {
				return fmt.Errorf("%w: %s %q: the key is written twice", kvd.ErrInvalid, op.Op, op.Key)
			}
			written[op.Key] = true
		default:
			return fmt.Errorf("%w: unknown op %q", kvd.ErrInvalid, op.Op)
		}
		if err := k.key(op.Op, op.Key); err != nil {
			return err
		}
		if len(op.Value) > MaxValueBytes {
			return fmt.Errorf("%w: %s %q: value of %d bytes", kvd.ErrTooLarge, op.Op, op.Key, len(op.Value))
		}
		if err := kvd.ValidateTTL(time.Duration(op.TTL)); err != nil {
			return fmt.Errorf("%s %q: %w", op.Op, op.Key, err)
		}
		if err := k.withinLimits(op.Key, len(op.Value)); err != nil {
			return fmt.Errorf("%s %q: %w", op.Op, op.Key, err)
		}
		keys[op.Key] = true
	}
	if k.limits != nil && len(keys) > k.limits.MaxTxnKeys {
		return fmt.Errorf("%w: %d keys, the limit is %d", kvd.ErrTooLarge, len(keys), k.limits.MaxTxnKeys)
	}
	return nil
}

// withinLimits checks a key and a value's size against the node's limits,
// if the checker has them.
func (k checker) withinLimits(key string, valueLen int) error {
	if k.limits == nil {
		return nil
	}
	if err := k.limits.ValidateKey(key); err != nil {
		return err
	}
	return k.limits.ValidateValue(valueLen)
}
