package replication

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/testkit/damage"
)

const secretMarker = "SECRET-7d1a0c"

// holding lists the files under dirs that contain s.
func holding(t *testing.T, s string, dirs ...string) []string {
	files, _ := damage.Holding(t, s, dirs...)
	return files
}

func writeKeyFile(t *testing.T, path string, keys ...[]byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, atrest.FormatKeyFile(keys...), 0o600))
}

// underKey checks that everything replica g wrote is sealed under id: its
// state, every command entry of its log, every snapshot.
func underKey(t *testing.T, g *Group, id atrest.KeyID) {
	t.Helper()
	sid, ok, err := g.db.SealedUnder()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, id, sid, "state")
	first, err := g.bolt.FirstIndex()
	require.NoError(t, err)
	last, err := g.bolt.LastIndex()
	require.NoError(t, err)
	commands := 0
	for idx := first; idx <= last && idx > 0; idx++ {
		var l raft.Log
		if err := g.bolt.GetLog(idx, &l); err != nil || l.Type != raft.LogCommand {
			continue
		}
		got, ok := atrest.SealedWith(l.Data)
		require.True(t, ok, "entry %d sealed", idx)
		require.Equal(t, id, got, "entry %d", idx)
		commands++
	}
	require.Positive(t, commands)
	metas, err := g.sealedSnaps.List()
	require.NoError(t, err)
	for _, m := range metas {
		got, ok, err := snapshotSealedUnder(g.sealedSnaps, m.ID)
		require.NoError(t, err)
		require.True(t, ok, "snapshot %s sealed", m.ID)
		require.Equal(t, id, got, "snapshot %s", m.ID)
	}
}

// With keys, no replica writes a value in the clear anywhere (state, log,
// snapshots, a snapshot installed on a follower); a rotation brings
// everything under the new key while the group serves, after which the
// old key can go.
func TestEncryption_NoPlaintextAndRotation(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "kvd.key")
	k1, k2 := atrest.NewKey(), atrest.NewKey()
	writeKeyFile(t, keyFile, k1)
	keys, err := atrest.OpenKeys(keyFile)
	require.NoError(t, err)
	tg := newTestGroup(t, 3, func(c *Config) {
		c.Keys = keys
		c.SnapshotThreshold = 16
		c.TrailingLogs = 8
		c.SnapshotInterval = 50 * time.Millisecond
	})
	li, lg := tg.leader()
	f := (li + 1) % 3
	tg.stop(f)
	for i := range 120 {
		_, err := tg.put(fmt.Sprintf("k%03d", i), fmt.Sprintf("%s-%d", secretMarker, i))
		require.NoError(t, err)
	}
	require.NoError(t, lg.Snapshot())
	tg.start(f, nil) // catches up through a snapshot
	tg.waitValue(f, "k119", secretMarker+"-119")
	for i := range 20 { // and some left in the log after the snapshot
		_, err := tg.put(fmt.Sprintf("late%02d", i), fmt.Sprintf("%s-late-%d", secretMarker, i))
		require.NoError(t, err)
	}
	for i := range 3 {
		tg.waitValue(i, "late19", secretMarker+"-late-19")
		require.NoError(t, tg.reps[i].Snapshot())
	}
	require.Empty(t, holding(t, secretMarker, tg.dirs...), "plaintext on disk")
	for i := range 3 {
		require.Eventually(t, func() bool { return tg.reps[i].EncryptionStatus().Done }, 10*time.Second, 20*time.Millisecond)
	}

	// Rotate: the new key first, the old one still read.
	writeKeyFile(t, keyFile, k2, k1)
	changed, err := keys.Reload()
	require.NoError(t, err)
	require.True(t, changed)
	for i := range 3 {
		tg.reps[i].Reencrypt()
	}
	for i := range 20 { // writes go on meanwhile
		_, err := tg.put(fmt.Sprintf("rot%02d", i), fmt.Sprintf("%s-rot-%d", secretMarker, i))
		require.NoError(t, err)
	}
	for i := range 3 {
		require.Eventually(t, func() bool {
			st := tg.reps[i].EncryptionStatus()
			return st.Done && st.Active == atrest.IDOf(k2).String()
		}, 20*time.Second, 20*time.Millisecond, "replica %d: %+v", i, tg.reps[i].EncryptionStatus())
		tg.waitValue(i, "rot19", secretMarker+"-rot-19")
		underKey(t, tg.reps[i], atrest.IDOf(k2))
	}

	// The old key can go: every replica restarts and reads without it,
	// one of them from its snapshot alone (its state lost, as after a
	// crash with lazy sync): the values inside the snapshots are under
	// the new key too.
	writeKeyFile(t, keyFile, k2)
	_, err = keys.Reload()
	require.NoError(t, err)
	for i := range 3 {
		tg.stop(i)
		if i == 1 {
			require.NoError(t, os.Remove(filepath.Join(tg.dirs[i], "state.db")))
		}
		tg.start(i, nil)
	}
	for i := range 3 {
		tg.waitValue(i, "k000", secretMarker+"-0")
		tg.waitValue(i, "rot19", secretMarker+"-rot-19")
		items, _, err := tg.reps[i].Store().Scan(kvd.ScanOptions{})
		require.NoError(t, err)
		require.Len(t, items, 160)
	}
	require.Empty(t, holding(t, secretMarker, tg.dirs...), "plaintext on disk")
}

// A replica refuses to open a state encrypted under a key it lacks,
// saying which, rather than serve errors.
func TestEncryption_RefusesToOpenWithoutTheKey(t *testing.T) {
	k1 := atrest.NewKey()
	r1, err := atrest.NewKeyring(k1)
	require.NoError(t, err)
	var keys *atrest.Keys = atrest.StaticKeys(r1)
	tg := newTestGroup(t, 1, func(c *Config) { c.Keys = keys })
	_, err = tg.put("a", secretMarker)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return tg.reps[0].EncryptionStatus().Done }, 10*time.Second, 20*time.Millisecond)
	tg.stop(0)

	for name, k := range map[string]*atrest.Keys{"no key": nil, "another key": func() *atrest.Keys {
		r, err := atrest.NewKeyring(atrest.NewKey())
		require.NoError(t, err)
		return atrest.StaticKeys(r)
	}()} {
		cfg := DefaultConfig()
		cfg.Group, cfg.NodeID, cfg.Dir = 1, nodeID(0), tg.dirs[0]
		cfg.Keys = k
		cfg.Logger = quietLogger()
		_, cfg.Transport = raft.NewInmemTransport("")
		cfg.Peers = []Peer{{ID: nodeID(0), Addr: "x"}}
		_, err := Open(cfg)
		require.ErrorContains(t, err, atrest.IDOf(k1).String(), name)
	}
}

// snapshotSealedUnder returns the key id a snapshot's file is sealed under (ok
// false if it is not sealed), from the file's first bytes.
func snapshotSealedUnder(s *sealedSnapshots, id string) (atrest.KeyID, bool, error) {
	f, err := os.Open(filepath.Join(s.dir, "snapshots", id, "state.bin"))
	if err != nil {
		return atrest.KeyID{}, false, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(f, head)
	k, err := atrest.StreamKey(head[:n])
	if err != nil {
		return k, false, nil
	}
	return k, true, nil
}

// On raft-wal an entry cannot be rewritten under the new key: an idle
// group (no snapshot due for hours) still finishes a rotation, by
// compacting its log behind a fresh snapshot, and then reads without the
// old key.
func TestEncryption_IdleWALGroupFinishesARotation(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "kvd.key")
	k1, k2 := atrest.NewKey(), atrest.NewKey()
	writeKeyFile(t, keyFile, k1)
	keys, err := atrest.OpenKeys(keyFile)
	require.NoError(t, err)
	tg := newTestGroup(t, 3, func(c *Config) {
		c.Keys = keys
		c.LogStore = LogStoreWAL
	})
	for i := range 30 {
		_, err := tg.put(fmt.Sprintf("k%02d", i), fmt.Sprintf("%s-%d", secretMarker, i))
		require.NoError(t, err)
	}
	for i := range 3 {
		tg.waitValue(i, "k29", secretMarker+"-29")
	}
	writeKeyFile(t, keyFile, k2, k1)
	_, err = keys.Reload()
	require.NoError(t, err)
	for i := range 3 {
		tg.reps[i].Reencrypt()
	}
	for i := range 3 {
		require.Eventually(t, func() bool {
			st := tg.reps[i].EncryptionStatus()
			return st.Done && st.Active == atrest.IDOf(k2).String()
		}, 30*time.Second, 50*time.Millisecond, "replica %d: %+v", i, tg.reps[i].EncryptionStatus())
	}
	writeKeyFile(t, keyFile, k2)
	_, err = keys.Reload()
	require.NoError(t, err)
	for i := range 3 {
		tg.restart(i)
	}
	for i := range 3 {
		tg.waitValue(i, "k00", secretMarker+"-0")
		tg.waitValue(i, "k29", secretMarker+"-29")
	}
	_, err = tg.put("after", "x")
	require.NoError(t, err)
}
