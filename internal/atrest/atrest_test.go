package atrest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func ring(t *testing.T, keys ...[]byte) *Keyring {
	t.Helper()
	r, err := NewKeyring(keys...)
	require.NoError(t, err)
	return r
}

func TestMessage_OpensOnlyWithItsKeyAndPlace(t *testing.T) {
	k1, k2 := NewKey(), NewKey()
	r1 := ring(t, k1)
	sealed := r1.Seal(nil, []byte("secret marker"), []byte("kv/a"))
	require.True(t, IsSealed(sealed))
	require.NotContains(t, string(sealed), "secret marker")
	id, ok := SealedWith(sealed)
	require.True(t, ok)
	require.Equal(t, IDOf(k1), id)

	got, err := r1.Open(nil, sealed, []byte("kv/a"))
	require.NoError(t, err)
	require.Equal(t, "secret marker", string(got))
	_, err = r1.Open(nil, sealed, []byte("kv/b"))
	require.ErrorIs(t, err, ErrCorrupt, "another place")
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	_, err = r1.Open(nil, flipped, []byte("kv/a"))
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = ring(t, k2).Open(nil, sealed, []byte("kv/a"))
	require.ErrorIs(t, err, ErrUnknownKey)
	_, err = r1.Open(nil, []byte("plain"), nil)
	require.ErrorIs(t, err, ErrNotSealed)

	// After a rotation the new key seals; the old one still opens.
	r21 := ring(t, k2, k1)
	got, err = r21.Open(nil, sealed, []byte("kv/a"))
	require.NoError(t, err)
	require.Equal(t, "secret marker", string(got))
	again, _ := SealedWith(r21.Seal(nil, got, nil))
	require.Equal(t, IDOf(k2), again)
}

func TestStream_RoundTripsAndRefusesTampering(t *testing.T) {
	r := ring(t, NewKey())
	for _, size := range []int{0, 1, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 17} {
		plain := bytes.Repeat([]byte("marker!"), size/7+1)[:size]
		var buf bytes.Buffer
		w, err := r.NewWriter(&buf, []byte("snap"))
		require.NoError(t, err)
		_, err = io.Copy(w, bytes.NewReader(plain)) // in small writes too
		require.NoError(t, err)
		require.NoError(t, w.Close())
		sealed := buf.Bytes()
		require.Equal(t, int64(size), PlainSize(int64(len(sealed))), "size %d", size)
		if size > 7 {
			require.NotContains(t, string(sealed), "marker!")
		}
		id, err := CheckStream(bytes.NewReader(sealed))
		require.NoError(t, err)
		require.Equal(t, r.Active(), id)

		rd, err := r.NewReader(bytes.NewReader(sealed), []byte("snap"))
		require.NoError(t, err)
		got, err := io.ReadAll(rd)
		require.NoError(t, err, "size %d", size)
		require.Equal(t, plain, got)

		for name, bad := range map[string][]byte{
			"cut short": sealed[:len(sealed)-1],
			"extended":  append(bytes.Clone(sealed), 0),
			"flipped":   func() []byte { b := bytes.Clone(sealed); b[len(b)-3] ^= 1; return b }(),
		} {
			rd, err := r.NewReader(bytes.NewReader(bad), []byte("snap"))
			require.NoError(t, err)
			_, err = io.ReadAll(rd)
			require.ErrorIs(t, err, ErrCorrupt, "%s, size %d", name, size)
			require.Equal(t, name == "cut short", errors.Is(err, ErrTruncated), "%s, size %d: %v", name, size, err)
			if name != "flipped" {
				_, err = CheckStream(bytes.NewReader(bad))
				require.ErrorIs(t, err, ErrCorrupt, "%s, size %d", name, size)
				require.Equal(t, name == "cut short", errors.Is(err, ErrTruncated), "%s, size %d: %v", name, size, err)
			}
		}
		if size > chunkSize { // a whole chunk dropped
			short := append(bytes.Clone(sealed[:streamHeader]), sealed[streamHeader+chunkSize+chunkExtra:]...)
			rd, err := r.NewReader(bytes.NewReader(short), []byte("snap"))
			require.NoError(t, err)
			_, err = io.ReadAll(rd)
			require.ErrorIs(t, err, ErrCorrupt)
		}
		rd, err = r.NewReader(bytes.NewReader(sealed), []byte("other"))
		require.NoError(t, err)
		_, err = io.ReadAll(rd)
		require.ErrorIs(t, err, ErrCorrupt, "bound to its place")
	}
	_, err := r.NewReader(strings.NewReader("KVDBACKUP..."), nil)
	require.ErrorIs(t, err, ErrNotSealed)
	_, err = CheckStream(strings.NewReader(StreamMagic + "abc"))
	require.ErrorIs(t, err, ErrTruncated, "a header cut short")
	_, err = CheckStream(strings.NewReader("KVD"))
	require.ErrorIs(t, err, ErrNotSealed)
	_, err = ring(t, NewKey()).NewReader(func() io.Reader {
		var b bytes.Buffer
		w, _ := r.NewWriter(&b, nil)
		w.Close()
		return &b
	}(), nil)
	require.ErrorIs(t, err, ErrUnknownKey)
}

func TestKeyFile_RefusesWhatIsNotAKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	k1, k2 := NewKey(), NewKey()
	good := write("good", "# kvd keys\n"+string(FormatKeyFile(k1, k2)), 0o600)
	r, err := LoadKeyFile(good)
	require.NoError(t, err)
	require.Equal(t, []KeyID{IDOf(k1), IDOf(k2)}, r.IDs())

	for name, tc := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"empty":         {"", 0o600, "no key"},
		"short key":     {"AAAA\n", 0o600, "holds 3 bytes, want 32"},
		"raw bytes":     {string(k1), 0o600, "not base64"},
		"twice":         {string(FormatKeyFile(k1, k1)), 0o600, "twice"},
		"open to group": {string(FormatKeyFile(k1)), 0o640, "chmod 600"},
	} {
		_, err := LoadKeyFile(write(strings.ReplaceAll(name, " ", "-"), tc.content, tc.mode))
		require.ErrorContains(t, err, tc.want, name)
	}
	_, err = LoadKeyFile(filepath.Join(dir, "missing"))
	require.True(t, errors.Is(err, os.ErrNotExist))

	// Reload sees a rotation; a bad file leaves the ring in use.
	keys, err := OpenKeys(good)
	require.NoError(t, err)
	changed, err := keys.Reload()
	require.NoError(t, err)
	require.False(t, changed)
	k3 := NewKey()
	require.NoError(t, os.WriteFile(good, FormatKeyFile(k3, k1, k2), 0o600))
	changed, err = keys.Reload()
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, IDOf(k3), keys.Ring().Active())
	require.NoError(t, os.WriteFile(good, []byte("junk"), 0o600))
	_, err = keys.Reload()
	require.Error(t, err)
	require.Equal(t, IDOf(k3), keys.Ring().Active())
	var none *Keys
	require.Nil(t, none.Ring())
}
