package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// A restore (POST /v1/admin/restore) loads a backup into the cluster, all
// or nothing, driven by the node asked:
//
//  1. the upload is written to a file in the data directory (sealed
//     under a key held in memory: see spoolBackup) and checked whole
//     (every chunk's checksum, the file's, the counts; an encrypted
//     backup is opened with the node's keys first): a damaged, cut or
//     foreign file, or one encrypted under a key the node lacks, is
//     refused before anything is written;
//  2. the map records the restore (staging): one at a time, and no slot
//     move starts meanwhile; a cluster that holds keys is refused unless
//     forced;
//  3. every key goes to the group that owns its slot now, staged there
//     out of sight through the group's log (CmdRestore stage);
//  4. the map records the restore as loading: from here it finishes
//     whatever crashes, driven by this node or, failing it, by the
//     system group's leader;
//  5. every group is sealed (it serves nothing), then loads what it
//     staged in bounded steps, and unseals with the last;
//  6. the map forgets the restore.
//
// A failure before step 4 drops what was staged; readers never saw it. A
// reader meets a sealed group as unavailable (retried), never a group
// half loaded.

// restorePage bounds the keys and values staged by one entry.
const restorePage = 1 << 20

// Map edits of restores.
const (
	editRestoreBegin = "restore-begin" // record Restore (staging)
	editRestoreLoad  = "restore-load"  // Restore.ID's keys are staged in Restore.Groups: load them
	editRestoreEnd   = "restore-end"   // forget Restore.ID
)

// applyRestoreEdit makes a restore edit on m; handled is false for an
// edit of another kind.
func (e mapEdit) applyRestoreEdit(m *kvd.Map) (handled bool, err error) {
	r := e.Restore
	switch e.Op {
	case editRestoreBegin, editRestoreLoad, editRestoreEnd:
	default:
		return false, nil
	}
	if r == nil || r.ID == "" {
		return true, fmt.Errorf("%w: %s names no restore", kvd.ErrInvalid, e.Op)
	}
	cur := m.Restore
	switch e.Op {
	case editRestoreBegin:
		switch {
		case cur != nil && cur.ID == r.ID:
			return true, errNoChange
		case cur != nil && cur.State == kvd.RestoreLoading:
			return true, fmt.Errorf("restore %s is loading: %w", cur.ID, kvd.ErrConflict)
		case cur != nil && e.Displace != cur.ID:
			return true, fmt.Errorf("restore %s from node %s is under way since %s: %w", cur.ID, cur.Node, cur.Started, kvd.ErrConflict)
		}
		for _, mv := range m.Moves {
			if mv.Active() {
				return true, fmt.Errorf("slot move %s is under way: %w", mv.ID, kvd.ErrConflict)
			}
		}
		nr := *r
		nr.State = kvd.RestoreStaging
		m.Restore = &nr
	case editRestoreLoad:
		switch {
		case cur == nil || cur.ID != r.ID:
			return true, fmt.Errorf("restore %s is no longer under way: %w", r.ID, kvd.ErrConflict)
		case cur.State == kvd.RestoreLoading:
			return true, errNoChange
		}
		nr := *cur
		nr.State, nr.Groups = kvd.RestoreLoading, append([]kvd.GroupID(nil), r.Groups...)
		m.Restore = &nr
	case editRestoreEnd:
		switch {
		case cur == nil || cur.ID != r.ID:
			return true, errNoChange
		case e.Abort && cur.State == kvd.RestoreLoading:
			return true, fmt.Errorf("restore %s is loading: it can only finish: %w", r.ID, kvd.ErrConflict)
		}
		m.Restore = nil
	}
	return true, nil
}

// editRestore records a restore edit in the map. An embedded store keeps
// no map of its own (its one node has no addresses, which a stored map
// needs): there, one group holds everything, and its seal is the
// decision (see superviseEmbeddedRestore).
func (s *Server) editRestore(ctx context.Context, e mapEdit) error {
	if s.cfg.Embedded {
		return nil
	}
	_, err := s.editMap(ctx, e)
	return err
}

// restores tracks the restores this node drives.
type restores struct {
	mu sync.Mutex // protects running and seen
	// running are the restores this node drives now.
	running map[string]bool
	// seen is when this node, as the system group's leader, first saw a
	// loading restore that no one here drives.
	seen map[string]time.Time
}

// Restore loads the backup read from r into the cluster (see above).
func (s *Server) Restore(ctx context.Context, r io.Reader, force bool) (api.RestoreResult, error) {
	began := time.Now()
	res, err := s.restore(ctx, r, force)
	res.TookMS = time.Since(began).Milliseconds()
	result := "done"
	if err != nil {
		result = "failed"
		s.log.Warn("restore failed", "restore", res.ID, "err", err)
	} else {
		s.log.Info("restore loaded", "restore", res.ID, "keys", res.Keys, "took", time.Since(began).Round(time.Millisecond))
	}
	s.metrics.restores.WithLabelValues(result).Inc()
	return res, err
}

func (s *Server) restore(ctx context.Context, r io.Reader, force bool) (api.RestoreResult, error) {
	res := api.RestoreResult{ID: newBackupID()}
	if !force {
		// Refuse at once rather than after a large upload; the check is
		// made again once the restore is recorded.
		if held, n, err := s.groupsHoldingKeys(ctx); err == nil && held > 0 {
			return res, fmt.Errorf("restore: the cluster holds keys (in %d of its %d groups): force the restore (?force=true, kvcli restore --force) to replace them: %w", held, n, kvd.ErrConflict)
		}
	}
	spool, hdr, err := s.spoolBackup(r)
	if err != nil {
		return res, err
	}
	defer spool.remove()
	res.Created = hdr.Created.Format(time.RFC3339)
	m := s.Map()
	ids := m.GroupIDs()
	if err := s.checkFeature(groupHosts(m, ids...), api.FeatureBackup); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	rs := &kvd.Restore{ID: res.ID, Node: s.id, Force: force, Started: time.Now().UTC().Format(time.RFC3339)}
	s.restores.mu.Lock()
	s.restores.running[rs.ID] = true
	s.restores.mu.Unlock()
	defer func() {
		s.restores.mu.Lock()
		delete(s.restores.running, rs.ID)
		s.restores.mu.Unlock()
	}()
	if err := s.beginRestore(ctx, rs); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	decided := false
	defer func() {
		if !decided {
			s.abortRestore(ctx, rs, ids)
		}
	}()
	held, _, err := s.groupsHoldingKeys(ctx)
	if err != nil {
		return res, err
	}
	if held > 0 && !force {
		return res, fmt.Errorf("restore: the cluster holds keys (in %d of its %d groups): force the restore (?force=true, kvcli restore --force) to replace them: %w", held, len(ids), kvd.ErrConflict)
	}
	res.Replaced = held > 0
	if err := s.stageBackup(ctx, spool, m, rs.ID, &res); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	rs.Groups = ids
	failpoint.Hit(failpoint.RestoreStaged)
	if err := s.editRestore(ctx, mapEdit{Op: editRestoreLoad, Restore: rs}); err != nil {
		// Recorded or not is unknown if the answer was lost: the map
		// says, and an abort of a loading restore changes nothing.
		return res, fmt.Errorf("restore: record it as loading: %w", err)
	}
	decided = true
	failpoint.Hit(failpoint.RestoreLoading)
	res.Groups = len(ids)
	if err := s.loadRestore(ctx, rs); err != nil {
		return res, fmt.Errorf("restore %s is staged everywhere and loads in the background (%v): %w", rs.ID, err, kvd.ErrUnknownOutcome)
	}
	return res, nil
}

// maxBackupChunk is the largest chunk of a backup this node restores:
// what a writer fills (1 MiB) and one record of the largest key and
// value the node takes. A larger one is refused as damaged, so that a
// hostile upload cannot make the node hold more.
func (s *Server) maxBackupChunk() int {
	return 1<<20 + s.cfg.Limits.MaxKeyBytes + s.cfg.Limits.MaxValueBytes + 64
}

// groupsHoldingKeys counts the groups that hold keys, of the n groups of
// the map.
func (s *Server) groupsHoldingKeys(ctx context.Context) (held, n int, err error) {
	ids := s.Map().GroupIDs()
	for _, g := range ids {
		a, err := s.moveRead(ctx, g, moveReadRequest{Op: "haskeys"})
		if err != nil {
			return 0, 0, fmt.Errorf("restore: does group %d hold keys: %w", g, err)
		}
		if a.More {
			held++
		}
	}
	return held, len(ids), nil
}

// spoolBackup writes the backup read from r to a file in the data
// directory, checking it whole as it goes, and returns the spool (read it
// with open) and the backup's header.
//
// r may hold a backup as package backup writes it, or one sealed by a
// node with encryption on (see Backup), told apart by its first bytes. A
// sealed one opens with a key of this node's ring: it is refused, before
// anything is written anywhere, if this node has no encryption or lacks
// its key, and if it fails to open whole (damaged, cut short, extended).
//
// What is spooled is the backup in the clear, sealed under a key of its
// own: a random key held in memory by this restore alone, whether or not
// the node has encryption on. So the spool never holds a value in the
// clear on disk, a spool a crash left behind is unreadable to anyone (its
// key died with the process), and reading it back depends neither on the
// key file (reloaded meanwhile, a key rotated out) nor on a second code
// path for nodes without encryption; the cost, AES-GCM over the upload
// once more, is small beside staging every key through the groups' logs.
func (s *Server) spoolBackup(r io.Reader) (*restoreSpoolFile, backup.Header, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var in io.Reader = br
	// The head of a sealed stream: its magic, key id and nonce prefix
	// (Peek answers fewer bytes for a shorter upload).
	head, err := br.Peek(64)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, backup.Header{}, fmt.Errorf("restore: read the upload: %w: %w", err, kvd.ErrInvalid)
	}
	sealed := atrest.IsSealedStream(head)
	if sealed {
		if in, err = s.openSealedBackup(br, head); err != nil {
			return nil, backup.Header{}, err
		}
	}
	spoolRing, err := atrest.NewKeyring(atrest.NewKey())
	if err != nil {
		return nil, backup.Header{}, fmt.Errorf("restore: %w", err)
	}
	f, err := os.CreateTemp(s.cfg.DataDir, restoreSpool)
	if err != nil {
		return nil, backup.Header{}, fmt.Errorf("restore: spool the upload: %w", err)
	}
	sp := &restoreSpoolFile{f: f, ring: spoolRing}
	fail := func(err error) (*restoreSpoolFile, backup.Header, error) {
		sp.remove()
		return nil, backup.Header{}, err
	}
	sw, err := spoolRing.NewWriter(&diskWriter{f: f, s: s}, []byte(spoolAD))
	if err != nil {
		return fail(fmt.Errorf("restore: spool the upload: %w", err))
	}
	hdr, _, err := backup.VerifyLimit(io.TeeReader(in, sw), s.maxBackupChunk())
	if err == nil && sealed {
		// The backup ended, but the sealed stream must end too, with
		// its last chunk: else it was cut short or extended.
		_, err = io.Copy(io.Discard, in)
	}
	if err == nil {
		err = sw.Close()
	}
	switch {
	case err == nil:
	case errors.Is(err, kvd.ErrInsufficientStorage):
		return fail(fmt.Errorf("restore: spool the upload: %w", err))
	case errors.Is(err, atrest.ErrCorrupt):
		return fail(fmt.Errorf("restore: the encrypted backup is corrupt or truncated (it fails to open whole): %v: %w", err, kvd.ErrInvalid))
	default:
		return fail(fmt.Errorf("restore: %w: %w", err, kvd.ErrInvalid))
	}
	return sp, hdr, nil
}

// openSealedBackup opens the sealed backup br, whose first bytes are head,
// with this node's ring, or says why it cannot (ErrInvalid).
func (s *Server) openSealedBackup(br io.Reader, head []byte) (io.Reader, error) {
	id, err := atrest.StreamKey(head)
	if err != nil {
		return nil, fmt.Errorf("restore: the backup is encrypted, but is truncated inside its header (%d bytes): %w", len(head), kvd.ErrInvalid)
	}
	ring := s.cfg.Encryption.Ring()
	if ring == nil {
		return nil, fmt.Errorf("restore: the backup is encrypted (key id %s); this node has no --encryption-key-file: start the nodes with the key file that holds that key: %w", id, kvd.ErrInvalid)
	}
	if !ring.Has(id) {
		return nil, fmt.Errorf("restore: the backup is encrypted under key id %s, which this node's key file (--encryption-key-file) lacks (it holds %s): add that key to the key file: %w", id, strings.Join(ring.Names(), ", "), kvd.ErrInvalid)
	}
	in, err := ring.NewReader(br, []byte(backupAD))
	if err != nil {
		return nil, fmt.Errorf("restore: open the encrypted backup: %v: %w", err, kvd.ErrInvalid)
	}
	return in, nil
}

// spoolAD is the associated data of a restore's spool.
const spoolAD = "kvd restore spool"

// restoreSpoolFile is a restore's upload, spooled to the data directory
// sealed under a key held only by ring (see spoolBackup).
type restoreSpoolFile struct {
	f    *os.File
	ring *atrest.Keyring
}

// open returns a reader of the spooled backup from its start.
func (sp *restoreSpoolFile) open() (io.Reader, error) {
	if _, err := sp.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return sp.ring.NewReader(bufio.NewReaderSize(sp.f, 256<<10), []byte(spoolAD))
}

// remove closes and removes the spool.
func (sp *restoreSpoolFile) remove() {
	sp.f.Close()
	os.Remove(sp.f.Name())
}

// restoreSpool names the files restores spool their uploads to, in the
// data directory; those a crash left behind are removed at start.
const restoreSpool = "restore-*.tmp"

// removeLeftovers removes the files of dir that match pattern and are
// older than age: temporary files of a process that crashed.
func removeLeftovers(dir, pattern string, age time.Duration, log *slog.Logger) {
	matches, _ := filepath.Glob(filepath.Join(dir, pattern))
	for _, path := range matches {
		if st, err := os.Stat(path); err != nil || time.Since(st.ModTime()) < age {
			continue
		}
		if err := os.Remove(path); err == nil {
			log.Info("removed a temporary file a crash left", "file", path)
		}
	}
}

// diskWriter writes to f while the node's disk takes writes.
type diskWriter struct {
	f *os.File
	s *Server
	n int
}

func (w *diskWriter) Write(p []byte) (int, error) {
	if w.n += len(p); w.n >= 4<<20 {
		if err := w.s.disk.admit(w.n); err != nil {
			return 0, err
		}
		w.n = 0
	}
	n, err := w.f.Write(p)
	if err != nil {
		return n, fmt.Errorf("%v: %w", err, kvd.ErrInsufficientStorage)
	}
	return n, nil
}

// beginRestore records rs in the map, displacing a staging restore whose
// node no longer drives it.
func (s *Server) beginRestore(ctx context.Context, rs *kvd.Restore) error {
	if s.cfg.Embedded {
		s.restores.mu.Lock()
		defer s.restores.mu.Unlock()
		if len(s.restores.running) > 1 {
			return fmt.Errorf("another restore is under way: %w", kvd.ErrConflict)
		}
		return nil
	}
	e := mapEdit{Op: editRestoreBegin, Restore: rs}
	_, err := s.editMap(ctx, e)
	if !errors.Is(err, kvd.ErrConflict) {
		return err
	}
	cur := s.Map().Restore
	if cur == nil || cur.State != kvd.RestoreStaging || s.drivesRestore(ctx, cur) {
		return err
	}
	s.log.Warn("restore: displacing a restore its node no longer drives", "restore", cur.ID, "node", cur.Node)
	e.Displace = cur.ID
	_, err = s.editMap(ctx, e)
	return err
}

// drivesRestore tells whether r's node (as far as can be told) still
// drives it.
func (s *Server) drivesRestore(ctx context.Context, r *kvd.Restore) bool {
	if r.Node == s.id {
		s.restores.mu.Lock()
		defer s.restores.mu.Unlock()
		return s.restores.running[r.ID]
	}
	if _, ok := s.Map().Node(r.Node); !ok {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := s.peerStatus(sctx, r.Node)
	if err != nil {
		return false
	}
	for _, id := range st.Restores {
		if id == r.ID {
			return true
		}
	}
	return false
}

// runningRestores lists the restores this node drives.
func (s *Server) runningRestores() []string {
	s.restores.mu.Lock()
	defer s.restores.mu.Unlock()
	var ids []string
	for id := range s.restores.running {
		ids = append(ids, id)
	}
	return ids
}

// abortRestore forgets rs in the map, if it is still staging, and then
// drops what it staged, as far as it can. A restore the map records as
// loading (the decision was made, though its answer was lost) is left to
// finish; one whose abort the map did not take stays recorded, for this
// node to abort again (superviseRestore).
func (s *Server) abortRestore(ctx context.Context, rs *kvd.Restore, groups []kvd.GroupID) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.editRestore(actx, mapEdit{Op: editRestoreEnd, Restore: rs, Abort: true}); err != nil {
		s.log.Warn("restore: cannot forget it in the map; its staged keys stay out of sight", "restore", rs.ID, "err", err)
		return
	}
	data, _ := json.Marshal(store.RestoreOp{ID: rs.ID, Op: store.RestoreAbort})
	s.eachGroup(groups, func(g kvd.GroupID) error {
		if _, err := s.proposeIn(actx, g, store.Cmd{Kind: store.CmdRestore, Data: data}); err != nil {
			s.log.Warn("restore: cannot drop what was staged; the next restore will", "restore", rs.ID, "group", g, "err", err)
		}
		return nil
	})
}

// stageBackup stages every record of the spooled backup in the group
// that owns its key's slot in m.
func (s *Server) stageBackup(ctx context.Context, spool *restoreSpoolFile, m *kvd.Map, id string, res *api.RestoreResult) error {
	in, err := spool.open()
	if err != nil {
		return fmt.Errorf("read the spooled upload: %w", err)
	}
	br, err := backup.NewReaderLimit(in, s.maxBackupChunk())
	if err != nil {
		return err
	}
	type pending struct {
		keys  []store.MovedKey
		bytes int
		sent  uint64 // keys staged so far
		reset bool   // the first piece went
	}
	pend := map[kvd.GroupID]*pending{}
	for _, g := range m.GroupIDs() {
		pend[g] = &pending{}
	}
	stage := func(g kvd.GroupID, p *pending) error {
		data, err := json.Marshal(store.RestoreOp{ID: id, Op: store.RestoreStage, Reset: !p.reset, Keys: p.keys})
		if err != nil {
			return err
		}
		r, err := s.proposeWithRetry(ctx, g, store.Cmd{Kind: store.CmdRestore, Data: data})
		if err != nil {
			return fmt.Errorf("stage keys in group %d: %w", g, err)
		}
		p.sent += uint64(len(p.keys))
		if r.Version != p.sent {
			return fmt.Errorf("group %d holds %d keys of the restore, %d were sent (a key twice in the backup, or another restore's staging): %w", g, r.Version, p.sent, kvd.ErrConflict)
		}
		p.reset, p.keys, p.bytes = true, p.keys[:0], 0
		return nil
	}
	for _, g := range m.GroupIDs() {
		if err := stage(g, pend[g]); err != nil {
			return err
		}
	}
	for {
		rec, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if rec.Expires != 0 && rec.Expires <= time.Now().UnixNano() {
			res.Expired++
			continue
		}
		g, ok := m.GroupOf(kvd.Slot(rec.Key))
		if !ok {
			return fmt.Errorf("slot %d has no group: %w", kvd.Slot(rec.Key), kvd.ErrUnavailable)
		}
		p := pend[g]
		// A page is sent before it would pass restorePage, so that an
		// entry holds at most one largest value, not two.
		n := len(rec.Key) + len(rec.Value)
		if len(p.keys) > 0 && p.bytes+n > restorePage {
			if err := stage(g, p); err != nil {
				return err
			}
		}
		p.keys = append(p.keys, store.MovedKey{Key: rec.Key, Value: append([]byte(nil), rec.Value...), Expires: rec.Expires})
		p.bytes += n
		res.Keys++
		res.Bytes += uint64(n)
	}
	for _, g := range m.GroupIDs() {
		if p := pend[g]; len(p.keys) > 0 {
			if err := stage(g, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// proposeWithRetry proposes cmd in group g, again while the group has no
// leader (a refusal that promises nothing was proposed), within a minute.
func (s *Server) proposeWithRetry(ctx context.Context, g kvd.GroupID, cmd store.Cmd) (store.Result, error) {
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for attempt := 0; ; attempt++ {
		res, err := s.proposeIn(pctx, g, cmd)
		if err == nil || errors.Is(err, kvd.ErrUnknownOutcome) || !(errors.Is(err, kvd.ErrUnavailable) || errors.Is(err, kvd.ErrNotLeader)) ||
			leaderBackoff.Wait(pctx, attempt+2) != nil {
			return res, err
		}
	}
}

// loadRestore seals every group of rs, loads each, and forgets rs: each
// step is repeated safely, so that whoever finishes a restore (its node,
// or the system group's leader after it) may start over.
func (s *Server) loadRestore(ctx context.Context, rs *kvd.Restore) error {
	op := func(o store.RestoreOp) []byte {
		data, _ := json.Marshal(o)
		return data
	}
	retry := func(g kvd.GroupID, data []byte) (store.Result, error) {
		for attempt := 0; ; attempt++ {
			r, err := s.proposeWithRetry(ctx, g, store.Cmd{Kind: store.CmdRestore, Data: data})
			if !errors.Is(err, kvd.ErrUnknownOutcome) || attempt >= 5 {
				return r, err
			}
		}
	}
	// No transaction may prepare any more, and those that hold locks
	// must finish before a group seals: their resolution would write
	// over the keys loaded.
	if err := s.eachGroup(rs.Groups, func(g kvd.GroupID) error {
		_, err := retry(g, op(store.RestoreOp{ID: rs.ID, Op: store.RestoreQuiesce}))
		return err
	}); err != nil {
		return fmt.Errorf("quiesce: %w", err)
	}
	if err := s.eachGroup(rs.Groups, func(g kvd.GroupID) error {
		for attempt := 0; ; attempt++ {
			err := s.drainGroup(ctx, g)
			if err == nil || ctx.Err() != nil {
				return err
			}
			s.log.Info("restore: waiting for transactions to release their locks", "restore", rs.ID, "group", g, "err", err)
		}
	}); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	if err := s.eachGroup(rs.Groups, func(g kvd.GroupID) error {
		_, err := retry(g, op(store.RestoreOp{ID: rs.ID, Op: store.RestoreSeal, Force: rs.Force}))
		return err
	}); err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	if err := s.eachGroup(rs.Groups, func(g kvd.GroupID) error {
		for {
			r, err := retry(g, op(store.RestoreOp{ID: rs.ID, Op: store.RestoreStep}))
			if err != nil {
				return fmt.Errorf("load group %d: %w", g, err)
			}
			if r.Version == 0 {
				return nil
			}
		}
	}); err != nil {
		return err
	}
	if err := s.editRestore(ctx, mapEdit{Op: editRestoreEnd, Restore: rs}); err != nil {
		return fmt.Errorf("forget it in the map: %w", err)
	}
	return nil
}

// superviseRestore runs on every node: a node drops a staging restore of
// its own that it no longer drives (it restarted); the system group's
// leader takes over a restore whose node has not driven it for
// orphanWait: it drops it if staging, and finishes it if loading.
func (s *Server) superviseRestore(ctx context.Context) {
	if s.cfg.Embedded {
		s.superviseEmbeddedRestore(ctx)
		return
	}
	m := s.Map()
	rs := m.Restore
	if rs == nil {
		return
	}
	s.restores.mu.Lock()
	mine := s.restores.running[rs.ID]
	s.restores.mu.Unlock()
	if mine {
		return
	}
	if rs.State == kvd.RestoreStaging && rs.Node == s.id {
		s.log.Warn("restore: dropping a restore this node no longer drives", "restore", rs.ID)
		s.abortRestore(ctx, rs, m.GroupIDs())
		return
	}
	if s.systemLeader(ctx) != nil || !s.orphaned(ctx, rs) {
		return
	}
	switch rs.State {
	case kvd.RestoreStaging:
		s.log.Warn("restore: dropping a staging restore its node no longer drives", "restore", rs.ID, "node", rs.Node)
		s.abortRestore(ctx, rs, m.GroupIDs())
	case kvd.RestoreLoading:
		s.restores.mu.Lock()
		start := !s.restores.running[rs.ID]
		if start {
			s.restores.running[rs.ID] = true
			delete(s.restores.seen, rs.ID)
		}
		s.restores.mu.Unlock()
		if !start {
			return
		}
		r := *rs
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			defer func() {
				s.restores.mu.Lock()
				delete(s.restores.running, r.ID)
				s.restores.mu.Unlock()
			}()
			s.log.Info("restore: finishing a loading restore", "restore", r.ID, "node", r.Node)
			if err := s.loadRestore(ctx, &r); err != nil {
				s.log.Warn("restore: cannot finish it yet", "restore", r.ID, "err", err)
			}
		}()
	}
}

// orphanWait is how long the system group's leader waits for a restore's
// node to drive it again before it takes the restore over: it drops a
// staging one, and finishes a loading one.
const orphanWait = 10 * time.Second

// orphaned tells whether restore rs has been without a driver for
// orphanWait (its node gone from the map at once), as this node, the
// system group's leader, sees it.
func (s *Server) orphaned(ctx context.Context, rs *kvd.Restore) bool {
	if s.drivesRestore(ctx, rs) {
		s.restores.mu.Lock()
		delete(s.restores.seen, rs.ID)
		s.restores.mu.Unlock()
		return false
	}
	if _, ok := s.Map().Node(rs.Node); !ok {
		return true
	}
	s.restores.mu.Lock()
	defer s.restores.mu.Unlock()
	first, ok := s.restores.seen[rs.ID]
	if !ok {
		s.restores.seen[rs.ID] = time.Now()
		return false
	}
	return time.Since(first) > orphanWait
}

// superviseEmbeddedRestore finishes, in an embedded store, a restore that
// sealed its group (it was decided) and that nothing drives any more (the
// process restarted), and drops one that staged without sealing.
func (s *Server) superviseEmbeddedRestore(ctx context.Context) {
	m := s.Map()
	ids := m.GroupIDs()
	if len(ids) != 1 {
		return
	}
	g, ok := s.hosted()[ids[0]]
	if !ok || !g.IsLeader() {
		return
	}
	id, sealed := g.Store().Restoring()
	if id == "" {
		return
	}
	s.restores.mu.Lock()
	mine := s.restores.running[id]
	s.restores.mu.Unlock()
	if mine {
		return
	}
	rs := &kvd.Restore{ID: id, Groups: ids}
	if !sealed {
		s.log.Warn("restore: dropping a restore nothing drives any more", "restore", id)
		s.abortRestore(ctx, rs, ids)
		return
	}
	s.log.Info("restore: finishing a sealed restore", "restore", id)
	if err := s.loadRestore(ctx, rs); err != nil {
		s.log.Warn("restore: cannot finish it yet", "restore", id, "err", err)
	}
}
