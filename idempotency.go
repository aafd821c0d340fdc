package kvd

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"unicode/utf8"
)

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

// MaxIdempotencyKeyBytes bounds an idempotency key.
const MaxIdempotencyKeyBytes = 256

// PutIdem returns the idempotency claim of a put of value at key under
// o: nil when o names no idempotency key. Every path that takes a put
// (HTTP, in-process) builds the claim here, so one request fingerprints
// alike whichever way it came.
func PutIdem(o WriteOptions, key string, value []byte) (*Idem, error) {
	return writeIdem(o, "put", []byte(key), value)
}

// DeleteIdem returns the idempotency claim of a delete of key under o
// (see PutIdem).
func DeleteIdem(o WriteOptions, key string) (*Idem, error) {
	return writeIdem(o, "delete", []byte(key))
}

// TxnIdem returns the idempotency claim of transaction t under o (see
// PutIdem): its compares and ops, each field of each.
func TxnIdem(o WriteOptions, t Txn) (*Idem, error) {
	if o.IdempotencyKey == "" {
		return nil, nil
	}
	parts := [][]byte{[]byte("txn")}
	for _, c := range t.Compares {
		parts = append(parts, []byte("compare"), []byte(c.Key), compareFingerprint(c), c.Value)
	}
	for _, op := range t.Ops {
		parts = append(parts, []byte("op"), []byte(op.Op), []byte(op.Key), op.Value,
			[]byte(strconv.FormatInt(op.Delta, 10)), []byte(strconv.FormatInt(int64(op.TTL), 10)))
	}
	return idem(o, parts...)
}

// writeIdem fingerprints a put or delete: the operation, the write's
// condition and ttl, and parts.
func writeIdem(o WriteOptions, op string, parts ...[]byte) (*Idem, error) {
	if o.IdempotencyKey == "" {
		return nil, nil
	}
	cond := fmt.Sprintf("%d:%d:%d", o.Cond.Kind, o.Cond.Version, int64(o.TTL))
	return idem(o, append([][]byte{[]byte(op), []byte(cond)}, parts...)...)
}

func idem(o WriteOptions, parts ...[]byte) (*Idem, error) {
	k := o.IdempotencyKey
	if len(k) > MaxIdempotencyKeyBytes || !utf8.ValidString(k) {
		return nil, fmt.Errorf("%w: an idempotency key must be at most %d bytes of UTF-8", ErrInvalid, MaxIdempotencyKeyBytes)
	}
	if o.IdempotencyScope != "" {
		k = o.IdempotencyScope + "\x00" + k
	}
	return &Idem{Key: k, FP: Fingerprint(parts...)}, nil
}

// compareFingerprint names what a compare checks: which field is set,
// and its value (a value compare's value is a part of its own).
func compareFingerprint(c Compare) []byte {
	switch {
	case c.Version != nil:
		return []byte(fmt.Sprintf("v:%d", *c.Version))
	case c.Exists != nil:
		return []byte(fmt.Sprintf("e:%t", *c.Exists))
	case c.Value != nil:
		return []byte("value")
	}
	return []byte("-")
}
