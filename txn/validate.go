package txn

import (
	"fmt"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
)

// Validate checks a request against the limits and the rules: at least
// one op or compare, known ops, one kind of compare each, no key written
// twice or read twice, at most MaxTxnKeys distinct keys.
func Validate(req Request, l kvd.Limits) error {
	if len(req.Ops) == 0 && len(req.Compares) == 0 {
		return fmt.Errorf("%w: a transaction needs at least one op or compare", kvd.ErrInvalid)
	}
	keys := map[string]bool{}
	for i, cmp := range req.Compares {
		if err := l.ValidateKey(cmp.Key); err != nil {
			return fmt.Errorf("compare %d: %w", i, err)
		}
		n := 0
		if cmp.Version != nil {
			n++
		}
		if cmp.Value != nil {
			n++
		}
		if cmp.Exists != nil {
			n++
		}
		if n != 1 {
			return fmt.Errorf("%w: compare %d must have exactly one of version, value and exists", kvd.ErrInvalid, i)
		}
		if err := l.ValidateValue(len(cmp.Value)); err != nil {
			return fmt.Errorf("compare %d: %w", i, err)
		}
		keys[cmp.Key] = true
	}
	written, read := map[string]bool{}, map[string]bool{}
	for i, op := range req.Ops {
		if err := l.ValidateKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if op.TTL < 0 || (op.TTL > 0 && op.Op != "put" && op.Op != "add") {
			return fmt.Errorf("%w: op %d: a ttl is for puts and adds, and positive", kvd.ErrInvalid, i)
		}
		if err := kvd.ValidateTTL(op.TTL); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if op.Delta != 0 && op.Op != "add" {
			return fmt.Errorf("%w: op %d: a delta is for adds", kvd.ErrInvalid, i)
		}
		switch op.Op {
		case "get":
			// A second get would answer the same again: all of a
			// transaction's gets read at one point.
			if read[op.Key] {
				return fmt.Errorf("%w: op %d reads %q a second time; all gets read at the same point, so the first answers for both", kvd.ErrInvalid, i, op.Key)
			}
			read[op.Key] = true
		case "put", "delete", "add":
			if err := l.ValidateValue(len(op.Value)); err != nil {
				return fmt.Errorf("op %d: %w", i, err)
			}
			if written[op.Key] {
				return fmt.Errorf("%w: op %d writes %q a second time", kvd.ErrInvalid, i, op.Key)
			}
			written[op.Key] = true
		default:
			return fmt.Errorf("%w: op %d: unknown op %q (get, put, delete, add)", kvd.ErrInvalid, i, op.Op)
		}
		if !utf8.ValidString(op.Key) {
			return fmt.Errorf("%w: op %d: key is not valid UTF-8", kvd.ErrInvalid, i)
		}
		keys[op.Key] = true
	}
	if len(keys) > l.MaxTxnKeys {
		return fmt.Errorf("%w: %d keys, the limit is %d", kvd.ErrTooLarge, len(keys), l.MaxTxnKeys)
	}
	return nil
}
