package kvd

import (
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// SlotCount is the number of hash slots keys are spread over.
const SlotCount = 1024

// Slot returns the hash slot of key: crc32 (IEEE) of the key modulo
// SlotCount, or, when the key has a non-empty hash tag (the text between its
// first '{' and the first '}' after it), of the tag alone. Keys that share a
// tag share a slot, and therefore a group.
func Slot(key string) int {
	h := key
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			h = key[i+1 : i+1+j]
		}
	}
	// CRC-32 (IEEE) over the string byte by byte: keys are short, and
	// converting to []byte would allocate on every routed request.
	crc := ^uint32(0)
	for i := 0; i < len(h); i++ {
		crc = crc32.IEEETable[byte(crc)^h[i]] ^ (crc >> 8)
	}
	sum := ^crc
	return int(sum % SlotCount)
}

// Consistency is the consistency level of a read.
type Consistency string

// The read consistency levels of the contract.
const (
	// Linearizable reads are served by the group leader after it confirms
	// its leadership with a quorum and has applied everything committed
	// before the read arrived.
	Linearizable Consistency = "linearizable"
	// Follower reads are linearizable too: the serving replica asks the
	// leader for its commit index and waits until it has applied it.
	Follower Consistency = "follower"
	// Stale reads serve the local replica's state without a round trip.
	Stale Consistency = "stale"
)

// ParseConsistency parses a consistency level; the empty string means
// Linearizable.
func ParseConsistency(s string) (Consistency, error) {
	switch Consistency(s) {
	case "", Linearizable:
		return Linearizable, nil
	case Follower, Stale:
		return Consistency(s), nil
	}
	return "", fmt.Errorf("%w: consistency must be linearizable, follower or stale, not %q", ErrInvalid, s)
}

// Limits are the size limits enforced on requests before anything is
// proposed to Raft, so that no replica ever meets an entry it cannot apply.
type Limits struct {
	// MaxKeyBytes is the largest key, in bytes.
	MaxKeyBytes int
	// MaxValueBytes is the largest value, in bytes.
	MaxValueBytes int
	// MaxBodyBytes is the largest request body, in bytes.
	MaxBodyBytes int64
	// MaxTxnKeys is the largest number of distinct keys in a transaction.
	MaxTxnKeys int
	// MaxScanLimit is the largest page a scan may ask for.
	MaxScanLimit int
	// DefaultScanLimit is the page size of a scan that names none.
	DefaultScanLimit int
	// MaxScanBytes ends a scan page early once its values add up to this
	// many bytes, so a page of large values cannot exhaust memory.
	MaxScanBytes int
}

// DefaultLimits returns the limits of the contract.
func DefaultLimits() Limits {
	return Limits{
		MaxKeyBytes:      1024,
		MaxValueBytes:    1 << 20,
		MaxBodyBytes:     2 << 20,
		MaxTxnKeys:       128,
		MaxScanLimit:     10000,
		DefaultScanLimit: 1000,
		MaxScanBytes:     16 << 20,
	}
}

// MaxKeyBytesLimit is the largest key the store can hold: bbolt's limit
// (32768 bytes) less the 8 bytes an expiry index adds to a key.
const MaxKeyBytesLimit = 32760

// Validate checks that the limits can be enforced: a limit the store
// cannot honour would let every replica fail the same entry.
func (l Limits) Validate() error {
	switch {
	case l.MaxKeyBytes < 1 || l.MaxKeyBytes > MaxKeyBytesLimit:
		return fmt.Errorf("max key bytes must be between 1 and %d", MaxKeyBytesLimit)
	case l.MaxValueBytes < 0 || l.MaxValueBytes > 1<<30:
		return fmt.Errorf("max value bytes must be between 0 and %d", 1<<30)
	case l.MaxBodyBytes < 1:
		return fmt.Errorf("max body bytes must be positive")
	case l.MaxTxnKeys < 1:
		return fmt.Errorf("max transaction keys must be positive")
	case l.DefaultScanLimit < 1 || l.MaxScanLimit < l.DefaultScanLimit:
		return fmt.Errorf("scan limits must satisfy 1 <= default <= max")
	case l.MaxScanBytes < 1:
		return fmt.Errorf("max scan bytes must be positive")
	}
	return nil
}

// ValidateKey reports whether key is acceptable under l: 1..MaxKeyBytes bytes
// of valid UTF-8.
func (l Limits) ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > l.MaxKeyBytes:
		return fmt.Errorf("%w: key is %d bytes, the limit is %d", ErrTooLarge, len(key), l.MaxKeyBytes)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: key is not valid UTF-8", ErrInvalid)
	}
	return nil
}

// MaxTTL is the longest time to live a key may be given (100 years): a
// deadline past it would overflow the clock's range.
const MaxTTL = 100 * 365 * 24 * time.Hour

// ValidateTTL reports whether d is an acceptable time to live: positive
// and at most MaxTTL (0 means none).
func ValidateTTL(d time.Duration) error {
	if d < 0 || d > MaxTTL {
		return fmt.Errorf("%w: ttl must be positive and at most %v, not %v", ErrInvalid, MaxTTL, d)
	}
	return nil
}

// ValidateValue reports whether a value of n bytes is acceptable under l.
func (l Limits) ValidateValue(n int) error {
	if n > l.MaxValueBytes {
		return fmt.Errorf("%w: value is %d bytes, the limit is %d", ErrTooLarge, n, l.MaxValueBytes)
	}
	return nil
}

// Version is a key's version: the Raft index, in the key's group, of the
// entry that made its current value visible. 0 means "does not exist".
type Version = uint64

// Item is a key with its value and version.
type Item struct {
	Key     string
	Value   []byte
	Version Version
}

// CondKind is the kind of a write's precondition.
type CondKind uint8

// The condition kinds. Their numbers are part of the log format: never
// renumber them.
const (
	// CondNone always holds.
	CondNone CondKind = 0
	// CondVersionEq holds when the key's version equals Version (0: the
	// key does not exist). If-Match and If-None-Match: * map to it.
	CondVersionEq CondKind = 1
	// CondVersionNe holds when the key's version differs from Version
	// (If-None-Match with a version).
	CondVersionNe CondKind = 2
	// CondExists holds when the key exists (If-Match: *).
	CondExists CondKind = 3
)

// Cond is a precondition on a key's current version.
type Cond struct {
	Kind    CondKind
	Version Version
}

// Holds reports whether the condition holds for a key at version cur
// (0: absent).
func (c Cond) Holds(cur Version) bool {
	switch c.Kind {
	case CondVersionEq:
		return cur == c.Version
	case CondVersionNe:
		return cur != c.Version
	case CondExists:
		return cur != 0
	}
	return true
}

// ScanOptions select a range of keys: those with Prefix, at or after Start,
// and before End (each optional), at most Limit of them (0: no limit).
type ScanOptions struct {
	Prefix string
	Start  string
	End    string
	Limit  int
	// MaxBytes, if positive, ends a page early once its values add up to
	// this many bytes (a page always holds at least one item).
	MaxBytes int
}

// MergePages merges pages of one scan read from several groups: items
// (in any order) and each group's next key ("" if the group had no more).
// It returns the first limit keys in order and the next key, exact: no
// key is returned that sorts after a key some group did not return.
func MergePages(items []Item, nexts []string, limit int) ([]Item, string) {
	sort.Slice(items, func(i, j int) bool { return items[i].Key < items[j].Key })
	next := ""
	for _, n := range nexts {
		if n != "" && (next == "" || n < next) {
			next = n
		}
	}
	if next != "" {
		// A group stopped early (limit or byte budget) at next: keys
		// beyond it from other groups would skip its remaining keys.
		cut := sort.Search(len(items), func(i int) bool { return items[i].Key >= next })
		items = items[:cut]
	}
	if limit > 0 && len(items) > limit {
		next = items[limit].Key
		items = items[:limit]
	}
	return items, next
}
