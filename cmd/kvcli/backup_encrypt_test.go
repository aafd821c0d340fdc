package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// kvcli backs up a cluster with encryption at rest on, and restores the
// file into another holding the key: the file holds no value in the
// clear; a cluster without the key refuses it, nothing changed.
func TestKvcli_BackupAndRestoreEncrypted(t *testing.T) {
	ring, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	withKeys := func(cfg *server.Config) { cfg.Encryption = atrest.StaticKeys(ring) }
	src, dst, plain := testcluster.New(t, 1, 2, withKeys), testcluster.New(t, 1, 1, withKeys), testcluster.New(t, 1, 1)
	const marker = "MARKER-kvcli-4b1d"
	for i := range 5 {
		require.Equal(t, 0, kvcli(t, src, "", "put", fmt.Sprintf("user/%d", i), marker).code)
	}
	file := filepath.Join(t.TempDir(), "cluster.kvdb")
	r := kvcli(t, src, "", "backup", file)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "encrypted backup written to "+file+" (key id "+ring.Active().String()+")")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.True(t, atrest.IsSealedStream(b))
	require.NotContains(t, string(b), marker)

	r = kvcli(t, plain, "", "restore", file)
	require.Equal(t, 2, r.code, r.stderr)
	require.Contains(t, r.stderr, "kvcli: restore refused, nothing was changed: ")
	require.Contains(t, r.stderr, "this node has no --encryption-key-file")
	require.Equal(t, 3, kvcli(t, plain, "", "get", "user/3").code, "not found")

	r = kvcli(t, dst, "", "restore", file)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "restored "+file)
	require.Contains(t, r.stdout, "5 keys")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, lines, 2, r.stderr)
	require.True(t, strings.HasPrefix(lines[0], "verify: "), lines[0])
	require.Equal(t, marker+"\n", kvcli(t, dst, "", "get", "user/3").stdout)
}
