package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
)

// Every value the store writes is sealed: a mark byte, a CRC-32C of the
// bucket, the key and the payload, then the payload. Reading a value
// checks its seal, so a value damaged on disk (a flipped bit, a torn page)
// is reported as corruption instead of being served. Values written before
// seals existed carry no mark and are read as they are.
//
//	sealed value: 0xFE | crc32c(tag, key, payload) (4 bytes, little endian) | payload
//
// The same checksums make up the state hash (see integrity.go): the sum of
// a mixed checksum per entry of the replicated buckets, kept up to date by
// every change, so two replicas at the same applied index must hold equal
// hashes, and a scrub that recomputes the sum from disk finds damage that
// no read has met yet.

// ErrCorrupt means stored data failed its checksum or could not be
// decoded: this replica's copy is damaged. It also matches
// kvd.ErrUnavailable, since another replica can serve the request.
var ErrCorrupt error = corruptError{}

type corruptError struct{}

func (corruptError) Error() string        { return "corrupt data" }
func (corruptError) Is(target error) bool { return target == kvd.ErrUnavailable }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Under encryption (Options.Keys), a value is sealed the same way, its
// payload then encrypted (see internal/atrest), bound to its bucket and
// key:
//
//	encrypted value: 0xFD | crc32c(tag, key, payload) (4 bytes) | atrest message
//
// The checksum is of the plaintext, so that replicas hold equal state
// hashes whatever key each value is under; it is checked after the
// payload is opened. The meta bucket (counters, the cluster map, the
// gate, token hashes: no client's values) is not encrypted.

// sealMark opens a sealed value. No unsealed value of any bucket starts
// with it (records start with their format byte, documents with '{' or
// '[', history events with 'p' or 'd', counters with a zero byte).
const sealMark = 0xFE

// sealSize is what a seal adds to a payload.
const sealSize = 5

// encryptedMark opens an encrypted sealed value; no unsealed value starts
// with it either.
const encryptedMark = 0xFD

// Bucket tags: they enter every checksum, so a value copied under another
// bucket or key fails its seal. Part of the on-disk format.
const (
	tagKV      byte = 1
	tagLocks   byte = 2
	tagTxnKeys byte = 3
	tagTxns    byte = 4
	tagDedup   byte = 5
	tagHistory byte = 6
	tagMeta    byte = 7
)

func checksum(tag byte, key, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, []byte{tag})
	c = crc32.Update(c, castagnoli, key)
	return crc32.Update(c, castagnoli, payload)
}

// sealAD is what an encrypted value is bound to: its bucket and key.
func sealAD(tag byte, key []byte) []byte { return append([]byte{tag}, key...) }

// seal returns the stored form of payload under key in the bucket tagged
// tag, encrypted under keys' active key if set, and its checksum.
func seal(keys *atrest.Keys, tag byte, key, payload []byte) ([]byte, uint32) {
	c := checksum(tag, key, payload)
	if ring := keys.Ring(); ring != nil {
		out := make([]byte, sealSize, sealSize+atrest.Overhead+len(payload))
		out[0] = encryptedMark
		binary.LittleEndian.PutUint32(out[1:5], c)
		return ring.Seal(out, payload, sealAD(tag, key)), c
	}
	out := make([]byte, sealSize+len(payload))
	out[0] = sealMark
	binary.LittleEndian.PutUint32(out[1:5], c)
	copy(out[sealSize:], payload)
	return out, c
}

// unseal checks a stored value and returns its payload (aliasing raw,
// unless it was encrypted) and checksum. A value without a seal (written
// before seals existed) is returned as it is, with its checksum computed.
// An encrypted value is opened with keys: one under a key they do not hold
// fails with atrest.ErrUnknownKey (the key file lacks a line, the data is
// not damaged), one that fails to open is corrupt.
func unseal(keys *atrest.Keys, tag byte, key, raw []byte) ([]byte, uint32, error) {
	if len(raw) == 0 || (raw[0] != sealMark && raw[0] != encryptedMark) {
		return raw, checksum(tag, key, raw), nil
	}
	if len(raw) < sealSize {
		return nil, 0, corruptf("value of %q in bucket %d: truncated seal", key, tag)
	}
	want := binary.LittleEndian.Uint32(raw[1:5])
	payload := raw[sealSize:]
	if raw[0] == encryptedMark {
		ring := keys.Ring()
		if ring == nil {
			id, _ := atrest.SealedWith(payload)
			return nil, 0, fmt.Errorf("value of %q in bucket %d is encrypted (key %s) and the store has no key: %w", key, tag, id, atrest.ErrUnknownKey)
		}
		plain, err := ring.Open(nil, payload, sealAD(tag, key))
		switch {
		case errors.Is(err, atrest.ErrUnknownKey):
			return nil, 0, fmt.Errorf("value of %q in bucket %d: %w", key, tag, err)
		case err != nil:
			return nil, 0, corruptf("value of %q in bucket %d: %v", key, tag, err)
		}
		payload = plain
	}
	if got := checksum(tag, key, payload); got != want {
		return nil, 0, corruptf("value of %q in bucket %d: checksum %08x, stored %08x", key, tag, got, want)
	}
	return payload, want, nil
}

// sealedUnder reports whether raw is sealed as keys would seal it now:
// encrypted under the active key, or not encrypted when keys are unset.
func sealedUnder(keys *atrest.Keys, raw []byte) bool {
	ring := keys.Ring()
	if ring == nil {
		return len(raw) == 0 || raw[0] != encryptedMark
	}
	if len(raw) < sealSize || raw[0] != encryptedMark {
		return false
	}
	id, ok := atrest.SealedWith(raw[sealSize:])
	return ok && id == ring.Active()
}

// storedChecksum returns the checksum a stored value carries (computed for
// an unsealed one), without checking it: enough to take an old value out
// of the state hash when it is overwritten.
func storedChecksum(tag byte, key, raw []byte) uint32 {
	if len(raw) >= sealSize && (raw[0] == sealMark || raw[0] == encryptedMark) {
		return binary.LittleEndian.Uint32(raw[1:5])
	}
	return checksum(tag, key, raw)
}

// sealOverhead returns how many bytes of a stored value are its seal.
func sealOverhead(raw []byte) int {
	switch {
	case len(raw) >= sealSize+atrest.Overhead && raw[0] == encryptedMark:
		return sealSize + atrest.Overhead
	case len(raw) >= sealSize && raw[0] == sealMark:
		return sealSize
	}
	return 0
}

// bucket is a bbolt bucket whose values are sealed.
type bucket struct {
	b   *bolt.Bucket
	tag byte
	// keys encrypt the bucket's values (nil: not encrypted).
	keys *atrest.Keys
	// hashed buckets count in the state hash.
	hashed bool
}

// get returns the payload stored under key (nil if absent), checked. It
// aliases bbolt's memory: valid until the transaction ends.
func (b bucket) get(key []byte) ([]byte, error) {
	raw := b.b.Get(key)
	if raw == nil {
		return nil, nil
	}
	p, _, err := unseal(b.keys, b.tag, key, raw)
	return p, err
}

// forEach calls fn with every key and checked payload, in key order.
func (b bucket) forEach(fn func(k, v []byte) error) error {
	return b.b.ForEach(func(k, raw []byte) error {
		p, _, err := unseal(b.keys, b.tag, k, raw)
		if err != nil {
			return err
		}
		return fn(k, p)
	})
}

// cursor walks a sealed bucket, checking each value it returns.
type cursor struct {
	c    *bolt.Cursor
	tag  byte
	keys *atrest.Keys
	err  error
}

func (b bucket) cursor() *cursor { return &cursor{c: b.b.Cursor(), tag: b.tag, keys: b.keys} }

func (c *cursor) check(k, raw []byte) ([]byte, []byte) {
	if k == nil {
		return nil, nil
	}
	p, _, err := unseal(c.keys, c.tag, k, raw)
	if err != nil {
		c.err = err
		return nil, nil
	}
	return k, p
}

func (c *cursor) seek(key []byte) ([]byte, []byte) { return c.check(c.c.Seek(key)) }
func (c *cursor) next() ([]byte, []byte)           { return c.check(c.c.Next()) }

// entryHash mixes one entry's checksum into a 64-bit term of the state
// hash (splitmix64's finaliser): the state hash is the sum of these.
func entryHash(tag byte, crc uint32) uint64 {
	z := uint64(tag)<<32 | uint64(crc)
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// isCorrupt reports whether err says stored data is damaged.
func isCorrupt(err error) bool { return errors.Is(err, ErrCorrupt) }
