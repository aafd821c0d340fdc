package shell

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/atrest"
)

// sealedBackupFile returns a backup of n keys sealed under a new key, as
// a cluster with encryption at rest on answers it, and the key's id.
func sealedBackupFile(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	ring, err := atrest.NewKeyring(atrest.NewKey())
	require.NoError(t, err)
	var buf bytes.Buffer
	w, err := ring.NewWriter(&buf, []byte("kvd backup"))
	require.NoError(t, err)
	_, err = w.Write(testBackupFile(t, n))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return buf.Bytes(), ring.Active().String()
}

// An encrypted backup is written as it comes and said to be encrypted;
// it is restored as it is, checked for completeness first, and one cut
// short or extended is refused before anything is sent.
func TestBackupCommands_EncryptedBackupPassesThrough(t *testing.T) {
	sealed, id := sealedBackupFile(t, 200)
	f, c := newFakeTransferNode(t)
	var out, progress bytes.Buffer
	sh := New(c, Options{Progress: &progress}, strings.NewReader(""), &out)
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.kvdb")
	run := func(words ...string) error {
		out.Reset()
		progress.Reset()
		return sh.Exec(context.Background(), words, false)
	}

	f.backup = func(w http.ResponseWriter) { streamThenCut(w, sealed, false) }
	require.NoError(t, run("backup", path))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, sealed, got)
	digest := sha256.Sum256(sealed)
	require.Equal(t, "encrypted backup written to "+path+" (key id "+id+"): file of "+bytesText(int64(len(sealed)))+
		", sha256 "+hex.EncodeToString(digest[:])+"; a cluster holding that key opens it when it restores it\n", out.String())

	sh.o.JSON = true
	require.NoError(t, run("backup", path))
	var done backupDone
	require.NoError(t, json.Unmarshal(out.Bytes(), &done))
	require.Equal(t, backupDone{File: path, FileBytes: int64(len(sealed)), SHA256: hex.EncodeToString(digest[:]), TookMS: done.TookMS,
		Encrypted: true, KeyID: id}, done)
	sh.o.JSON = false

	f.backup = func(w http.ResponseWriter) { streamThenCut(w, sealed[:len(sealed)/2], true) }
	err = run("backup", path)
	require.Equal(t, ExitUnavailable, ExitCode(err))
	require.Contains(t, Explain(err), "backup failed, "+path+" was not written: ")
	require.Contains(t, Explain(err), "truncated")
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, sealed, got, "the file written before stays")

	res := api.RestoreResult{ID: "r1", Keys: 200, Groups: 1}
	f.restore = func(w http.ResponseWriter) { jsonAnswer(w, http.StatusOK, res) }
	require.NoError(t, run("restore", path))
	require.Contains(t, out.String(), "restored "+path+": 200 keys")
	lines := strings.Split(strings.TrimSpace(progress.String()), "\n")
	require.Len(t, lines, 2)
	require.Regexp(t, `^verify: [0-9.]+ KiB of [0-9.]+ KiB read \(100%\) in `, lines[0], "no key count: they are sealed")
	reqs := f.sent()
	require.Len(t, reqs, 1)
	require.Equal(t, sealed, reqs[0].body, "sent as it is")

	for name, tc := range map[string]struct {
		body []byte
		says string
	}{
		"cut":             {sealed[:len(sealed)-1], "backup is truncated: the encrypted backup ends too soon"},
		"cut in a header": {sealed[:12], "backup is truncated: the encrypted backup ends inside its header"},
		"extended":        {append(bytes.Clone(sealed), 'x'), "backup is corrupt: the encrypted backup's framing is wrong"},
	} {
		bad := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".kvdb")
		require.NoError(t, os.WriteFile(bad, tc.body, 0o600))
		err := run("restore", bad)
		require.Equal(t, ExitUsage, ExitCode(err), "%s: %v", name, err)
		require.True(t, strings.HasPrefix(Explain(err), "refused, nothing was sent: "+bad+" is not a backup kvcli can restore: "), Explain(err))
		require.Contains(t, Explain(err), tc.says, name)
	}
	require.Len(t, f.sent(), 1, "nothing more was sent")
}
