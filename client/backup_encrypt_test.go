package client_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

// sealBackup seals a backup file under ring, as a node with encryption
// on answers it.
func sealBackup(t *testing.T, ring *atrest.Keyring, file []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := ring.NewWriter(&buf, []byte("kvd backup"))
	require.NoError(t, err)
	_, err = w.Write(file)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return buf.Bytes()
}

// The backup of a cluster with encryption on arrives sealed: the client
// writes it as it comes, checked for completeness only (a zero summary),
// and it restores into a cluster that holds the key.
func TestClient_Backup_EncryptedClusterIsPassedThrough(t *testing.T) {
	ring, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	withKeys := func(cfg *server.Config) { cfg.Encryption = atrest.StaticKeys(ring) }
	src, dst := testcluster.New(t, 1, 2, withKeys), testcluster.New(t, 1, 1, withKeys)
	from, into := newClient(t, src, nil), newClient(t, dst, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const marker = "MARKER-c1f0-in-the-clear"
	want := map[string][]byte{}
	for i := range 50 {
		want[fmt.Sprintf("key/%02d", i)] = bytes.Repeat([]byte(marker), 100*i)
	}
	putAll(t, ctx, from, want)

	var file bytes.Buffer
	sum, err := from.Backup(ctx, &file)
	require.NoError(t, err)
	require.Equal(t, backup.Summary{}, sum, "an encrypted backup's counts are sealed with it")
	require.True(t, atrest.IsSealedStream(file.Bytes()))
	require.NotContains(t, file.String(), marker)
	id, err := atrest.CheckStream(bytes.NewReader(file.Bytes()))
	require.NoError(t, err)
	require.Equal(t, ring.Active(), id)

	res, err := into.Restore(ctx, bytes.NewReader(file.Bytes()), false)
	require.NoError(t, err)
	require.Equal(t, uint64(len(want)), res.Keys)
	for k, v := range want {
		it, err := into.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, v, it.Value, k)
	}
}

// A sealed stream cut short, extended or with a wrong chunk length is an
// error, as a plain one would be; a damaged chunk is for the node that
// opens it to find.
func TestClient_Backup_SealedStreamCutOrExtendedIsAnError(t *testing.T) {
	ring, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	file, _ := testBackup(t, 300, 10<<10) // several sealed chunks
	sealed := sealBackup(t, ring, file)
	require.Greater(t, len(sealed), 4*(64<<10))
	badLength := bytes.Clone(sealed)
	badLength[24] = 0xff // the first chunk's length
	tests := []struct {
		name string
		body []byte
		cut  bool
		want error
	}{
		{"cut inside a chunk", sealed[:len(sealed)/2], true, backup.ErrTruncated},
		{"cut between chunks", sealed[:24+2*(64<<10+20)], true, backup.ErrTruncated},
		{"ended early between chunks", sealed[:24+2*(64<<10+20)], false, backup.ErrTruncated},
		{"cut inside its header", sealed[:12], true, backup.ErrTruncated},
		{"extended", append(bytes.Clone(sealed), 0), false, backup.ErrCorrupt},
		{"a chunk too long", badLength, false, backup.ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := fakeCluster(t, "n1", "n2")
			nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, tc.body, tc.cut) }
			nodes[1].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, sealed, false) }
			cl := fakeClient(t, nodes[0])

			var out bytes.Buffer
			_, err := cl.Backup(context.Background(), &out)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, kvd.ErrUnavailable)
			require.Contains(t, err.Error(), "encrypted")
			require.NotEmpty(t, out.Bytes())
			require.True(t, bytes.HasPrefix(tc.body, out.Bytes()), "w holds what came, for the caller to discard")
			require.Empty(t, nodes[1].requests(), "once bytes were written to w, no other node is asked")
		})
	}

	// A whole one is written through unchanged.
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, sealed, false) }
	var out bytes.Buffer
	sum, err := fakeClient(t, nodes[0]).Backup(context.Background(), &out)
	require.NoError(t, err)
	require.Equal(t, backup.Summary{}, sum)
	require.Equal(t, sealed, out.Bytes())
}

// A write error on w is the caller's, also for a sealed stream whose
// last bytes could not be written.
func TestClient_Backup_SealedWriteErrorIsReturned(t *testing.T) {
	ring, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	file, _ := testBackup(t, 10, 100)
	sealed := sealBackup(t, ring, file)
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) { serveBackupBytes(w, sealed, false) }
	_, err = fakeClient(t, nodes[0]).Backup(context.Background(), &failAfter{n: len(sealed) - 5})
	require.ErrorIs(t, err, errDiskFull)
}

var errDiskFull = fmt.Errorf("disk full")

// failAfter takes n bytes, then fails.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) <= f.n {
		f.n -= len(p)
		return len(p), nil
	}
	k := f.n
	f.n = 0
	return k, errDiskFull
}

var _ io.Writer = (*failAfter)(nil)
