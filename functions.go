package kvd

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// KV is the store as a program (a serverless function, a service, a test)
// sees it. Two implementations share these semantics and errors: the Go
// client (client.Client), which talks to a cluster, and the embedded store
// (embed.Store), which runs a single node in-process. Code written against
// KV runs unchanged against either.
//
// Errors match the package's sentinel errors under errors.Is:
// ErrNotFound, ErrPreconditionFailed, ErrCompareFailed, ErrConflict,
// ErrNotANumber, ErrCompacted, ErrIdempotencyMismatch, ErrInvalid,
// ErrTooLarge, ErrUnavailable (nothing applied) and ErrUnknownOutcome (a
// write may or may not have applied; retry it only with an idempotency
// key).
type KV interface {
	// Get reads a key.
	Get(ctx context.Context, key string, opts ...ReadOption) (Item, error)
	// Put writes a key and returns its new version.
	Put(ctx context.Context, key string, value []byte, opts ...WriteOption) (Version, error)
	// Delete removes a key; it reports whether the key existed.
	Delete(ctx context.Context, key string, opts ...WriteOption) (bool, error)
	// Scan returns a page of keys in order.
	Scan(ctx context.Context, o ScanOptions, opts ...ReadOption) (Page, error)
	// Txn runs a transaction: if every compare holds, all ops apply,
	// atomically, across any keys. A transaction that does not commit
	// returns an error matching ErrCompareFailed or ErrConflict.
	Txn(ctx context.Context, t Txn, opts ...WriteOption) (TxnResponse, error)
	// Add adds delta to the decimal integer stored at key (absent counts
	// as 0) and returns the new value.
	Add(ctx context.Context, key string, delta int64, opts ...WriteOption) (int64, error)
	// Watch streams the changes to keys with prefix, from the position
	// since (a cursor from an earlier event; "" means from now).
	Watch(ctx context.Context, prefix, since string) (Watcher, error)
	// Close releases the store.
	Close() error
}

// ReadOptions adjust a read.
type ReadOptions struct {
	Consistency Consistency
}

// ReadOption sets a read option.
type ReadOption func(*ReadOptions)

// WithConsistency sets a read's consistency level.
func WithConsistency(c Consistency) ReadOption { return func(o *ReadOptions) { o.Consistency = c } }

// WriteOptions adjust a write.
type WriteOptions struct {
	// Cond is the write's precondition.
	Cond Cond
	// TTL, if positive, makes the key vanish that long after the write.
	TTL time.Duration
	// IdempotencyKey, if set, makes a repeat of the same request within
	// the retention window return the first outcome instead of applying
	// again.
	IdempotencyKey string
}

// WriteOption sets a write option.
type WriteOption func(*WriteOptions)

// IfVersion makes a write conditional on the key's version (0: absent).
func IfVersion(v Version) WriteOption {
	return func(o *WriteOptions) { o.Cond = Cond{Kind: CondVersionEq, Version: v} }
}

// CreateOnly makes a put succeed only if the key does not exist.
func CreateOnly() WriteOption { return IfVersion(0) }

// IfExists makes a write succeed only if the key exists.
func IfExists() WriteOption { return func(o *WriteOptions) { o.Cond = Cond{Kind: CondExists} } }

// WithTTL makes the key of a put or an add vanish d after the write (a
// replicated delete).
func WithTTL(d time.Duration) WriteOption { return func(o *WriteOptions) { o.TTL = d } }

// WithIdempotencyKey names a write so a retry returns its first outcome.
func WithIdempotencyKey(k string) WriteOption { return func(o *WriteOptions) { o.IdempotencyKey = k } }

// ApplyWriteOptions folds options into WriteOptions.
func ApplyWriteOptions(opts []WriteOption) WriteOptions {
	var o WriteOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// ApplyReadOptions folds options into ReadOptions, starting from def.
func ApplyReadOptions(def Consistency, opts []ReadOption) ReadOptions {
	o := ReadOptions{Consistency: def}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Page is one page of a scan.
type Page struct {
	Items []Item
	// More is set when keys follow; Next is the start of the next page.
	More bool
	Next string
}

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

// Event is one change seen by a watch.
type Event struct {
	// Type is "put" or "delete" (expiry is a delete).
	Type    string
	Key     string
	Value   []byte
	Version Version
	// Cursor resumes a watch right after this event.
	Cursor string
}

// Watcher delivers a watch's events, in order per key.
type Watcher interface {
	// Next waits for the next event. An error matching ErrCompacted means
	// the watch started (or fell) behind the retained history.
	Next(ctx context.Context) (Event, error)
	// Close ends the watch.
	Close() error
}

// Idem names an idempotent request: the caller's key and a fingerprint
// of the request, so a different request reusing the key is told apart.
type Idem struct {
	Key string `json:"key"`
	FP  []byte `json:"fp"`
}

// Fingerprint hashes the parts of a request into an idempotency
// fingerprint.
func Fingerprint(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}
