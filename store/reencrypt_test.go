package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
)

func keysOf(t *testing.T, keys ...[]byte) *atrest.Keys {
	t.Helper()
	r, err := atrest.NewKeyring(keys...)
	require.NoError(t, err)
	return atrest.StaticKeys(r)
}

func openWith(t *testing.T, path string, keys *atrest.Keys) *DB {
	t.Helper()
	o := DefaultOptions()
	o.Keys = keys
	db, err := Open(path, o)
	require.NoError(t, err)
	return db
}

const marker = "MARKER-3f9c1e"

// writeMarked applies puts, a transaction's intents and history that all
// carry the marker.
func writeMarked(t *testing.T, db *DB, from uint64) {
	t.Helper()
	for i := range 50 {
		r := applyOne(t, db, from+uint64(i), put(fmt.Sprintf("k%02d", i), marker+fmt.Sprint(i)))
		require.NoError(t, r[0].Err)
	}
}

func fileHas(t *testing.T, path, s string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.Contains(b, []byte(s))
}

// With keys, no value reaches the state file in the clear, and a value
// is read back, checked, only with a key that sealed it.
func TestStore_Encrypted_NoPlaintextOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	k1 := atrest.NewKey()
	db := openWith(t, path, keysOf(t, k1))
	writeMarked(t, db, 1)
	it, err := db.Get("k07")
	require.NoError(t, err)
	require.Equal(t, marker+"7", string(it.Value))
	report, err := db.Verify()
	require.NoError(t, err)
	hash := db.StateHash()
	require.NoError(t, db.Close())
	require.False(t, fileHas(t, path, marker), "a value in the clear in the state file")

	// Without the key, or with another, reads fail as a missing key, not
	// as damage.
	db = openWith(t, path, nil)
	_, err = db.Get("k07")
	require.ErrorIs(t, err, atrest.ErrUnknownKey)
	require.NoError(t, db.Close())
	db = openWith(t, path, keysOf(t, atrest.NewKey()))
	_, err = db.Get("k07")
	require.ErrorIs(t, err, atrest.ErrUnknownKey)
	require.NotErrorIs(t, err, ErrCorrupt)
	require.NoError(t, db.Close())

	// The same state unencrypted holds the same hash: replicas compare
	// hashes whatever their keys.
	plain := openTest(t)
	writeMarked(t, plain, 1)
	require.Equal(t, hash, plain.StateHash())
	require.Equal(t, report.Hash, hash)
}

// A rotation: with the new key first, values under the old one still
// read; Reencrypt brings every value under the new key, keeping the state
// hash, and records it; then the old key is no longer needed.
func TestStore_Reencrypt_MovesEveryValueToTheActiveKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	k1, k2 := atrest.NewKey(), atrest.NewKey()
	db := openWith(t, path, keysOf(t, k1))
	writeMarked(t, db, 1)
	n, err := db.Reencrypt(context.Background(), nil)
	require.NoError(t, err)
	require.Zero(t, n, "all under the active key already")
	id, ok, err := db.SealedUnder()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, atrest.IDOf(k1), id)
	require.NoError(t, db.Close())

	db = openWith(t, path, keysOf(t, k2, k1))
	// A disk short of room stops a pass before it writes anything.
	full := errors.New("no room")
	n, err = db.Reencrypt(context.Background(), func() error { return full })
	require.ErrorIs(t, err, full)
	require.Zero(t, n)
	_, ok, err = db.SealedUnder()
	require.NoError(t, err)
	require.True(t, ok)
	hash := db.StateHash()
	it, err := db.Get("k03")
	require.NoError(t, err)
	require.Equal(t, marker+"3", string(it.Value))
	applyOne(t, db, 100, put("new", marker+"new"))
	n, err = db.Reencrypt(context.Background(), nil)
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 50, "every old value rewritten (and their history)")
	id, _, err = db.SealedUnder()
	require.NoError(t, err)
	require.Equal(t, atrest.IDOf(k2), id)
	report, err := db.Verify()
	require.NoError(t, err, "the recorded hash still holds")
	require.Equal(t, report.Stored, report.Hash)
	require.NoError(t, db.Close())

	db = openWith(t, path, keysOf(t, k2))
	defer db.Close()
	require.NotEqual(t, uint64(0), hash)
	items, _, err := db.Scan(kvd.ScanOptions{})
	require.NoError(t, err, "nothing left under the old key")
	require.Len(t, items, 51)
	_, err = db.Verify()
	require.NoError(t, err)
}

// Turning encryption on for a state written in the clear: values read as
// they are, and Reencrypt encrypts them.
func TestStore_Reencrypt_EncryptsAPlainState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openWith(t, path, nil)
	writeMarked(t, db, 1)
	hash := db.StateHash()
	require.NoError(t, db.Close())
	k := atrest.NewKey()
	db = openWith(t, path, keysOf(t, k))
	_, ok, err := db.SealedUnder()
	require.NoError(t, err)
	require.False(t, ok)
	n, err := db.Reencrypt(context.Background(), nil)
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 50)
	require.Equal(t, hash, db.StateHash())
	_, err = db.Verify()
	require.NoError(t, err)
	require.NoError(t, db.Close())
	db = openWith(t, path, nil)
	defer db.Close()
	_, err = db.Get("k01")
	require.ErrorIs(t, err, atrest.ErrUnknownKey, "encrypted now")
}
