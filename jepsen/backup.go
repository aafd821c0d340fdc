package jepsen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/testkit/kvdproc"
)

// A run with Options.Backup takes backups (GET /v1/admin/backup) from
// the nodes in turn while its clients run and its nemesis strikes, and
// judges them once the run is over. Two things are checked that the
// workload's history cannot show. The cut: every backup is whole (its
// checksums and counts hold), holds no key twice, and keeps the
// workload's invariant over the keys (see StateChecker: the bank's total,
// which a backup cutting a cross-group transaction in two would break).
// The restore: each backup is loaded (POST /v1/admin/restore) into a
// fresh cluster of another shape (one node, one group more than the run's
// cluster, so every key is rehashed to another owner), which must then
// hold exactly the backup's keys and values; loading into a cluster that
// holds keys must be refused (409 conflict) without force and replace
// them with it.

// StateChecker is a workload with an invariant over the keys of the
// cluster at any consistent cut, such as a backup's.
type StateChecker interface {
	// CheckState judges the keys and values of one cut (every key of
	// the cluster, the workload's among them; values are not retained)
	// and returns what breaks the invariant, nothing if it holds.
	CheckState(state map[string][]byte) []string
}

// BackupTaken is one complete backup a run took.
type BackupTaken struct {
	// File is the backup, in the run's folder while the run is kept.
	File string `json:"file"`
	// Node is the node asked; Start and End when it was asked and when
	// the last byte arrived, in seconds of the run's clock.
	Node  string  `json:"node"`
	Start float64 `json:"start_s"`
	End   float64 `json:"end_s"`
	// Keys and Bytes are the backup's counts (its end chunk).
	Keys  uint64 `json:"keys"`
	Bytes uint64 `json:"bytes"`
	// Writes counts the acknowledged writes whose calls overlapped the
	// backup: more than none shows it was taken while the workload
	// wrote.
	Writes int `json:"writes_during"`
	// Restored is what restoring it answered.
	Restored *api.RestoreResult `json:"restored,omitempty"`
}

// BackupReport is what a run's backups came to.
type BackupReport struct {
	Taken []BackupTaken `json:"taken"`
	// Attempts counts the attempts to take one by outcome: ok,
	// unavailable (503, retried), overloaded (429, retried),
	// unreachable (no answer: the node is down or paused), cut (the
	// stream ended before the backup's end: the node failed), stalled
	// (no end within the attempt's time), refused and corrupt (a breach
	// of the contract), and stopped (the run ended first); backups.jsonl
	// in the run's folder lists every attempt.
	Attempts map[string]int `json:"attempts"`
	// Restore describes the cluster the backups were restored into.
	Restore string `json:"restore,omitempty"`
}

// backupAttempt is one attempt to take a backup, as backups.jsonl in a
// run's folder lists it.
type backupAttempt struct {
	Node    string  `json:"node"`
	Start   float64 `json:"start_s"`
	End     float64 `json:"end_s"`
	Outcome string  `json:"outcome"`
	Error   string  `json:"error,omitempty"`
}

// The outcomes of an attempt to take a backup (see BackupReport).
const (
	backupOK          = "ok"
	backupUnavailable = "unavailable"
	backupOverloaded  = "overloaded"
	backupUnreachable = "unreachable"
	backupCut         = "cut"
	backupStalled     = "stalled"
	backupRefused     = "refused"
	backupCorrupt     = "corrupt"
	backupStopped     = "stopped"
)

// Timing of the backups of a run.
const (
	// backupAttemptTimeout bounds one attempt, from the request to the
	// last byte: a backup of the suite's few keys takes milliseconds
	// unless a group it must cut has no leader.
	backupAttemptTimeout = 20 * time.Second
	// backupRetry is the pause after an attempt that failed.
	backupRetry = 250 * time.Millisecond
	// backupsPerRun is about how many complete backups a run takes:
	// they are spaced over its duration.
	backupsPerRun = 8
	// restoreTimeout bounds one restore of a backup.
	restoreTimeout = 60 * time.Second
	// expiryMargin is how soon before or after a restore a key's expiry
	// makes its presence in the restored cluster uncertain.
	expiryMargin = 5 * time.Second
)

// backupTaker takes backups from the nodes in turn, into dir, while a
// run's clients run. Run owns it: start, then stop once the clients have
// stopped; the fields below are its goroutine's until stop returns.
type backupTaker struct {
	c     *Cluster
	h     *History
	dir   string
	every time.Duration
	hc    *http.Client
	logf  func(format string, args ...any)

	taken    []BackupTaken
	attempts map[string]int
	// tries is every attempt, for backups.jsonl in the run's folder.
	tries []backupAttempt
	// res collects the breaches of the contract seen while taking.
	res CheckResult

	cancel context.CancelFunc
	done   chan struct{}
}

// newBackupTaker prepares to take backups of c into dir, about
// backupsPerRun of them over a run of the given duration.
func newBackupTaker(c *Cluster, h *History, dir string, duration time.Duration, logf func(string, ...any)) *backupTaker {
	return &backupTaker{c: c, h: h, dir: dir, every: max(time.Second, duration/backupsPerRun), logf: logf,
		hc: c.secured(&http.Client{Transport: &http.Transport{Proxy: nil,
			DialContext: (&net.Dialer{Timeout: time.Second}).DialContext}}, ""),
		attempts: map[string]int{}}
}

// start starts taking backups until stop.
func (b *backupTaker) start(ctx context.Context) error {
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return fmt.Errorf("backups folder: %w", err)
	}
	ctx, b.cancel = context.WithCancel(ctx)
	b.done = make(chan struct{})
	go func() {
		defer close(b.done)
		b.run(ctx)
	}()
	return nil
}

// stop stops taking backups (an attempt under way is abandoned) and
// waits for the goroutine to end. It is idempotent.
func (b *backupTaker) stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	<-b.done
	b.hc.CloseIdleConnections()
}

// run asks each node in turn for a backup until ctx ends, pausing
// b.every after a complete one, a second after a 503 or 429 (their
// Retry-After) and backupRetry after any other failure.
func (b *backupTaker) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		nodes := b.c.NodeList()
		n := nodes[i%len(nodes)]
		// Named by attempt: a corrupt file is kept for the report.
		path := filepath.Join(b.dir, fmt.Sprintf("backup-%03d.kvdb", i+1))
		start := b.h.Now()
		outcome, sum, err := b.take(ctx, n, path)
		end := b.h.Now()
		if outcome != backupOK && ctx.Err() != nil {
			outcome = backupStopped
		}
		b.attempts[outcome]++
		try := backupAttempt{Node: n.ID, Start: sec(start), End: sec(end), Outcome: outcome}
		if err != nil {
			try.Error = err.Error()
		}
		b.tries = append(b.tries, try)
		switch outcome {
		case backupOK:
			b.taken = append(b.taken, BackupTaken{File: path, Node: n.ID, Start: sec(start), End: sec(end), Keys: sum.Keys, Bytes: sum.Bytes})
			b.logf("  %5.1fs  backup %d from %s: %d keys in %.0f ms", sec(end), len(b.taken), n.ID, sum.Keys, float64(end-start)/1e6)
		case backupRefused, backupCorrupt:
			b.res.fail("%.3fs: backup from %s: %s: %v", sec(start), n.ID, outcome, err)
		}
		pause := backupRetry
		switch outcome {
		case backupOK:
			pause = b.every
		case backupUnavailable, backupOverloaded:
			pause = time.Second // their Retry-After
		}
		sleepCtx(ctx, pause)
	}
}

// take asks node n for a backup into path and verifies the file. It
// returns the attempt's outcome (see BackupReport), the backup's counts
// if it is whole, and what went wrong if not. A backup that is not whole
// is removed, unless it is corrupt: that one is kept for the report.
func (b *backupTaker) take(ctx context.Context, n *kvdproc.Node, path string) (string, backup.Summary, error) {
	actx, cancel := context.WithTimeout(ctx, backupAttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, n.URL()+"/v1/admin/backup", nil)
	if err != nil {
		return backupRefused, backup.Summary{}, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return backupUnreachable, backup.Summary{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return refusal(resp)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
		return backupRefused, backup.Summary{}, fmt.Errorf("200 with Content-Type %q, not application/octet-stream", ct)
	}
	f, err := os.Create(path)
	if err != nil {
		return backupRefused, backup.Summary{}, err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil && cerr != nil {
		return backupRefused, backup.Summary{}, cerr
	}
	if err != nil {
		os.Remove(path)
		if actx.Err() != nil && ctx.Err() == nil {
			return backupStalled, backup.Summary{}, err
		}
		return backupCut, backup.Summary{}, err
	}
	_, sum, err := verifyBackup(path)
	switch {
	case errors.Is(err, backup.ErrTruncated):
		os.Remove(path)
		return backupCut, backup.Summary{}, err
	case err != nil:
		return backupCorrupt, backup.Summary{}, fmt.Errorf("%s: %w", path, err)
	}
	return backupOK, sum, nil
}

// refusal classifies an answer other than 200 to a backup request: a
// 503 (the cut cannot be taken now) and a 429 are to be retried, and
// must carry the contract's JSON error and a Retry-After; anything else
// is a breach.
func refusal(resp *http.Response) (string, backup.Summary, error) {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	err := fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	outcome := backupRefused
	switch resp.StatusCode {
	case http.StatusServiceUnavailable:
		outcome = backupUnavailable
	case http.StatusTooManyRequests:
		outcome = backupOverloaded
	default:
		return outcome, backup.Summary{}, err
	}
	var e api.Error
	if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		return backupRefused, backup.Summary{}, fmt.Errorf("%w (not the contract's JSON error)", err)
	}
	if resp.Header.Get("Retry-After") == "" {
		return backupRefused, backup.Summary{}, fmt.Errorf("%w (no Retry-After)", err)
	}
	return outcome, backup.Summary{}, err
}

// verifyBackup checks the whole file at path (backup.Verify).
func verifyBackup(path string) (backup.Header, backup.Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return backup.Header{}, backup.Summary{}, err
	}
	defer f.Close()
	return backup.Verify(f)
}

// backupContents is what a backup file holds.
type backupContents struct {
	header  backup.Header
	summary backup.Summary
	records map[string]backup.Record
	// dups lists the keys the file holds more than once.
	dups []string
}

// readBackup reads and checks the whole file at path.
func readBackup(path string) (*backupContents, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := backup.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	bc := &backupContents{header: r.Header(), records: map[string]backup.Record{}}
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if _, ok := bc.records[rec.Key]; ok {
			bc.dups = append(bc.dups, rec.Key)
		}
		rec.Value = bytes.Clone(rec.Value) // valid until the next call
		bc.records[rec.Key] = rec
	}
	bc.summary, _ = r.Summary()
	return bc, nil
}

// values returns the keys and values of the records.
func (bc *backupContents) values() map[string][]byte {
	out := make(map[string][]byte, len(bc.records))
	for k, r := range bc.records {
		out[k] = r.Value
	}
	return out
}

// judgeCuts checks every backup taken: whole, no key twice, a cut of
// every group of the cluster (groups are only ever added) once, the
// workload's invariant; and that at least one was
// taken while acknowledged writes were in flight. It fills in each
// backup's Writes.
func (b *backupTaker) judgeCuts(w Workload, ops []Op) CheckResult {
	res := b.res
	sc, _ := w.(StateChecker)
	during := 0
	for i := range b.taken {
		bt := &b.taken[i]
		bt.Writes = writesDuring(ops, int64(bt.Start*1e9), int64(bt.End*1e9))
		if bt.Writes > 0 {
			during++
		}
		name := filepath.Base(bt.File)
		bc, err := readBackup(bt.File)
		if err != nil {
			res.fail("%s (from %s at %.3fs): %v", name, bt.Node, bt.Start, err)
			continue
		}
		for _, k := range bc.dups {
			res.fail("%s (from %s at %.3fs) holds key %q more than once", name, bt.Node, bt.Start, k)
		}
		seen := map[uint64]bool{}
		for _, g := range bc.header.Groups {
			if seen[g.Group] {
				res.fail("%s (from %s at %.3fs) cuts group %d twice: %+v", name, bt.Node, bt.Start, g.Group, bc.header.Groups)
			}
			seen[g.Group] = true
		}
		for g := 1; g <= b.c.Groups(); g++ {
			if !seen[uint64(g)] {
				res.fail("%s (from %s at %.3fs) does not cut group %d: %+v", name, bt.Node, bt.Start, g, bc.header.Groups)
			}
		}
		if sc == nil {
			continue
		}
		for _, e := range sc.CheckState(bc.values()) {
			res.fail("%s (from %s, %.3fs to %.3fs, cut %+v): %s", name, bt.Node, bt.Start, bt.End, bc.header.Groups, e)
		}
	}
	if during == 0 {
		res.fail("no backup was taken while writes were acknowledged (%d taken, attempts %v)", len(b.taken), b.attempts)
	}
	what := "every backup holds its keys once"
	if sc != nil {
		what = "every backup keeps the workload's invariant"
	}
	return checkOver(res, "backup", fmt.Sprintf("%d backups taken, %d while writes were acknowledged (attempts %v); %s",
		len(b.taken), during, b.attempts, what))[0]
}

// readOnly names the operations of the workloads that write nothing.
var readOnly = map[string]bool{"read": true, "final-read": true, "get": true, "r": true}

// writesDuring counts the acknowledged writes of the clients whose call
// overlapped [start, end] (nanoseconds of the run's clock).
func writesDuring(ops []Op, start, end int64) int {
	n := 0
	for _, op := range ops {
		if op.Process >= 0 && op.Status == OK && !readOnly[op.F] && op.Call < end && op.Return > start {
			n++
		}
	}
	return n
}

// restoreTarget is the fresh cluster a run's backups are restored into;
// its clients call with the root token on a secure cluster.
type restoreTarget struct {
	c  *Cluster
	kv *kvClient
	hc *http.Client
}

// judgeRestores restores the backups taken into a fresh cluster of one
// node and groups groups, started from bin under dir (secure with sec,
// the run's cluster's credentials, unless nil): the first without
// force into the empty cluster, again without force (409 conflict), then
// with force over a key of its own, then every other one with force.
// After each restore the cluster must hold exactly the backup's keys and
// values (and keep the workload's invariant). It fills in each backup's
// Restored.
func (b *backupTaker) judgeRestores(ctx context.Context, w Workload, bin, dir string, groups int, nodeArgs []string, sec *Security, logf func(string, ...any)) (CheckResult, string) {
	var res CheckResult
	where := fmt.Sprintf("1 node, %d groups", groups)
	if len(b.taken) == 0 {
		return checkOver(res, "restore", "no backup to restore")[0], where
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	c, err := StartCluster(sctx, bin, dir, 1, groups, nodeArgs, sec)
	if err == nil {
		if err = c.WaitHealthy(sctx); err != nil {
			c.Stop()
		}
	}
	cancel()
	if err != nil {
		res.fail("start the cluster to restore into (%s): %v", where, err)
		return checkOver(res, "restore", "no restore")[0], where
	}
	defer keepLogs(c, dir, "restore-")
	defer c.Stop()
	t := &restoreTarget{c: c, kv: c.kvClient(5*time.Second, ""), hc: c.secured(&http.Client{Transport: &http.Transport{Proxy: nil}}, "")}
	defer t.kv.close()
	sc, _ := w.(StateChecker)

	restored := 0
	holdsKeys := false // whether the cluster holds keys before a restore
	for i := range b.taken {
		bt := &b.taken[i]
		name := filepath.Base(bt.File)
		bc, err := readBackup(bt.File)
		if err != nil {
			res.fail("%s: %v", name, err)
			continue
		}
		if i == 0 {
			// Into the empty cluster: no force needed.
			what := name + " into the empty cluster"
			rr, ok := t.restoreOK(ctx, &res, bt.File, false, what)
			if !ok {
				continue
			}
			bt.Restored = &rr
			restored++
			if rr.Replaced {
				res.fail("restore %s: the answer says keys were replaced: %+v", what, rr)
			}
			t.compare(ctx, &res, bc, rr, sc, what)
			holdsKeys = rr.Keys > 0
			// Again, without force, into the cluster that holds keys now.
			if holdsKeys {
				status, body, err := t.restore(ctx, bt.File, false)
				var e api.Error
				switch {
				case err != nil:
					res.fail("restore %s again without force: %v", name, err)
				case status != http.StatusConflict || json.Unmarshal(body, &e) != nil || e.Error.Code != api.CodeConflict:
					res.fail("restore %s again without force into a cluster that holds keys: %d %s, want 409 %s", name, status, bytes.TrimSpace(body), api.CodeConflict)
				}
			}
			// A key of the cluster's own, which a forced restore drops.
			op := Op{Key: "restore-check/own", Value: "x"}
			t.kv.put(ctx, &op, c.URL(0))
			if op.Status != OK {
				res.fail("write a key into the restored cluster: %+v", op)
			}
			holdsKeys = holdsKeys || op.Status != Fail
		}
		what := name + " with force"
		rr, ok := t.restoreOK(ctx, &res, bt.File, true, what)
		if !ok {
			continue
		}
		if i > 0 {
			bt.Restored = &rr
			restored++
		}
		if rr.Replaced != holdsKeys {
			res.fail("restore %s: the answer says replaced=%v, but the cluster held keys before: %v: %+v", what, rr.Replaced, holdsKeys, rr)
		}
		t.compare(ctx, &res, bc, rr, sc, what)
		holdsKeys = rr.Keys > 0
	}
	logf("  restored %d of %d backups into %s", restored, len(b.taken), where)
	return checkOver(res, "restore", fmt.Sprintf("%d of %d backups restored into %s and read back whole; a restore into a cluster that holds keys is refused without force",
		restored, len(b.taken), where))[0], where
}

// restore posts the backup at path and returns the answer's status and
// body.
func (t *restoreTarget) restore(ctx context.Context, path string, force bool) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	url := t.c.URL(0) + "/v1/admin/restore"
	if force {
		url += "?force=true"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, f)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := t.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// restoreOK restores the backup at path and decodes its 200 answer,
// retrying a 503 for a while (the fresh cluster may still be settling);
// anything else is noted in res as a failure.
func (t *restoreTarget) restoreOK(ctx context.Context, res *CheckResult, path string, force bool, what string) (api.RestoreResult, bool) {
	var rr api.RestoreResult
	for attempt := 0; ; attempt++ {
		status, body, err := t.restore(ctx, path, force)
		switch {
		case err != nil:
			res.fail("restore %s: %v", what, err)
			return rr, false
		case status == http.StatusServiceUnavailable && attempt < 20:
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		case status != http.StatusOK:
			res.fail("restore %s: %d %s", what, status, bytes.TrimSpace(body))
			return rr, false
		}
		if err := json.Unmarshal(body, &rr); err != nil {
			res.fail("restore %s: undecodable answer %q: %v", what, body, err)
			return rr, false
		}
		return rr, true
	}
}

// compare reads every key of the restored cluster back and checks it
// holds exactly what backup bc holds (keys whose expiry is near the
// restore aside), that restore's answer rr counts them, and that the
// workload's invariant holds of what was read.
func (t *restoreTarget) compare(ctx context.Context, res *CheckResult, bc *backupContents, rr api.RestoreResult, sc StateChecker, what string) {
	if rr.Keys+rr.Expired != bc.summary.Keys {
		res.fail("restore %s: the answer counts %d keys loaded and %d expired, the backup holds %d", what, rr.Keys, rr.Expired, bc.summary.Keys)
	}
	if rr.Keys > 0 && (rr.Groups < 1 || rr.Groups > t.c.Groups()) {
		res.fail("restore %s: loaded into %d groups, the cluster has %d", what, rr.Groups, t.c.Groups())
	}
	var items []api.Item
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if items, err = t.kv.scanAll(ctx, t.c.URL(0), ""); err == nil {
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	if err != nil {
		res.fail("restore %s: read the restored keys: %v", what, err)
		return
	}
	now := time.Now()
	uncertain := func(r backup.Record) bool {
		return r.Expires != 0 && time.Unix(0, r.Expires).Before(now.Add(expiryMargin))
	}
	got := map[string][]byte{}
	for _, it := range items {
		got[it.Key] = it.Value
		r, ok := bc.records[it.Key]
		switch {
		case !ok:
			res.fail("restore %s: the cluster holds key %q, which the backup does not", what, it.Key)
		case !bytes.Equal(it.Value, r.Value):
			res.fail("restore %s: key %q is %q, the backup holds %q", what, it.Key, it.Value, r.Value)
		}
	}
	missing := 0
	for _, k := range slices.Sorted(maps.Keys(bc.records)) {
		if _, ok := got[k]; !ok && !uncertain(bc.records[k]) {
			if missing++; missing <= 5 {
				res.fail("restore %s: key %q of the backup is missing", what, k)
			}
		}
	}
	if missing > 5 {
		res.fail("restore %s: %d keys of the backup are missing in all", what, missing)
	}
	if sc != nil {
		for _, e := range sc.CheckState(got) {
			res.fail("restore %s: the restored cluster: %s", what, e)
		}
	}
}

// keepLogs moves the node logs of cluster c, whose folder is dir, into
// dir's parent, each name prefixed: the run's folder keeps them when dir
// (data) is removed.
func keepLogs(c *Cluster, dir, prefix string) {
	for _, n := range c.Nodes {
		os.Rename(n.LogPath, filepath.Join(filepath.Dir(dir), prefix+filepath.Base(n.LogPath)))
	}
}
