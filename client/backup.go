package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/wire"
)

// Backup writes a backup of the whole cluster to w: every key with its
// value and absolute expiry deadline, at one consistent cut, in the
// format of package backup. Any node takes it; nodes are tried in the
// order of the admin calls, and the next one is asked after a node that
// cannot be reached or answers 503 (the cut cannot be taken now) only
// while no byte has been written to w.
//
// The stream is verified as it is copied (every chunk's checksum, the
// SHA-256 of the whole file, the counts of its end chunk), and Backup
// answers the verified summary. After an error, w may hold part of a
// file, cut short or damaged, which the caller must discard: only a nil
// error vouches for what was written to w.
//
// The caller's ctx bounds the whole transfer, however long. When ctx has
// no deadline, the client's Timeout bounds each wait in which nothing
// arrives (the node's answer, then every stretch between bytes of the
// stream), not the transfer.
//
// A cluster whose nodes have encryption at rest on answers the backup
// sealed under their key (an atrest stream, which starts with
// "KVDENCS1"): the client, which lacks the key, writes it to w as it
// comes and checks it for completeness only, that its framing is whole
// (atrest.CheckStream): not cut short, not extended. Its content is
// checked by the node that opens it (a restore), not here, and the
// Summary answered is zero (its counts are sealed with it).
//
// Errors: kvd.ErrConflict while a restore runs; kvd.ErrUnavailable when
// no node could take the cut, or the stream broke or arrived damaged (the
// error then matches backup.ErrTruncated or backup.ErrCorrupt as well);
// an error of w's Write, wrapped as it is.
func (c *Client) Backup(ctx context.Context, w io.Writer) (backup.Summary, error) {
	if c.closed.Load() {
		return backup.Summary{}, kvd.ErrClosed
	}
	var lastErr error
	for _, n := range c.adminNodes() {
		if ctx.Err() != nil {
			break
		}
		sum, written, err := c.backupFrom(ctx, n, w)
		if err == nil {
			return sum, nil
		}
		if written > 0 || !errors.Is(err, kvd.ErrUnavailable) {
			return backup.Summary{}, fmt.Errorf("backup: %w", err)
		}
		lastErr = err
	}
	if ctx.Err() != nil && lastErr == nil {
		lastErr = ctx.Err()
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no node to ask: %w", kvd.ErrUnavailable)
	}
	return backup.Summary{}, fmt.Errorf("backup: %w", lastErr)
}

// backupFrom takes a backup from node n into w. It answers how many bytes
// it wrote to w, also on an error.
func (c *Client) backupFrom(ctx context.Context, n *node, w io.Writer) (backup.Summary, int64, error) {
	// The node answers once it has taken the cut, which may take it
	// up to cutWait through leader changes and locks that drain.
	ctx, guard := c.guardStalls(ctx, cutWait)
	defer guard.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url+"/v1/admin/backup", nil)
	if err != nil {
		return backup.Summary{}, 0, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
	}
	req.Header.Set("Accept", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return backup.Summary{}, 0, fmt.Errorf("node %s: %v: %w", n.id, guard.why(ctx, err), kvd.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return backup.Summary{}, 0, fmt.Errorf("node %s: %v: %w", n.id, guard.why(ctx, err), kvd.ErrUnavailable)
		}
		return backup.Summary{}, 0, errorFrom(resp.StatusCode, resp.Header, b)
	}
	guard.progress()
	tee := &teeReader{r: resp.Body, w: w, progress: guard.progress}
	in := bufio.NewReaderSize(tee, 64<<10)
	head, _ := in.Peek(atrest.StreamHeaderSize) // fewer bytes for a shorter stream
	var sum backup.Summary
	if atrest.IsSealedStream(head) {
		// Sealed by a node with encryption on: the client lacks the key,
		// so it checks the framing only (see Backup).
		_, err = atrest.CheckStream(in)
		switch {
		case len(head) < atrest.StreamHeaderSize && err != nil:
			err = fmt.Errorf("%w: the encrypted backup ends inside its header", backup.ErrTruncated)
		case errors.Is(err, atrest.ErrTruncated):
			err = fmt.Errorf("%w: the encrypted backup ends too soon: %w", backup.ErrTruncated, err)
		case errors.Is(err, atrest.ErrCorrupt):
			err = fmt.Errorf("%w: the encrypted backup's framing is wrong: %w", backup.ErrCorrupt, err)
		}
	} else {
		var br *backup.Reader
		br, err = backup.NewReader(in)
		for err == nil {
			_, err = br.Next()
		}
		if errors.Is(err, io.EOF) {
			sum, _ = br.Summary()
			err = nil
		}
	}
	switch {
	case tee.werr != nil:
		return backup.Summary{}, tee.n, fmt.Errorf("write the backup after %d bytes: %w", tee.n, tee.werr)
	case err != nil:
		if cause := guard.stalled(ctx); cause != nil {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		return backup.Summary{}, tee.n, fmt.Errorf("node %s: the stream broke or arrived damaged after %d bytes: %w: %w", n.id, tee.n, err, kvd.ErrUnavailable)
	}
	return sum, tee.n, nil
}

// teeReader writes to w what it reads from r, telling progress of every
// byte read. It keeps the error of w apart from those of r, so that a
// full disk is not taken for a broken stream.
type teeReader struct {
	r        io.Reader
	w        io.Writer
	progress func()
	n        int64
	werr     error
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.progress()
		m, werr := t.w.Write(p[:n])
		t.n += int64(m)
		t.progress() // time spent writing is not the stream's
		if werr == nil && m < n {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			t.werr = werr
			return n, werr
		}
	}
	return n, err
}

// Restore loads the backup read from r into the cluster through one node
// and answers what was loaded. Without force, a cluster that holds keys
// refuses it; with force, the cluster's keys are dropped first.
//
// r is streamed, never held whole in memory. When r tells its length (a
// regular *os.File, from its offset, or a reader with a Len() int method
// such as *bytes.Reader), the body is sent with that Content-Length,
// otherwise chunked. r is not read once Restore has returned.
//
// A restore is not idempotent in general: a repeat of one that was loaded
// is refused, or with force replaces the keys written since. So it is
// never sent again once a byte of r has been read: the next node is asked
// only after a node that could not be reached or answered 503 before
// that.
//
// The caller's ctx bounds the whole restore. When ctx has no deadline,
// the client's Timeout bounds each wait for the node to take the next
// bytes of the body; once the node has the whole file it checks it and
// loads the keys into the groups before it answers, which takes a while
// for a large backup: that wait is bounded by ctx alone (give ctx a
// deadline to bound it).
//
// r may be an encrypted backup as Backup writes it from a cluster with
// encryption at rest on: it is sent as it is, and the node opens it with
// its keys.
//
// Errors: kvd.ErrInvalid for a file the node refuses (corrupt, truncated,
// of another format version, empty, encrypted under a key the node does
// not hold: the message says which; nothing was changed); kvd.ErrConflict when the cluster holds keys and force is not
// set, or a restore or a slot move is under way (nothing was changed);
// kvd.ErrUnavailable when nothing was done (no node could be reached, or
// one answered 503); kvd.ErrUnknownOutcome when the node may have acted
// without answering (the connection broke, ctx ended, or a 5xx other
// than 503): the cluster then holds none of the backup or, once the
// restore's decision was made, all of it when the restore has finished in
// the background (it is all or nothing); look at it before trying again.
func (c *Client) Restore(ctx context.Context, r io.Reader, force bool) (api.RestoreResult, error) {
	if c.closed.Load() {
		return api.RestoreResult{}, kvd.ErrClosed
	}
	path := "/v1/admin/restore"
	if force {
		path += "?force=true"
	}
	size := bodyLength(r)
	var lastErr error
	for _, n := range c.adminNodes() {
		if ctx.Err() != nil {
			break
		}
		res, read, err := c.restoreTo(ctx, n, path, r, size)
		if err == nil {
			return res, nil
		}
		if read || !errors.Is(err, kvd.ErrUnavailable) || errors.Is(err, kvd.ErrUnknownOutcome) {
			return api.RestoreResult{}, fmt.Errorf("restore: %w", err)
		}
		lastErr = err
	}
	if ctx.Err() != nil && lastErr == nil {
		lastErr = ctx.Err()
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no node to ask: %w", kvd.ErrUnavailable)
	}
	return api.RestoreResult{}, fmt.Errorf("restore: %w", lastErr)
}

// restoreTo sends a restore to node n. It reports whether any byte of r
// was read, also on an error.
func (c *Client) restoreTo(ctx context.Context, n *node, path string, r io.Reader, size int64) (api.RestoreResult, bool, error) {
	ctx, guard := c.guardStalls(ctx, 0)
	defer guard.stop()
	body := &uploadReader{r: r, progress: guard.progress, sent: guard.pause}
	defer body.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url+path, body)
	if err != nil {
		return api.RestoreResult{}, false, fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	switch {
	case size == 0:
		req.Body, req.ContentLength = http.NoBody, 0
	case size > 0:
		req.ContentLength = size
	}
	hc, done := c.freshConnClient()
	defer done()
	resp, err := hc.Do(req)
	if err != nil {
		read, rerr := body.finish()
		why := guard.why(ctx, err)
		if rerr != nil {
			why = fmt.Errorf("read the backup after %d bytes: %w", read, rerr)
		}
		if read == 0 && wire.NeverSent(err) {
			return api.RestoreResult{}, false, fmt.Errorf("node %s: %v: %w", n.id, why, kvd.ErrUnavailable)
		}
		return api.RestoreResult{}, read > 0, fmt.Errorf("node %s: no answer after %d bytes were sent: %v: %w", n.id, read, why, kvd.ErrUnknownOutcome)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	read, _ := body.finish()
	if err != nil {
		if resp.StatusCode == http.StatusServiceUnavailable {
			return api.RestoreResult{}, read > 0, fmt.Errorf("node %s: %v: %w", n.id, guard.why(ctx, err), kvd.ErrUnavailable)
		}
		return api.RestoreResult{}, read > 0, fmt.Errorf("node %s: answer cut short: %v: %w", n.id, guard.why(ctx, err), kvd.ErrUnknownOutcome)
	}
	res := &result{status: resp.StatusCode, header: resp.Header, body: b, node: n}
	if res.status != http.StatusOK {
		return api.RestoreResult{}, read > 0, writeError(res)
	}
	var out api.RestoreResult
	if err := json.Unmarshal(b, &out); err != nil {
		return api.RestoreResult{}, read > 0, fmt.Errorf("node %s: decode answer: %v: %w", n.id, err, kvd.ErrUnknownOutcome)
	}
	return out, read > 0, nil
}

// freshConnClient returns an HTTP client like the client's that sends
// each request on a new connection, and a function that releases it. A
// restore goes on one: on a pooled connection that the node closed
// meanwhile (it restarted), the request would fail once its body had
// started, leaving its outcome unknown, where a new connection fails to
// dial, promising nothing was sent. A client given an HTTPClient with a
// transport of its own kind is used as it is.
func (c *Client) freshConnClient() (*http.Client, func()) {
	var tr *http.Transport
	base := c.hc.Transport
	tok, withToken := base.(tokenTransport)
	if withToken {
		base = tok.base
	}
	switch t := base.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport)
	case *http.Transport:
		tr = t
	default:
		return c.hc, func() {}
	}
	fresh := tr.Clone()
	fresh.DisableKeepAlives = true
	hc := *c.hc
	hc.Transport = fresh
	if withToken {
		hc.Transport = tokenTransport{base: fresh, header: tok.header}
	}
	return &hc, fresh.CloseIdleConnections
}

// bodyLength returns how many bytes r holds from its position, -1 when it
// cannot tell.
func bodyLength(r io.Reader) int64 {
	switch v := r.(type) {
	case interface{ Len() int }:
		return int64(v.Len())
	case *os.File:
		fi, err := v.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return -1
		}
		off, err := v.Seek(0, io.SeekCurrent)
		if err != nil {
			return -1
		}
		return max(fi.Size()-off, 0)
	}
	return -1
}

// uploadReader is a request body over the caller's reader: it counts
// what was read, tells progress and the end of r, and stops reading the
// caller's reader once closed or finished (the transport may go on
// reading a body after the answer came).
type uploadReader struct {
	// mu protects everything below; a Read holds it while it reads r.
	mu       sync.Mutex
	r        io.Reader
	progress func()
	sent     func() // at the end of r
	n        int64
	err      error // r's error, io.EOF excepted
	done     bool
}

func (u *uploadReader) Read(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return 0, errUploadDone
	}
	n, err := u.r.Read(p)
	u.n += int64(n)
	if n > 0 {
		u.progress()
	}
	switch {
	case errors.Is(err, io.EOF):
		u.sent()
	case err != nil:
		u.err = err
	}
	return n, err
}

// Close implements io.Closer; the caller's reader stays open.
func (u *uploadReader) Close() error {
	u.finish()
	return nil
}

// finish stops the reads of r, waiting for one under way, and answers how
// many bytes were read and r's error.
func (u *uploadReader) finish() (int64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.done = true
	return u.n, u.err
}

var errUploadDone = errors.New("the restore's answer came: the rest of the body is not sent")

// stallGuard ends a transfer that makes no progress for the client's
// Timeout, when the caller's context has no deadline (one the caller set
// bounds the whole transfer instead).
type stallGuard struct {
	d      time.Duration
	t      *time.Timer // nil without a bound
	cancel context.CancelCauseFunc
	paused atomic.Bool
}

// errStalled is the cause of a transfer ended by its stallGuard.
var errStalled = errors.New("no progress")

// guardStalls returns a context for one transfer and its guard; stop the
// guard when the transfer ends. The first wait may last first, when that
// is longer than the client's timeout.
func (c *Client) guardStalls(ctx context.Context, first time.Duration) (context.Context, *stallGuard) {
	ctx, cancel := context.WithCancelCause(ctx)
	g := &stallGuard{cancel: cancel}
	if _, ok := ctx.Deadline(); !ok {
		g.d = c.cfg.Timeout
		first = max(first, g.d)
		g.t = time.AfterFunc(first, func() {
			cancel(fmt.Errorf("%w for %s, the client's timeout (a context with a deadline bounds the whole transfer instead)", errStalled, g.d))
		})
	}
	return ctx, g
}

// cutWait bounds the wait for a node's first answer to a backup: a node
// tries to take its cut for 20 s before it answers unavailable.
const cutWait = 30 * time.Second

// progress tells the guard that the transfer moved.
func (g *stallGuard) progress() {
	if g.t != nil && !g.paused.Load() {
		g.t.Reset(g.d)
	}
}

// pause lifts the bound for the rest of the transfer, which is then
// bounded by the caller's context alone.
func (g *stallGuard) pause() {
	g.paused.Store(true)
	if g.t != nil {
		g.t.Stop()
	}
}

func (g *stallGuard) stop() {
	if g.t != nil {
		g.t.Stop()
	}
	g.cancel(nil)
}

// stalled returns the guard's cause when it ended the transfer in ctx.
func (g *stallGuard) stalled(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
		return cause
	}
	return nil
}

// why names the guard's cause, when it ended the transfer, rather than
// the cancelation err it caused.
func (g *stallGuard) why(ctx context.Context, err error) error {
	if cause := g.stalled(ctx); cause != nil {
		return cause
	}
	return err
}
