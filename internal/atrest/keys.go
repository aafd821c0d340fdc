package atrest

import (
	"errors"
	"slices"
	"sync/atomic"
)

// Keys is the ring of a key file, read again on Reload. A nil *Keys means
// no encryption: its Ring is nil.
type Keys struct {
	path string
	ring atomic.Pointer[Keyring]
}

// OpenKeys reads the key file at path.
func OpenKeys(path string) (*Keys, error) {
	r, err := LoadKeyFile(path)
	if err != nil {
		return nil, err
	}
	k := &Keys{path: path}
	k.ring.Store(r)
	return k, nil
}

// StaticKeys returns keys that never change: a ring held in memory.
func StaticKeys(r *Keyring) *Keys {
	k := &Keys{}
	k.ring.Store(r)
	return k
}

// Ring returns the ring as last read (nil if k is nil).
func (k *Keys) Ring() *Keyring {
	if k == nil {
		return nil
	}
	return k.ring.Load()
}

// Path returns the key file's path ("" for static keys).
func (k *Keys) Path() string {
	if k == nil {
		return ""
	}
	return k.path
}

// Replace makes r the ring in use.
func (k *Keys) Replace(r *Keyring) error {
	if k == nil || r == nil {
		return errors.New("no keys to replace")
	}
	k.ring.Store(r)
	return nil
}

// Reload reads the key file again and reports whether its keys changed.
// On an error the ring read before stays in use. A new ring must hold the
// old one's active key: data may already be sealed under it.
func (k *Keys) Reload() (bool, error) {
	if k == nil || k.path == "" {
		return false, nil
	}
	r, err := LoadKeyFile(k.path)
	if err != nil {
		return false, err
	}
	old := k.ring.Load()
	if slices.Equal(old.ids, r.ids) {
		return false, nil
	}
	k.ring.Store(r)
	return true, nil
}
