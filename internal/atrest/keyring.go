package atrest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// KeySize is the size of a key: AES-256.
const KeySize = 32

// MaxKeys bounds the keys a key file may hold.
const MaxKeys = 16

// Errors callers branch on.
var (
	// ErrUnknownKey means data is sealed under a key the ring does not
	// hold: the key file lacks a line it needs.
	ErrUnknownKey = errors.New("sealed under a key this node does not hold")
	// ErrCorrupt means sealed data failed to open: it was damaged, or
	// copied from elsewhere.
	ErrCorrupt = errors.New("encrypted data failed its authentication")
	// ErrTruncated means a sealed stream ends before its last chunk: it
	// was cut short. It also matches ErrCorrupt.
	ErrTruncated error = truncatedError{}
	// ErrNotSealed means data lacks the form of sealed data.
	ErrNotSealed = errors.New("not encrypted")
)

// KeyID names a key without revealing it.
type KeyID [8]byte

// String returns the id in hex.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// IDOf returns the id of key.
func IDOf(key []byte) KeyID {
	h := sha256.Sum256(append([]byte("kvd key id\x00"), key...))
	var id KeyID
	copy(id[:], h[:])
	return id
}

// Keyring is a set of keys, the first of which is active. It is immutable
// and safe for concurrent use.
type Keyring struct {
	raw   [][]byte
	ids   []KeyID // ids[0] is active
	aeads map[KeyID]cipher.AEAD
}

// NewKeyring returns a ring of keys, the first active. Each must be
// KeySize bytes, and none twice.
func NewKeyring(keys ...[]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("no key")
	}
	if len(keys) > MaxKeys {
		return nil, fmt.Errorf("%d keys, at most %d", len(keys), MaxKeys)
	}
	r := &Keyring{aeads: map[KeyID]cipher.AEAD{}}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("key %d is %d bytes, want %d", i+1, len(k), KeySize)
		}
		id := IDOf(k)
		if _, dup := r.aeads[id]; dup {
			return nil, fmt.Errorf("key %d is there twice", i+1)
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		r.raw = append(r.raw, bytes.Clone(k))
		r.ids = append(r.ids, id)
		r.aeads[id] = aead
	}
	return r, nil
}

// Active returns the id of the key that seals new data.
func (r *Keyring) Active() KeyID { return r.ids[0] }

// IDs returns the ids of the ring's keys, the active one first.
func (r *Keyring) IDs() []KeyID { return append([]KeyID(nil), r.ids...) }

// Names returns the ids of the ring's keys in hex, the active one first.
func (r *Keyring) Names() []string {
	out := make([]string, len(r.ids))
	for i, id := range r.ids {
		out[i] = id.String()
	}
	return out
}

// Keys returns copies of the ring's keys, the active one first, as a key
// file holds them.
func (r *Keyring) Keys() [][]byte {
	out := make([][]byte, len(r.raw))
	for i, k := range r.raw {
		out[i] = bytes.Clone(k)
	}
	return out
}

// Has reports whether the ring holds the key id.
func (r *Keyring) Has(id KeyID) bool { _, ok := r.aeads[id]; return ok }

func (r *Keyring) aead(id KeyID) (cipher.AEAD, error) {
	a, ok := r.aeads[id]
	if !ok {
		return nil, fmt.Errorf("key %s: %w", id, ErrUnknownKey)
	}
	return a, nil
}

// NewKey returns a random key.
func NewKey() []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand never fails on the systems Go supports
	}
	return k
}

// FormatKeyFile returns the content of a key file holding keys, the
// first active.
func FormatKeyFile(keys ...[]byte) []byte {
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ParseKeyFile reads the keys of a key file: one per line, 32 bytes in
// base64, the first active; blank lines and lines starting with '#' are
// skipped.
func ParseKeyFile(data []byte) ([][]byte, error) {
	var keys [][]byte
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			if k, err = base64.RawStdEncoding.DecodeString(line); err != nil {
				return nil, fmt.Errorf("line %d is not base64 (a key is %d random bytes in base64, as kvd rotate-key writes)", n+1, KeySize)
			}
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("line %d holds %d bytes, want %d (AES-256)", n+1, len(k), KeySize)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in the file")
	}
	return keys, nil
}

// LoadKeyFile reads a key file into a ring. The file must not be open to
// other users (mode 0600 or stricter), as ssh asks of a private key.
func LoadKeyFile(path string) (*Keyring, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("encryption key file %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("encryption key file %s has mode %v: others may read it; chmod 600 it", path, st.Mode().Perm())
	}
	if st.Size() > 64<<10 {
		return nil, fmt.Errorf("encryption key file %s is %d bytes: not a key file", path, st.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key file: %w", err)
	}
	keys, err := ParseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("encryption key file %s: %w", path, err)
	}
	r, err := NewKeyring(keys...)
	if err != nil {
		return nil, fmt.Errorf("encryption key file %s: %w", path, err)
	}
	return r, nil
}

// KeyFileMode is the mode key files are written with.
const KeyFileMode fs.FileMode = 0o600

type truncatedError struct{}

func (truncatedError) Error() string        { return "sealed stream cut short" }
func (truncatedError) Is(target error) bool { return target == ErrCorrupt }
