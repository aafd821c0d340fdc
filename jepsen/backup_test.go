package jepsen

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

func TestBankWorkload_CheckState(t *testing.T) {
	w := &BankWorkload{Accounts: 3, Initial: 10, keys: []string{"bank/0", "bank/1", "bank/2"}}
	tests := []struct {
		name  string
		state map[string]string
		errs  int
	}{
		{"initial", map[string]string{"bank/0": "10", "bank/1": "10", "bank/2": "10"}, 0},
		{"after transfers, other keys aside", map[string]string{"bank/0": "0", "bank/1": "25", "bank/2": "5", "set/1": "1"}, 0},
		{"a transfer cut in two", map[string]string{"bank/0": "7", "bank/1": "10", "bank/2": "10"}, 1},
		{"an account missing", map[string]string{"bank/0": "15", "bank/1": "15"}, 1},
		{"a negative balance", map[string]string{"bank/0": "-1", "bank/1": "21", "bank/2": "10"}, 1},
		{"not a number", map[string]string{"bank/0": "x", "bank/1": "20", "bank/2": "10"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := map[string][]byte{}
			for k, v := range tt.state {
				state[k] = []byte(v)
			}
			errs := w.CheckState(state)
			require.Len(t, errs, tt.errs, "got %v", errs)
		})
	}
}

// writeBackupFile writes a backup of recs, cutting groups, into dir.
func writeBackupFile(t *testing.T, dir, name string, groups []uint64, recs ...backup.Record) string {
	t.Helper()
	var buf bytes.Buffer
	h := backup.Header{Created: time.Now()}
	for _, g := range groups {
		h.Groups = append(h.Groups, backup.GroupCut{Group: g, Index: 10})
	}
	bw, err := backup.NewWriter(&buf, h)
	require.NoError(t, err)
	for _, r := range recs {
		require.NoError(t, bw.Add(r))
	}
	_, err = bw.Close()
	require.NoError(t, err)
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

func TestBackupTaker_JudgeCuts(t *testing.T) {
	w := &BankWorkload{Accounts: 2, Initial: 10, keys: []string{"bank/0", "bank/1"}}
	acct := func(k string, v int) backup.Record { return backup.Record{Key: k, Value: []byte(strconv.Itoa(v))} }
	// A transfer acknowledged while the backups ran (1 s to 2 s).
	writing := []Op{{Process: 1, F: "transfer", Status: OK, Call: 1.2e9, Return: 1.5e9}}
	tests := []struct {
		name   string
		groups []uint64
		recs   []backup.Record
		ops    []Op
		want   Verdict
	}{
		{"consistent", []uint64{1, 2}, []backup.Record{acct("bank/0", 3), acct("bank/1", 17)}, writing, Valid},
		{"a transfer cut in two", []uint64{1, 2}, []backup.Record{acct("bank/0", 3), acct("bank/1", 10)}, writing, Invalid},
		{"a key twice", []uint64{1, 2}, []backup.Record{acct("bank/0", 3), acct("bank/1", 17), acct("bank/1", 17)}, writing, Invalid},
		{"a group not cut", []uint64{1}, []backup.Record{acct("bank/0", 3), acct("bank/1", 17)}, writing, Invalid},
		{"no write while taken", []uint64{1, 2}, []backup.Record{acct("bank/0", 3), acct("bank/1", 17)},
			[]Op{{Process: 1, F: "transfer", Status: OK, Call: 2.5e9, Return: 2.6e9}, {Process: 2, F: "read", Status: OK, Call: 1.2e9, Return: 1.5e9}}, Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeBackupFile(t, t.TempDir(), "b.kvdb", tt.groups, tt.recs...)
			b := &backupTaker{c: &Cluster{Cluster: &kvdproc.Cluster{Spec: kvd.InitialCluster{Groups: 2}}}, attempts: map[string]int{}}
			b.taken = []BackupTaken{{File: path, Node: "n1", Start: 1, End: 2}}
			res := b.judgeCuts(w, tt.ops)
			require.Equal(t, tt.want, res.Verdict, "%s %v", res.Summary, res.Errors)
		})
	}
}

func TestReadBackup_RefusesATruncatedFile(t *testing.T) {
	dir := t.TempDir()
	path := writeBackupFile(t, dir, "b.kvdb", []uint64{1}, backup.Record{Key: "k", Value: []byte("v")})
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b[:len(b)-3], 0o644))
	_, err = readBackup(path)
	require.ErrorIs(t, err, backup.ErrTruncated)
}
