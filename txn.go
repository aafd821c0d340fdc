package kvd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Compare is one compare of a transaction: exactly one of Version, Value
// and Exists is set.
type Compare struct {
	Key     string
	Version *Version
	Value   []byte
	Exists  *bool
}

// VersionIs compares a key's version (0: absent).
func VersionIs(key string, v Version) Compare { return Compare{Key: key, Version: &v} }

// ValueIs compares a key's value.
func ValueIs(key string, value []byte) Compare {
	if value == nil {
		value = []byte{}
	}
	return Compare{Key: key, Value: value}
}

// Exists compares whether a key exists.
func Exists(key string, exists bool) Compare { return Compare{Key: key, Exists: &exists} }

// Op is one operation of a transaction: get, put, delete or add.
type Op struct {
	Op    string
	Key   string
	Value []byte
	// Delta is an add's increment.
	Delta int64
	// TTL, for a put or an add, makes the key vanish that long after the
	// commit.
	TTL time.Duration
}

// OpGet reads a key in a transaction.
func OpGet(key string) Op { return Op{Op: "get", Key: key} }

// OpPut writes a key in a transaction.
func OpPut(key string, value []byte) Op {
	if value == nil {
		value = []byte{}
	}
	return Op{Op: "put", Key: key, Value: value}
}

// OpPutTTL writes a key that vanishes ttl after the commit.
func OpPutTTL(key string, value []byte, ttl time.Duration) Op {
	op := OpPut(key, value)
	op.TTL = ttl
	return op
}

// OpDelete deletes a key in a transaction.
func OpDelete(key string) Op { return Op{Op: "delete", Key: key} }

// OpAdd adds delta to a decimal integer key in a transaction.
func OpAdd(key string, delta int64) Op { return Op{Op: "add", Key: key, Delta: delta} }

// OpAddTTL adds delta and (re)sets the key's time to live: a counter that
// vanishes ttl after its last change, such as a rate-limit window.
func OpAddTTL(key string, delta int64, ttl time.Duration) Op {
	op := OpAdd(key, delta)
	op.TTL = ttl
	return op
}

// AddWith is KV.Add for a KV whose Txn is txn: it sends the transaction
// AddTxn builds and reads the new value from its result. A failed
// condition is ErrPreconditionFailed, as for a conditional put.
func AddWith(ctx context.Context, txn func(context.Context, Txn, ...WriteOption) (TxnResponse, error), key string, delta int64, opts []WriteOption) (int64, error) {
	o := ApplyWriteOptions(opts)
	t, err := AddTxn(key, delta, o)
	if err != nil {
		return 0, err
	}
	resp, err := txn(ctx, t, WithIdempotencyKey(o.IdempotencyKey))
	if errors.Is(err, ErrCompareFailed) {
		return 0, fmt.Errorf("add %q: %w", key, ErrPreconditionFailed)
	}
	if err != nil {
		return 0, fmt.Errorf("add %q: %w", key, err)
	}
	if len(resp.Results) != 1 {
		return 0, fmt.Errorf("add %q: no result: %w", key, ErrUnknownOutcome)
	}
	n, err := strconv.ParseInt(string(resp.Results[0].Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("add %q: bad result %q: %w", key, resp.Results[0].Value, ErrUnknownOutcome)
	}
	return n, nil
}

// AddTxn is the transaction KV.Add sends: the add, carrying the options'
// ttl, behind the options' condition as a compare (a version-inequality
// condition has no compare and is refused).
func AddTxn(key string, delta int64, o WriteOptions) (Txn, error) {
	op := OpAdd(key, delta)
	if o.TTL < 0 {
		return Txn{}, fmt.Errorf("%w: add %q: negative ttl", ErrInvalid, key)
	}
	op.TTL = o.TTL
	t := Txn{Ops: []Op{op}}
	switch o.Cond.Kind {
	case CondNone:
	case CondVersionEq:
		t.Compares = []Compare{VersionIs(key, o.Cond.Version)}
	case CondExists:
		t.Compares = []Compare{Exists(key, true)}
	default:
		return Txn{}, fmt.Errorf("%w: add %q: only IfVersion, CreateOnly and IfExists conditions apply to an add", ErrInvalid, key)
	}
	return t, nil
}

// TxnOptions folds a transaction's options: only WithIdempotencyKey
// applies (conditions are compares, ttls are on ops), others are refused.
func TxnOptions(opts []WriteOption) (WriteOptions, error) {
	o := ApplyWriteOptions(opts)
	if o.TTL != 0 || o.Cond.Kind != CondNone {
		return o, fmt.Errorf("%w: a transaction takes conditions as compares and ttls on its ops, not as options", ErrInvalid)
	}
	return o, nil
}

// Txn is a transaction.
type Txn struct {
	Compares []Compare
	Ops      []Op
}

// OpResult answers one op of a committed transaction.
type OpResult struct {
	Op      string
	Key     string
	Found   bool
	Value   []byte
	Version Version
	Deleted bool
}

// TxnResponse is a transaction's answer.
type TxnResponse struct {
	Committed bool
	Results   []OpResult
	// Failed lists the compares that did not hold (with ErrCompareFailed).
	Failed []int
}
