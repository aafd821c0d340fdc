package store

import (
	"encoding/json"
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

// CheckCmd reports whether c may be proposed to a group: its keys are
// acceptable and owned by the group (owns, if not nil), its sizes within
// the store's hard limits, its deadlines within MaxTxnLifetime of now
// (Unix ns). The state machine applies the same checks with the entry's
// time and the stored map, so a command that passes here is applied the
// way it reads.
func CheckCmd(c *Cmd, now int64, owns func(key string) bool) error {
	var doc any
	if c.Kind.hasDocument() {
		var err error
		if doc, err = decodeDocument(c); err != nil {
			return err
		}
	}
	return checker{now: now, owns: owns}.cmd(c, doc)
}

// checker checks commands against the hard limits, the time and the
// slots a group owns.
type checker struct {
	now  int64
	owns func(key string) bool
}

func (k checker) cmd(c *Cmd, doc any) error {
	switch c.Kind {
	case CmdNoop, CmdHashCheck:
		return nil
	case CmdPut:
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
	case CmdDelete:
		if err := k.key("delete", c.Key); err != nil {
			return err
		}
		return k.idem(c.Idem)
	case CmdExpire:
		return k.key("expire", c.Key)
	case CmdSetMap:
		var m kvd.Map
		if err := json.Unmarshal(c.Data, &m); err != nil {
			return fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)
		}
		if err := m.Validate(); err != nil {
			return fmt.Errorf("%w: cluster map: %v", kvd.ErrInvalid, err)
		}
		return nil
	}
	switch p := doc.(type) {
	case *TxnPrepare:
		if err := k.txnID(p.ID); err != nil {
			return err
		}
		if p.RecordGroup == 0 {
			return fmt.Errorf("%w: transaction %s: no record group", kvd.ErrInvalid, p.ID)
		}
		if p.Deadline <= 0 || p.Deadline-k.now > int64(MaxTxnLifetime) {
			return fmt.Errorf("%w: transaction %s: deadline %s is not within %v of %s", kvd.ErrInvalid, p.ID,
				time.Unix(0, p.Deadline).UTC().Format(time.RFC3339), MaxTxnLifetime, time.Unix(0, k.now).UTC().Format(time.RFC3339))
		}
		if len(p.Participants) > kvd.SlotCount {
			return fmt.Errorf("%w: transaction %s: %d participants", kvd.ErrInvalid, p.ID, len(p.Participants))
		}
		for _, g := range p.Participants {
			if g == 0 {
				return fmt.Errorf("%w: transaction %s: participant group 0", kvd.ErrInvalid, p.ID)
			}
		}
		if len(p.Compares)+len(p.Ops) == 0 {
			return fmt.Errorf("%w: transaction %s: nothing to prepare", kvd.ErrInvalid, p.ID)
		}
		return k.txnBody(p.Compares, p.Ops)
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
		if k.owns != nil && !k.owns(p.Idem.Key) {
			return fmt.Errorf("%w: idempotency key %q is registered in the group of its own slot", kvd.ErrWrongGroup, p.Idem.Key)
		}
		return nil
	case *DedupGC:
		return nil
	}
	return fmt.Errorf("%w: unknown command kind %d", kvd.ErrInvalid, c.Kind)
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
	case k.owns != nil && !k.owns(key):
		return fmt.Errorf("%w: %s %q: the key's slot %d belongs to another group", kvd.ErrWrongGroup, what, key, kvd.Slot(key))
	}
	return nil
}

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

func (k checker) txnID(id string) error {
	if id == "" || len(id) > MaxTxnIDBytes {
		return fmt.Errorf("%w: transaction id must be 1 to %d bytes", kvd.ErrInvalid, MaxTxnIDBytes)
	}
	return nil
}

func (k checker) txnBody(compares []TxnCompare, ops []TxnOp) error {
	for _, c := range compares {
		if err := k.key("compare", c.Key); err != nil {
			return err
		}
		if len(c.Value) > MaxValueBytes {
			return fmt.Errorf("%w: compare on %q: value of %d bytes", kvd.ErrTooLarge, c.Key, len(c.Value))
		}
	}
	for _, op := range ops {
		switch op.Op {
		case "get", "put", "delete", "add":
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
	}
	return nil
}
