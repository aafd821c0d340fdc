package shell

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
)

// Usage lines of the backup commands.
const (
	usageBackup  = "backup FILE"
	usageRestore = "restore FILE [--force]"
)

// transferError is a backup or a restore that failed: Explain says what
// became of the file and of the cluster.
type transferError struct {
	op   string // "backup" or "restore"
	file string
	// local marks a restore refused before anything was sent: the file
	// is not a backup this kvcli can restore.
	local bool
	// interrupted marks a transfer stopped by an interrupt (Ctrl-C).
	interrupted bool
	err         error
}

func (e *transferError) Error() string { return e.op + " " + e.file + ": " + e.err.Error() }
func (e *transferError) Unwrap() error { return e.err }

// explain words the failure for a person; detail is the error's own
// words.
func (e *transferError) explain(detail string) string {
	if e.op == "backup" {
		msg := "backup failed, " + e.file + " was not written"
		if e.interrupted {
			return msg + ": interrupted"
		}
		if errors.Is(e.err, kvd.ErrUnavailable) {
			return msg + ": " + detail + `; try again, or check the cluster with "kvcli health"`
		}
		return msg + ": " + detail
	}
	const look = `; look with "kvcli scan" before trying again`
	switch {
	case e.local && e.interrupted:
		return "restore interrupted while verifying " + e.file + ", nothing was sent"
	case e.local:
		return "refused, nothing was sent: " + e.file + " is not a backup kvcli can restore: " + detail
	case errors.Is(e.err, kvd.ErrUnknownOutcome) && e.interrupted:
		return "restore interrupted, outcome unknown: the cluster may hold none, part or all of the backup (with --force, its keys may have been dropped)" + look
	case errors.Is(e.err, kvd.ErrUnknownOutcome):
		return "restore outcome unknown: the cluster may hold none, part or all of the backup (with --force, its keys may have been dropped)" + look + ": " + detail
	case errors.Is(e.err, kvd.ErrConflict):
		return "restore refused, nothing was changed: " + detail
	case errors.Is(e.err, kvd.ErrInvalid):
		return "restore refused, nothing was changed: the cluster found " + e.file + " unfit: " + detail
	case errors.Is(e.err, kvd.ErrUnavailable):
		return "restore unavailable, nothing was changed: " + detail + `; try again, or check the cluster with "kvcli health"`
	}
	return "restore failed: " + detail
}

// backupDone is what "backup" prints with --json.
type backupDone struct {
	File string `json:"file"`
	// Keys, Bytes and Chunks are the backup's summary; SHA256 is that
	// of the whole file, as sha256sum computes it.
	Keys      uint64 `json:"keys"`
	Bytes     uint64 `json:"bytes"`
	Chunks    uint64 `json:"chunks"`
	FileBytes int64  `json:"file_bytes"`
	SHA256    string `json:"sha256"`
	TookMS    int64  `json:"took_ms"`
	// Encrypted marks a backup the cluster sealed under its key
	// (encryption at rest): KeyID names the key, and Keys, Bytes and
	// Chunks are 0, sealed with the rest.
	Encrypted bool   `json:"encrypted,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
}

// backupFile runs "backup FILE": it streams the cluster's backup into
// FILE.tmp beside FILE, verifying it as it comes, and renames it to FILE
// once the whole stream verified and is on disk. On a failure it removes
// FILE.tmp, and a FILE already there stays as it was.
func (s *Shell) backupFile(ctx context.Context, a *args) error {
	if err := a.want(1, 1); err != nil {
		return err
	}
	file := a.pos[0]
	if file == "" || strings.HasSuffix(file, string(filepath.Separator)) {
		return usagef("FILE must name a file, not %q (usage: %s)", file, usageBackup)
	}
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cannot write the backup: %w", err)
	}
	start := time.Now()
	p := s.startProgress("backup", "received", -1, "")
	digest := sha256.New()
	head := &headWriter{}
	sum, err := s.c.Backup(ctx, &countingWriter{w: io.MultiWriter(f, digest, head), p: p})
	p.end(err == nil)
	if err == nil {
		if err = f.Sync(); err != nil {
			err = fmt.Errorf("sync %s: %w", tmp, err)
		}
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write %s: %w", tmp, cerr)
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return &transferError{op: "backup", file: file, interrupted: ctx.Err() != nil, err: err}
	}
	if err := fsutil.SyncDir(filepath.Dir(file)); err != nil {
		return fmt.Errorf("backup written to %s, but it may not survive a crash of this machine: %w", file, err)
	}
	done := backupDone{File: file, Keys: sum.Keys, Bytes: sum.Bytes, Chunks: sum.Chunks, FileBytes: p.bytes.Load(),
		SHA256: hex.EncodeToString(digest.Sum(nil)), TookMS: time.Since(start).Milliseconds()}
	if id, err := atrest.StreamKey(head.b); err == nil {
		done.Encrypted, done.KeyID = true, id.String()
	}
	if s.o.JSON {
		return s.emit(done)
	}
	if done.Encrypted {
		fmt.Fprintf(s.out, "encrypted backup written to %s (key id %s): file of %s, sha256 %s; a cluster holding that key opens it when it restores it\n",
			file, done.KeyID, bytesText(done.FileBytes), done.SHA256)
		return nil
	}
	fmt.Fprintf(s.out, "backup written to %s: %s, %s of keys and values; file of %s, sha256 %s\n",
		file, plural(int(done.Keys), "key"), loadBytes(done.Bytes), bytesText(done.FileBytes), done.SHA256)
	return nil
}

// restoreFile runs "restore FILE [--force]": it verifies FILE whole
// first, and sends nothing if it is not a sound backup; then it uploads
// it and prints what the cluster loaded.
func (s *Shell) restoreFile(ctx context.Context, a *args) error {
	if err := a.want(1, 1); err != nil {
		return err
	}
	file, force := a.pos[0], a.has("force")
	f, err := os.Open(file)
	if err != nil {
		return usagef("cannot read the backup: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return usagef("cannot read the backup: %v", err)
	}
	if !fi.Mode().IsRegular() {
		return usagef("%s is not a file (usage: %s)", file, usageRestore)
	}
	total := fi.Size()

	p := s.startProgress("verify", "read", total, "")
	p.keys.Store(0)
	err = verifyBackup(ctx, &countingReader{r: f, p: p, total: total}, p)
	p.end(err == nil)
	if ctx.Err() != nil {
		return &transferError{op: "restore", file: file, local: true, interrupted: true, err: ctx.Err()}
	}
	if err != nil {
		return &transferError{op: "restore", file: file, local: true, err: fmt.Errorf("%w: %w", err, kvd.ErrInvalid)}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("cannot read the backup: %w", err)
	}

	p = s.startProgress("restore", "sent", total, "the cluster checks the file and loads the keys")
	res, err := s.c.Restore(ctx, &countingReader{r: f, p: p, total: total}, force)
	p.end(err == nil)
	if err != nil {
		return &transferError{op: "restore", file: file, interrupted: ctx.Err() != nil, err: err}
	}
	if s.o.JSON {
		return s.emit(res)
	}
	printRestore(s.out, file, res)
	return nil
}

// verifyBackup reads a whole backup, checking it as backup.Verify does,
// and counts its keys into p; it stops when ctx ends. An encrypted backup
// (sealed by a cluster with encryption at rest on) is checked for
// completeness only, as the client checks one it receives: kvcli lacks
// the key, so the node that opens it checks the rest.
func verifyBackup(ctx context.Context, r io.Reader, p *progress) error {
	in := bufio.NewReaderSize(&ctxReader{ctx: ctx, r: r}, 64<<10)
	if head, _ := in.Peek(atrest.StreamHeaderSize); atrest.IsSealedStream(head) {
		p.keys.Store(-1) // sealed with the rest
		_, err := atrest.CheckStream(in)
		switch {
		case err == nil, ctx.Err() != nil:
			return ctx.Err()
		case len(head) < atrest.StreamHeaderSize:
			return fmt.Errorf("%w: the encrypted backup ends inside its header", backup.ErrTruncated)
		case errors.Is(err, atrest.ErrTruncated):
			return fmt.Errorf("%w: the encrypted backup ends too soon (%v)", backup.ErrTruncated, err)
		case errors.Is(err, atrest.ErrCorrupt):
			return fmt.Errorf("%w: the encrypted backup's framing is wrong (%v)", backup.ErrCorrupt, err)
		}
		return err
	}
	br, err := backup.NewReader(in)
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		if _, err := br.Next(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		p.keys.Add(1)
	}
	return ctx.Err()
}

// ctxReader reads r until ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// headWriter keeps the first bytes written to it: enough for the header
// of a sealed stream.
type headWriter struct{ b []byte }

func (h *headWriter) Write(p []byte) (int, error) {
	if k := min(len(p), 64-len(h.b)); k > 0 {
		h.b = append(h.b, p[:k]...)
	}
	return len(p), nil
}

// printRestore reports what a restore loaded.
func printRestore(w io.Writer, file string, res api.RestoreResult) {
	fmt.Fprintf(w, "restored %s", file)
	if res.Created != "" {
		fmt.Fprintf(w, " (taken %s)", res.Created)
	}
	fmt.Fprintf(w, ": %s, %s of keys and values, into %s in %s",
		plural(int(res.Keys), "key"), loadBytes(res.Bytes), plural(res.Groups, "group"), (time.Duration(res.TookMS) * time.Millisecond).String())
	if res.Expired > 0 {
		fmt.Fprintf(w, "; %s left out, their TTL had run out", plural(int(res.Expired), "key"))
	}
	if res.Replaced {
		fmt.Fprint(w, "; the keys the cluster held were dropped first")
	}
	if res.ID != "" {
		fmt.Fprintf(w, " (restore %s)", res.ID)
	}
	fmt.Fprintln(w)
}

// completeFiles lists the files and directories (these ending in "/")
// whose path starts with partial, for the FILE of backup and restore.
func completeFiles(partial string) []string {
	dir, prefix := filepath.Split(partial)
	list := dir
	if list == "" {
		list = "."
	}
	entries, err := os.ReadDir(list)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || strings.ContainsAny(name, " \t'\"\\") || (strings.HasPrefix(name, ".") && !strings.HasPrefix(prefix, ".")) {
			continue
		}
		if e.IsDir() {
			name += string(filepath.Separator)
		}
		out = append(out, dir+name)
	}
	return out
}
