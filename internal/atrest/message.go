package atrest

import (
	"crypto/rand"
	"fmt"
)

// A sealed message starts with these two bytes.
const (
	msgMark    = 0xEC
	msgVersion = 0x01
)

const (
	nonceSize = 12
	tagSize   = 16
	msgHeader = 2 + len(KeyID{}) + nonceSize
)

// Overhead is what sealing adds to a message.
const Overhead = msgHeader + tagSize

// IsSealed reports whether b has the form of a sealed message.
func IsSealed(b []byte) bool {
	return len(b) >= Overhead && b[0] == msgMark && b[1] == msgVersion
}

// SealedWith returns the id of the key a sealed message is under.
func SealedWith(b []byte) (KeyID, bool) {
	var id KeyID
	if !IsSealed(b) {
		return id, false
	}
	copy(id[:], b[2:])
	return id, true
}

// Seal appends to dst plain sealed under the active key, bound to ad
// (associated data: where the message lives), and returns the result.
func (r *Keyring) Seal(dst, plain, ad []byte) []byte {
	id := r.Active()
	aead := r.aeads[id]
	out := append(dst, msgMark, msgVersion)
	out = append(out, id[:]...)
	nonce := len(out)
	out = append(out, make([]byte, nonceSize)...)
	if _, err := rand.Read(out[nonce:]); err != nil {
		panic(err)
	}
	return aead.Seal(out, out[nonce:nonce+nonceSize], plain, ad)
}

// Open appends to dst the message sealed in b with ad, and returns the
// result. It fails with ErrNotSealed, ErrUnknownKey or ErrCorrupt.
func (r *Keyring) Open(dst, b, ad []byte) ([]byte, error) {
	id, ok := SealedWith(b)
	if !ok {
		return nil, ErrNotSealed
	}
	aead, err := r.aead(id)
	if err != nil {
		return nil, err
	}
	out, err := aead.Open(dst, b[msgHeader-nonceSize:msgHeader], b[msgHeader:], ad)
	if err != nil {
		return nil, fmt.Errorf("message under key %s: %w", id, ErrCorrupt)
	}
	return out, nil
}
