package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/testkit/damage"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// encrypted returns the option that gives every node ring.
func encrypted(ring *atrest.Keyring) testcluster.Option {
	return func(cfg *server.Config) { cfg.Encryption = atrest.StaticKeys(ring) }
}

// newRing returns a ring of keys, the first active.
func newRing(t *testing.T, keys ...[]byte) *atrest.Keyring {
	t.Helper()
	r, err := atrest.NewKeyring(keys...)
	require.NoError(t, err)
	return r
}

// takeSealedBackup takes a backup through node i's HTTP API, which must
// be sealed under ring's active key, and returns it with the backup
// inside, checked.
func takeSealedBackup(t *testing.T, c *testcluster.Cluster, i int, ring *atrest.Keyring) (sealed, plain []byte) {
	t.Helper()
	r := testcluster.Do(t, "GET", c.URL(i)+"/v1/admin/backup", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	return r.Body, openSealedBackup(t, r.Body, ring)
}

// openSealedBackup opens a sealed backup with ring and checks the backup
// inside.
func openSealedBackup(t *testing.T, sealed []byte, ring *atrest.Keyring) []byte {
	t.Helper()
	require.True(t, atrest.IsSealedStream(sealed), "the backup is sealed")
	id, err := atrest.StreamKey(sealed)
	require.NoError(t, err)
	require.Equal(t, ring.Active(), id, "under the active key")
	_, err = atrest.CheckStream(bytes.NewReader(sealed))
	require.NoError(t, err)
	rd, err := ring.NewReader(bytes.NewReader(sealed), []byte("kvd backup"))
	require.NoError(t, err)
	plain, err := io.ReadAll(rd)
	require.NoError(t, err)
	_, _, err = backup.Verify(bytes.NewReader(plain))
	require.NoError(t, err)
	return plain
}

// requireNothingRestored checks that node 0 of c holds no key and
// records no restore, and that no spool is left in its data directory.
func requireNothingRestored(t *testing.T, c *testcluster.Cluster) {
	t.Helper()
	items, _, err := c.Node(0).Scan(context.Background(), kvd.ScanOptions{Limit: 10, MaxBytes: 1 << 20}, kvd.Linearizable, kvd.Route{})
	require.NoError(t, err)
	require.Empty(t, items, "nothing restored")
	require.Nil(t, c.Node(0).Map().Restore)
	spools, _ := filepath.Glob(filepath.Join(c.DataDir(0), "restore-*.tmp"))
	require.Empty(t, spools, "no spool left")
}

const marker = "MARKER-7f3a9c-secret-value"

// A backup of an encrypted cluster is sealed under its active key: the
// values are not in it in the clear. It restores into another cluster
// that holds the key (here no longer active: rotated), and a backup of a
// cluster without encryption is the plain format still.
func TestBackup_EncryptedIsSealedAndRestoresWithTheKey(t *testing.T) {
	k1, k2 := atrest.NewKey(), atrest.NewKey()
	ring := newRing(t, k1)
	c := testcluster.New(t, 1, 2, encrypted(ring))
	c.WaitReady()
	ctx := context.Background()
	for i := range 10 {
		_, err := c.Node(0).Put(ctx, fmt.Sprintf("k%02d", i), []byte(fmt.Sprintf("%s-%d", marker, i)), kvd.WriteOptions{}, kvd.Route{})
		require.NoError(t, err)
	}
	sealed, plain := takeSealedBackup(t, c, 0, ring)
	require.NotContains(t, string(sealed), marker)
	require.NotContains(t, string(sealed), "KVDBACKUP")
	recs := backupRecords(t, plain)
	require.Len(t, recs, 10)
	require.Equal(t, marker+"-3", string(recs["k03"].Value))

	d := testcluster.New(t, 1, 3, encrypted(newRing(t, k2, k1)))
	d.WaitReady()
	r := testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", sealed)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	for i := range 10 {
		it, err := d.Node(0).Get(ctx, fmt.Sprintf("k%02d", i), kvd.Linearizable, kvd.Route{})
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("%s-%d", marker, i), string(it.Value))
	}
	spools, _ := filepath.Glob(filepath.Join(d.DataDir(0), "restore-*.tmp"))
	require.Empty(t, spools, "the spool is removed")
	requireNoFileHolds(t, d.DataDir(0), marker)

	// The same cluster takes a plain backup, as before, too.
	e := testcluster.New(t, 1, 1, encrypted(ring))
	e.WaitReady()
	plainFile := bytes.Clone(plain)
	r = testcluster.Do(t, "POST", e.URL(0)+"/v1/admin/restore", plainFile)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	it, err := e.Node(0).Get(ctx, "k07", kvd.Linearizable, kvd.Route{})
	require.NoError(t, err)
	require.Equal(t, marker+"-7", string(it.Value))

	// Without encryption a backup is the plain format.
	f := testcluster.New(t, 1, 1)
	f.WaitReady()
	_, err = f.Node(0).Put(ctx, "k", []byte(marker), kvd.WriteOptions{}, kvd.Route{})
	require.NoError(t, err)
	file := takeBackup(t, f, 0)
	require.True(t, bytes.HasPrefix(file, []byte(backup.Magic)))
	require.Contains(t, string(file), marker)
}

// A sealed backup is refused, before anything is written, by a node
// without encryption, by one that lacks its key, and when it does not
// open whole: cut short, extended or damaged.
func TestRestore_RefusesEncryptedBackupsItCannotOpen(t *testing.T) {
	ring := newRing(t, atrest.NewKey())
	c := testcluster.New(t, 1, 2, encrypted(ring))
	c.WaitReady()
	ctx := context.Background()
	for i := range 200 {
		_, err := c.Node(0).Put(ctx, fmt.Sprintf("k%03d", i), bytes.Repeat([]byte(marker), 40), kvd.WriteOptions{}, kvd.Route{})
		require.NoError(t, err)
	}
	sealed, _ := takeSealedBackup(t, c, 0, ring)
	require.Greater(t, len(sealed), 3*64<<10, "several sealed chunks")
	id := ring.Active().String()

	plainNode := testcluster.New(t, 1, 1)
	plainNode.WaitReady()
	r := testcluster.Do(t, "POST", plainNode.URL(0)+"/v1/admin/restore", sealed)
	require.Equal(t, 400, r.Status, "%s", r.Body)
	require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
	require.Contains(t, string(r.Body), "the backup is encrypted (key id "+id+"); this node has no --encryption-key-file")
	requireNothingRestored(t, plainNode)

	otherRing := newRing(t, atrest.NewKey())
	other := testcluster.New(t, 1, 1, encrypted(otherRing))
	other.WaitReady()
	r = testcluster.Do(t, "POST", other.URL(0)+"/v1/admin/restore", sealed)
	require.Equal(t, 400, r.Status, "%s", r.Body)
	require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
	require.Contains(t, string(r.Body), "key id "+id)
	require.Contains(t, string(r.Body), "key file (--encryption-key-file) lacks")
	require.Contains(t, string(r.Body), otherRing.Active().String(), "names the keys it holds")
	requireNothingRestored(t, other)

	d := testcluster.New(t, 1, 1, encrypted(ring))
	d.WaitReady()
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)/2] ^= 0x01
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"cut short by half", sealed[:len(sealed)/2], "truncated"},
		{"cut short by a byte", sealed[:len(sealed)-1], "truncated"},
		{"cut at a chunk's end", sealed[:24+(64<<10+20)], "truncated"},
		{"cut inside its header", sealed[:20], "truncated inside its header"},
		{"extended", append(bytes.Clone(sealed), 0), "corrupt"},
		{"a byte changed", flipped, "corrupt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", tc.body)
			require.Equal(t, 400, r.Status, "%s", r.Body)
			require.Equal(t, api.CodeInvalidRequest, r.ErrCode(t))
			require.Contains(t, string(r.Body), tc.want)
			require.Contains(t, string(r.Body), "encrypted")
			requireNothingRestored(t, d)
		})
	}
	r = testcluster.Do(t, "POST", d.URL(0)+"/v1/admin/restore", sealed)
	require.Equal(t, 200, r.Status, "the whole one restores: %s", r.Body)
}

// Scheduled backups of an encrypted cluster are sealed: no value is in
// them in the clear.
func TestBackup_ScheduledEncryptedHoldsNoValueInTheClear(t *testing.T) {
	ring := newRing(t, atrest.NewKey())
	dir := t.TempDir()
	c := testcluster.New(t, 1, 2, encrypted(ring), func(cfg *server.Config) {
		cfg.BackupDir, cfg.BackupEvery, cfg.BackupKeep = dir, 100*time.Millisecond, 2
	})
	c.WaitReady()
	_, err := c.Node(0).Put(context.Background(), "k", []byte(marker), kvd.WriteOptions{}, kvd.Route{})
	require.NoError(t, err)
	var file string
	require.Eventually(t, func() bool {
		matches, _ := filepath.Glob(filepath.Join(dir, "kvd-backup-*.kvdb"))
		for _, m := range matches {
			data, err := os.ReadFile(m)
			if os.IsNotExist(err) {
				continue // pruned meanwhile
			}
			require.NoError(t, err)
			rd, err := ring.NewReader(bytes.NewReader(data), []byte("kvd backup"))
			require.NoError(t, err)
			plain, err := io.ReadAll(rd)
			require.NoError(t, err)
			if _, ok := backupRecords(t, plain)["k"]; ok {
				file = m
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond, "a backup holds the key")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if os.IsNotExist(err) {
			continue // pruned meanwhile
		}
		require.NoError(t, err)
		require.NotContains(t, string(data), marker, e.Name())
	}
	data, err := os.ReadFile(file)
	if err == nil {
		plain := openSealedBackup(t, data, ring)
		require.Equal(t, marker, string(backupRecords(t, plain)["k"].Value))
	}
}

// While a restore spools its upload, the spool in the data directory
// holds no value in the clear: it is sealed under a key held in memory,
// on a node with encryption on and on one without.
func TestRestore_SpoolHoldsNoValueInTheClear(t *testing.T) {
	// A plain backup of about 4 MiB, every value holding the marker.
	var file bytes.Buffer
	w, err := backup.NewWriter(&file, backup.Header{Created: time.Now().UTC()})
	require.NoError(t, err)
	const keys = 1000
	for i := range keys {
		require.NoError(t, w.Add(backup.Record{Key: fmt.Sprintf("k%04d", i), Value: []byte(strings.Repeat(marker, 160))}))
	}
	_, err = w.Close()
	require.NoError(t, err)
	upload := file.Bytes()

	for _, tc := range []struct {
		name string
		opts []testcluster.Option
	}{
		{"encrypted node", []testcluster.Option{encrypted(newRing(t, atrest.NewKey()))}},
		{"node without encryption", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testcluster.New(t, 1, 2, tc.opts...)
			c.WaitReady()
			pr, pw := io.Pipe()
			req, err := http.NewRequest("POST", c.URL(0)+"/v1/admin/restore", pr)
			require.NoError(t, err)
			type answer struct {
				status int
				body   []byte
				err    error
			}
			done := make(chan answer, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					done <- answer{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				done <- answer{resp.StatusCode, b, err}
			}()
			// Send most of the upload, and hold the rest back while the
			// spool is read.
			half := len(upload) * 3 / 4
			_, err = pw.Write(upload[:half])
			require.NoError(t, err)
			var spool []byte
			require.Eventually(t, func() bool {
				matches, _ := filepath.Glob(filepath.Join(c.DataDir(0), "restore-*.tmp"))
				if len(matches) != 1 {
					return false
				}
				spool, err = os.ReadFile(matches[0])
				require.NoError(t, err)
				return len(spool) >= half-(256<<10)
			}, 10*time.Second, 10*time.Millisecond, "the spool holds most of what was sent")
			require.True(t, atrest.IsSealedStream(spool), "the spool is sealed")
			require.NotContains(t, string(spool), marker)
			require.NotContains(t, string(spool), "KVDBACKUP")

			_, err = pw.Write(upload[half:])
			require.NoError(t, err)
			require.NoError(t, pw.Close())
			a := <-done
			require.NoError(t, a.err)
			require.Equal(t, 200, a.status, "%s", a.body)
			for _, k := range []string{"k0000", "k0500", fmt.Sprintf("k%04d", keys-1)} {
				it, err := c.Node(0).Get(context.Background(), k, kvd.Linearizable, kvd.Route{})
				require.NoError(t, err)
				require.Equal(t, strings.Repeat(marker, 160), string(it.Value))
			}
			spools, _ := filepath.Glob(filepath.Join(c.DataDir(0), "restore-*.tmp"))
			require.Empty(t, spools, "the spool is removed")
			if len(tc.opts) > 0 {
				requireNoFileHolds(t, c.DataDir(0), marker)
			}
		})
	}
}

// requireNoFileHolds checks that no file under dir holds s.
func requireNoFileHolds(t *testing.T, dir, s string) {
	t.Helper()
	holding, read := damage.Holding(t, s, dir)
	require.Empty(t, holding)
	require.NotZero(t, read)
}
