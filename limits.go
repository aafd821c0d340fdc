package kvd

import (
	"fmt"
	"time"
	"unicode/utf8"
)

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
