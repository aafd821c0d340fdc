package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/pki"
	"github.com/kvd-project/kvd/internal/testkit/damage"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// A 3-node cluster of processes with --encryption-key-file: after values
// holding a marker were written (keys, a transaction, enough for
// snapshots), no file under any data directory holds the marker, Raft
// log and snapshots included; kvd rotate-key rotates the key online,
// every node re-encrypts, the old data reads back, the marker is still
// nowhere, and once the old key is dropped every node restarts and reads
// everything without it.
func TestKvd_EncryptionAtRestAndRotation(t *testing.T) {
	const marker = "ENCRYPTION-MARKER-51c0"
	certs, keys := t.TempDir(), t.TempDir()
	_, err := pki.CreateCA(certs, pki.CALifetime, false)
	require.NoError(t, err)
	ca := filepath.Join(certs, pki.CAFile)
	var out, errb bytes.Buffer
	first := filepath.Join(keys, "kvd.key")
	require.Zero(t, runRotateKey([]string{"--encryption-key-file", first}, &out, &errb), errb.String())
	require.Contains(t, out.String(), "created with key")
	keyBytes, err := os.ReadFile(first)
	require.NoError(t, err)

	c, err := kvdproc.NewCluster(kvdBinary(t), t.TempDir(), 3, 2, 3)
	require.NoError(t, err)
	c.Args = []string{"--election-timeout", "500ms", "--heartbeat-timeout", "500ms",
		"--snapshot-threshold", "64", "--snapshot-interval", "200ms", "--trailing-logs", "16"}
	keyFiles := map[string]string{}
	for _, n := range c.Nodes {
		cert, key, err := pki.CreateCert(certs, pki.Node, n.ID, []string{"127.0.0.1"}, pki.CertLifetime, false)
		require.NoError(t, err)
		keyFiles[n.ID] = filepath.Join(keys, n.ID+".key") // each node its own copy
		require.NoError(t, os.WriteFile(keyFiles[n.ID], keyBytes, 0o600))
		c.NodeArgs[n.ID] = []string{"--tls-cert", cert, "--tls-key", key,
			"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca,
			"--encryption-key-file", keyFiles[n.ID]}
	}
	clientTLS, err := pki.ClientFiles(ca, "", "")
	require.NoError(t, err)
	c.UseTLS(clientTLS)
	launch(t, c)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}}
	send := func(method, url, body string) (int, string) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	for i := range 300 {
		st, body := send("PUT", c.Nodes[i%3].URL()+fmt.Sprintf("/v1/kv/k%03d", i), fmt.Sprintf("%s-%d", marker, i))
		require.Equal(t, 200, st, body)
	}
	txn := fmt.Sprintf(`{"ops":[{"op":"put","key":"t1","value":%q},{"op":"put","key":"t2","value":%q}]}`,
		b64(marker+"-txn1"), b64(marker+"-txn2"))
	st, body := send("POST", c.Nodes[0].URL()+"/v1/txn", txn)
	require.Equal(t, 200, st, body)
	readAll := func() {
		t.Helper()
		for i := range c.Nodes {
			for _, k := range []int{0, 150, 299} {
				st, body := send("GET", c.Nodes[i].URL()+fmt.Sprintf("/v1/kv/k%03d?consistency=linearizable", k), "")
				require.Equal(t, 200, st, body)
				require.Equal(t, fmt.Sprintf("%s-%d", marker, k), body)
			}
			st, body := send("GET", c.Nodes[i].URL()+"/v1/kv/t2?consistency=linearizable", "")
			require.Equal(t, 200, st, body)
			require.Equal(t, marker+"-txn2", body)
		}
	}
	readAll()
	// Snapshots were taken (the threshold is 64 entries).
	require.Eventually(t, func() bool {
		snaps, _ := filepath.Glob(filepath.Join(c.Dir, "*", "groups", "*", "snapshots", "*", "state.bin"))
		return len(snaps) > 0
	}, 20*time.Second, 100*time.Millisecond, "no snapshot was taken")
	require.Empty(t, holding(t, c.Dir, marker), "plaintext in a data directory")

	// Online rotation through one node.
	out.Reset()
	errb.Reset()
	code := runRotateKey([]string{"--addr", c.Nodes[1].URL(), "--cacert", ca, "--wait", "60s"}, &out, &errb)
	require.Zero(t, code, "%s%s", out.String(), errb.String())
	require.Contains(t, out.String(), "every node re-encrypted under it")
	newID := strings.Fields(out.String())[3]
	st, body = send("GET", c.Nodes[2].URL()+"/v1/admin/encryption", "")
	require.Equal(t, 200, st, body)
	var es api.EncryptionStatus
	require.NoError(t, json.Unmarshal([]byte(body), &es))
	require.True(t, es.Done, body)
	require.Len(t, es.Nodes, 3)
	for _, n := range es.Nodes {
		require.Equal(t, newID, n.Active, body)
		require.Len(t, n.Keys, 2, "the old key is kept")
	}
	readAll()
	require.Empty(t, holding(t, c.Dir, marker), "plaintext in a data directory")
	st, body = send("POST", c.Nodes[0].URL()+"/v1/admin/encryption/rotate?x=1", "")
	require.Equal(t, 400, st, body)
	st, body = send("POST", c.Nodes[0].URL()+"/v1/admin/encryption/rotate", "{}")
	require.Equal(t, 400, st, body)

	// With a node down, a rotation is refused before any node changes.
	require.NoError(t, c.Terminate(2, 20*time.Second))
	errb.Reset()
	require.Equal(t, 1, runRotateKey([]string{"--addr", c.Nodes[0].URL(), "--cacert", ca}, &out, &errb))
	require.Contains(t, errb.String(), "nothing was changed")
	for _, id := range []string{c.Nodes[0].ID, c.Nodes[1].ID} {
		r, err := atrest.LoadKeyFile(keyFiles[id])
		require.NoError(t, err)
		require.Len(t, r.IDs(), 2, "node %s was given no key", id)
	}
	require.NoError(t, c.Start(2))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitAllReady(ctx))

	// Every node's file without the old key: taken, and every node
	// restarts and reads without it.
	for id, f := range keyFiles {
		r, err := atrest.LoadKeyFile(f)
		require.NoError(t, err)
		require.Equal(t, newID, r.Active().String(), id)
		require.NoError(t, os.WriteFile(f, atrest.FormatKeyFile(r.Keys()[0]), 0o600))
	}
	for i := range c.Nodes {
		require.NoError(t, c.Terminate(i, 20*time.Second))
		require.NoError(t, c.Start(i))
	}
	require.NoError(t, c.WaitAllReady(ctx))
	readAll()
	require.Empty(t, holding(t, c.Dir, marker), "plaintext in a data directory")

	// A node cannot start on a key file that lacks its data's key.
	require.NoError(t, c.Terminate(2, 20*time.Second))
	other := filepath.Join(keys, "other.key")
	require.NoError(t, os.WriteFile(other, atrest.FormatKeyFile(atrest.NewKey()), 0o600))
	c.NodeArgs[c.Nodes[2].ID] = append(c.NodeArgs[c.Nodes[2].ID], "--encryption-key-file", other)
	require.NoError(t, c.Start(2))
	require.Eventually(t, func() bool { return strings.Contains(c.Logs(2, 20000), "which the key file lacks") }, 20*time.Second, 100*time.Millisecond, c.Logs(2, 4000))
}

// holding lists the files under dir that contain s.
func holding(t *testing.T, dir, s string) []string {
	files, _ := damage.Holding(t, s, dir)
	return files
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// Key files that are not key files, and wrong uses of kvd rotate-key,
// are refused with a message.
func TestKvd_EncryptionKeyFileMistakes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	for name, tc := range map[string]struct{ file, want string }{
		"short":    {write("short", b64("sixteen bytes!!!")+"\n", 0o600), "holds 16 bytes, want 32"},
		"readable": {write("open", string(atrest.FormatKeyFile(atrest.NewKey())), 0o644), "chmod 600"},
		"missing":  {filepath.Join(dir, "nope"), "no such file"},
		"empty":    {write("empty", "", 0o600), "no key"},
	} {
		o, err := parseFlags([]string{"--data-dir", t.TempDir(), "--encryption-key-file", tc.file})
		require.NoError(t, err, name)
		_, err = buildConfig(o)
		require.ErrorContains(t, err, tc.want, name)
	}
	var out, errb bytes.Buffer
	for _, args := range [][]string{
		{},
		{"--addr", "http://127.0.0.1:1", "--encryption-key-file", "x"},
		{"--encryption-key-file", filepath.Join(dir, "k"), "--add", "--activate", "ab"},
		{"--addr", "http://127.0.0.1:1", "--add"},
	} {
		errb.Reset()
		require.Equal(t, 2, runRotateKey(args, &out, &errb), "%v", args)
		require.NotEmpty(t, errb.String())
	}
	one := filepath.Join(dir, "one.key")
	require.Zero(t, runRotateKey([]string{"--encryption-key-file", one}, &out, &errb))
	errb.Reset()
	require.Equal(t, 1, runRotateKey([]string{"--encryption-key-file", one, "--activate", "0011223344556677"}, &out, &errb))
	require.Contains(t, errb.String(), "holds no key 0011223344556677")
	// --add keeps the active key; --activate ID makes the added one
	// active, and again changes nothing (never an older key).
	before, err := atrest.LoadKeyFile(one)
	require.NoError(t, err)
	require.Zero(t, runRotateKey([]string{"--encryption-key-file", one, "--add"}, &out, &errb))
	added, err := atrest.LoadKeyFile(one)
	require.NoError(t, err)
	require.Equal(t, before.Active(), added.Active())
	require.Len(t, added.IDs(), 2)
	newID := added.IDs()[1].String()
	for range 2 {
		require.Zero(t, runRotateKey([]string{"--encryption-key-file", one, "--activate", newID}, &out, &errb))
		activated, err := atrest.LoadKeyFile(one)
		require.NoError(t, err)
		require.Equal(t, newID, activated.Active().String())
		require.True(t, activated.Has(before.Active()))
	}
}
