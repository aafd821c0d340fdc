package kvd

import (
	"context"
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
	// IdempotencyScope, if set, names whose idempotency keys these are
	// (with auth, the token's name): keys of different scopes never
	// meet, so one client cannot learn or take another's.
	IdempotencyScope string
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
