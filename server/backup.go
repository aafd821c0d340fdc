package server

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/internal/fsutil"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// A backup is one consistent cut of every group (GET /v1/admin/backup),
// taken by the node asked, in four steps:
//
//  1. every group is frozen at level 1 through its log: no transaction
//     prepares any more, so the locks held drain as their transactions
//     decide and resolve (a coordinator whose prepare is refused aborts
//     and runs the transaction again once the freeze is lifted);
//  2. once no group holds a lock, every group is frozen at level 2: no
//     write applies at all (writes wait at the node, as for a slot
//     move's hand-off);
//  3. a replica of each group that has applied its level-2 freeze opens a
//     snapshot (a bbolt read transaction) and checks that its state is
//     frozen by this backup and holds no lock;
//  4. the freeze is lifted, and the snapshots are streamed, one group
//     after another, into one file.
//
// Every group's snapshot is its state from its level-2 freeze to the lift,
// and all these intervals overlap, so the snapshots are the cluster's
// state at one instant (the last level-2 freeze): a cross-group
// transaction is in them wholly or not at all, and so is anything that
// happened before anything they hold. Writes pause for the time of steps 2
// and 3 (a few Raft rounds); reads never do.

// Bounds of a backup's cut.
const (
	// cutPatience is how long a backup tries to take its cut (a leader
	// change, or another backup's freeze, makes a try fail) before it
	// answers unavailable.
	cutPatience = 20 * time.Second
	// drainWait bounds the wait for the locks to drain (step 1).
	drainWait = 10 * time.Second
	// partOpenWait bounds the wait for a replica to open its snapshot.
	partOpenWait = 5 * time.Second
	// A group's leader lifts a freeze that stood longer than this, at
	// level 1 (prepares refused) or at level 2 (writes refused): its
	// backup's driver is gone. A driver still at work then finds the
	// freeze lifted and takes its cut again.
	freezeMax       = drainWait + 2*partOpenWait
	freezeWritesMax = 2 * partOpenWait
	// liftPatience bounds a driver's attempts to lift its freeze.
	liftPatience = 10 * time.Second
)

// Chunk types of a backup part (one group's snapshot, streamed between
// nodes): its header, data (backup records) and end.
const (
	partHeaderChunk = 'P'
	partEndChunk    = 'Q'
)

// partHeader opens a backup part.
type partHeader struct {
	Group  kvd.GroupID     `json:"group"`
	Index  uint64          `json:"index"`
	Served []kvd.SlotRange `json:"served"`
}

// partEnd closes a backup part.
type partEnd struct {
	Keys uint64 `json:"keys"`
}

// errCutAgain means a cut failed in a way the next try may not.
var errCutAgain = errors.New("the cut must be taken again")

// Backup writes a backup of every group at one consistent cut; start is
// called once the cut is taken, just before the first byte, for the
// writer. An error after start was called leaves the written stream
// without its end: a reader refuses it as truncated.
//
// With Config.Encryption set, what is written is the backup sealed as an
// atrest stream under the active key (associated data "kvd backup"): the
// summary answered is that of the backup inside. Without it, the backup
// is written as it is.
func (s *Server) Backup(ctx context.Context, start func() io.Writer) (backup.Summary, error) {
	began := time.Now()
	cw := &countingWriter{}
	sum, err := s.backup(ctx, func() io.Writer {
		cw.w = start()
		return cw
	})
	s.metrics.backupDone(began, sum, cw.n, err)
	if err != nil {
		s.log.Warn("backup failed", "err", err)
	} else {
		s.log.Info("backup taken", "keys", sum.Keys, "bytes", sum.Bytes, "took", time.Since(began).Round(time.Millisecond))
	}
	return sum, err
}

func (s *Server) backup(ctx context.Context, start func() io.Writer) (backup.Summary, error) {
	// With encryption on, the backup (the very bytes of package backup)
	// is sealed as one stream under the active key of the ring as it is
	// now; any node holding that key opens it (see spoolBackup).
	ring := s.cfg.Encryption.Ring()
	var parts []*backupPart
	var hdr backup.Header
	var err error
	patience := time.Now().Add(cutPatience)
	for attempt := 0; ; attempt++ {
		m := s.Map()
		if m.Restore != nil {
			return backup.Summary{}, fmt.Errorf("backup: restore %s is under way: %w", m.Restore.ID, kvd.ErrConflict)
		}
		if err := s.checkFeature(groupHosts(m, m.GroupIDs()...), api.FeatureBackup); err != nil {
			return backup.Summary{}, fmt.Errorf("backup: %w", err)
		}
		parts, hdr, err = s.takeCut(ctx, m)
		if err == nil {
			break
		}
		if !errors.Is(err, errCutAgain) {
			return backup.Summary{}, fmt.Errorf("backup: %w", err)
		}
		if time.Now().After(patience) || cutBackoff.Wait(ctx, attempt) != nil {
			return backup.Summary{}, fmt.Errorf("backup: no cut could be taken within %s (%v): %w", cutPatience, err, kvd.ErrUnavailable)
		}
		s.log.Info("backup: taking the cut again", "err", err)
	}
	defer func() {
		for _, p := range parts {
			p.close()
		}
	}()
	out := start()
	var seal io.WriteCloser
	if ring != nil {
		if seal, err = ring.NewWriter(out, []byte(backupAD)); err != nil {
			return backup.Summary{}, fmt.Errorf("backup: %w", err)
		}
		out = seal
	}
	w, err := backup.NewWriter(out, hdr)
	if err != nil {
		return backup.Summary{}, err
	}
	for _, p := range parts {
		if err := p.copyTo(ctx, w); err != nil {
			return backup.Summary{}, fmt.Errorf("backup of group %d: %w", p.hdr.Group, err)
		}
	}
	sum, err := w.Close()
	if err == nil && seal != nil {
		// The last sealed chunk, marked last: without it a reader
		// refuses the stream as cut short.
		err = seal.Close()
	}
	return sum, err
}

// backupAD is the associated data of a sealed backup stream: a sealed
// stream of another kind (a snapshot) fails to open as a backup.
const backupAD = "kvd backup"

// takeCut freezes every group of m, opens a snapshot of each at the cut,
// and lifts the freeze (whatever happens). The parts it returns are open:
// the caller closes them.
func (s *Server) takeCut(ctx context.Context, m *kvd.Map) (parts []*backupPart, hdr backup.Header, err error) {
	id := newBackupID()
	groups := m.GroupIDs()
	defer func() {
		s.eachGroup(groups, func(g kvd.GroupID) error {
			s.liftFreeze(ctx, g, id)
			return nil
		})
		if err != nil {
			for _, p := range parts {
				p.close()
			}
			parts = nil
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, drainWait+2*partOpenWait)
	defer cancel()
	if err := s.eachGroup(groups, func(g kvd.GroupID) error {
		_, err := s.freezeGroup(cctx, g, id, store.FreezePrepares)
		return err
	}); err != nil {
		return nil, hdr, err
	}
	if err := s.eachGroup(groups, func(g kvd.GroupID) error { return s.drainGroup(cctx, g) }); err != nil {
		return nil, hdr, err
	}
	index := make(map[kvd.GroupID]uint64, len(groups))
	var mu sync.Mutex // protects index and parts
	if err := s.eachGroup(groups, func(g kvd.GroupID) error {
		i, err := s.freezeGroup(cctx, g, id, store.FreezeWrites)
		mu.Lock()
		index[g] = i
		mu.Unlock()
		return err
	}); err != nil {
		return nil, hdr, err
	}
	failpoint.Hit(failpoint.BackupCut)
	hdr = backup.Header{Created: time.Now().UTC(), Epoch: m.Epoch, Node: s.id}
	err = s.eachGroup(groups, func(g kvd.GroupID) error {
		p, err := s.openPart(ctx, g, id, index[g])
		if err == nil {
			mu.Lock()
			parts = append(parts, p)
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return parts, hdr, err
	}
	slices.SortFunc(parts, func(a, b *backupPart) int { return int(a.hdr.Group) - int(b.hdr.Group) })
	var covered kvd.SlotSet
	for _, p := range parts {
		var set kvd.SlotSet
		set.AddRanges(p.hdr.Served)
		for sl := 0; sl < kvd.SlotCount; sl++ {
			if set.Has(sl) {
				if covered.Has(sl) {
					return parts, hdr, fmt.Errorf("slot %d is served by two groups at the cut (a slot move): %w", sl, errCutAgain)
				}
				covered.Add(sl)
			}
		}
		hdr.Groups = append(hdr.Groups, backup.GroupCut{Group: uint64(p.hdr.Group), Index: p.hdr.Index})
	}
	for sl := 0; sl < kvd.SlotCount; sl++ {
		if !covered.Has(sl) {
			return parts, hdr, fmt.Errorf("slot %d is served by no group at the cut (a slot move hands it over): %w", sl, errCutAgain)
		}
	}
	return parts, hdr, nil
}

// eachGroup runs fn for every group at once and returns the first error.
func (s *Server) eachGroup(groups []kvd.GroupID, fn func(g kvd.GroupID) error) error {
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(g)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// freezeGroup proposes a freeze of group g for backup id at level, and
// returns the index of the entry that applied it. Another backup's
// freeze is a conflict to wait out.
func (s *Server) freezeGroup(ctx context.Context, g kvd.GroupID, id string, level int) (uint64, error) {
	data, _ := json.Marshal(store.Freeze{ID: id, Level: level})
	res, err := s.proposeWithRetry(ctx, g, store.Cmd{Kind: store.CmdFreeze, Data: data})
	if errors.Is(err, kvd.ErrConflict) || errors.Is(err, kvd.ErrUnknownOutcome) || errors.Is(err, kvd.ErrWrongGroup) {
		// Another backup's freeze, an outcome to find out, or a node
		// that named itself leader but serves no replica of the group
		// yet (restarting): take the cut again.
		return 0, fmt.Errorf("freeze group %d: %v: %w", g, err, errCutAgain)
	}
	if err != nil {
		return 0, fmt.Errorf("freeze group %d: %w", g, err)
	}
	return res.Version, nil
}

// liftFreeze lifts backup id's freeze of group g, again until it is known
// to be lifted (lifting is idempotent), within liftPatience.
func (s *Server) liftFreeze(ctx context.Context, g kvd.GroupID, id string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), liftPatience)
	defer cancel()
	data, _ := json.Marshal(store.Freeze{ID: id, Level: store.FreezeLift})
	for attempt := 0; ; attempt++ {
		_, err := s.proposeIn(lctx, g, store.Cmd{Kind: store.CmdFreeze, Data: data})
		if err == nil {
			return
		}
		if errors.Is(err, kvd.ErrInvalid) || leaderBackoff.Wait(lctx, attempt) != nil {
			s.log.Warn("backup: cannot lift the freeze; the group's leader will", "group", g, "backup", id, "err", err)
			return
		}
	}
}

// drainGroup waits until group g holds no transaction lock.
func (s *Server) drainGroup(ctx context.Context, g kvd.GroupID) error {
	dctx, cancel := context.WithTimeout(ctx, drainWait)
	defer cancel()
	var held []store.HeldLock
	for attempt := 0; ; attempt++ {
		a, err := s.moveRead(dctx, g, moveReadRequest{Op: "locks", Slots: []kvd.SlotRange{{0, kvd.SlotCount - 1}}})
		if err == nil && len(a.Locks) == 0 {
			return nil
		}
		if err == nil {
			held = a.Locks
		}
		if lockBackoff.Wait(dctx, attempt) != nil {
			if err != nil {
				return fmt.Errorf("group %d: read its locks: %v: %w", g, err, errCutAgain)
			}
			return fmt.Errorf("group %d: transactions %s still hold locks after %s: %w", g, lockTxns(held), drainWait, kvd.ErrUnavailable)
		}
	}
}

// backupPart is one group's snapshot being read for a backup.
type backupPart struct {
	hdr  partHeader
	body io.ReadCloser
	r    *bufio.Reader
	buf  []byte
	// done, for a part written by this node, ends when its writer has.
	done func()
}

func (p *backupPart) close() {
	if p.body != nil {
		p.body.Close()
		p.body = nil
	}
	if p.done != nil {
		p.done()
		p.done = nil
	}
}

// copyTo copies the part's records into w.
func (p *backupPart) copyTo(ctx context.Context, w *backup.Writer) error {
	var n uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		typ, payload, err := backup.ReadChunk(p.r, p.buf)
		if err != nil {
			return fmt.Errorf("read the part after %d keys: %w", n, err)
		}
		switch typ {
		case backup.ChunkData:
			p.buf = payload[:0]
			err = backup.DecodeRecords(payload, func(r backup.Record) error {
				n++
				return w.Add(r)
			})
			if err != nil {
				return err
			}
		case partEndChunk:
			var e partEnd
			if err := json.Unmarshal(payload, &e); err != nil {
				return fmt.Errorf("part end: %w", err)
			}
			if e.Keys != n {
				return fmt.Errorf("the part ends after %d keys, %d read", e.Keys, n)
			}
			return nil
		default:
			return fmt.Errorf("unexpected chunk %q in a part", typ)
		}
	}
}

// openPart opens group g's part of backup id: a snapshot of a replica that
// has applied index, read here if this node has one, else at the group's
// leader. It returns once the snapshot is taken.
func (s *Server) openPart(ctx context.Context, g kvd.GroupID, id string, index uint64) (*backupPart, error) {
	octx, cancel := context.WithTimeout(ctx, partOpenWait)
	defer cancel()
	var body io.ReadCloser
	var done func()
	if grp, ok := s.servingReplica(g); ok {
		pr, pw := io.Pipe()
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			err := s.writePart(ctx, grp, id, index, func() io.Writer { return pw }, nil)
			pw.CloseWithError(cmp.Or(err, io.EOF))
		}()
		body = pr
		done = func() {
			pr.CloseWithError(errors.New("backup closed"))
			<-finished
		}
	} else {
		var err error
		body, err = atLeader(octx, s, g, func(err error) bool { return errors.Is(err, kvd.ErrNotLeader) },
			func(*replication.Group) (io.ReadCloser, error) {
				return nil, fmt.Errorf("group %d is served here now: %w", g, errCutAgain)
			},
			func(target string) (io.ReadCloser, error) {
				// The stream outlives octx: it is read to its end later.
				return s.open(ctx, peerCall{op: "open a backup part at", method: http.MethodGet, node: target, group: g,
					path: "/v1/internal/backuppart?" + groupQuery(g, "id", id, "min_index", strconv.FormatUint(index, 10))})
			})
		if err != nil {
			return nil, fmt.Errorf("group %d: %v: %w", g, err, errCutAgain)
		}
	}
	p := &backupPart{body: body, r: bufio.NewReaderSize(body, 256<<10), done: done}
	hdrc := make(chan error, 1)
	go func() {
		typ, payload, err := backup.ReadChunk(p.r, nil)
		if err == nil && typ != partHeaderChunk {
			err = fmt.Errorf("a part starts with chunk %q", typ)
		}
		if err == nil {
			err = json.Unmarshal(payload, &p.hdr)
		}
		hdrc <- err
	}()
	select {
	case err := <-hdrc:
		if err != nil {
			p.close()
			return nil, fmt.Errorf("group %d: open its part: %v: %w", g, err, errCutAgain)
		}
		return p, nil
	case <-octx.Done():
		p.close()
		<-hdrc
		return nil, fmt.Errorf("group %d: no snapshot within %s: %w", g, partOpenWait, errCutAgain)
	}
}

// WriteBackupPart streams this node's replica of group g for backup id
// (GET /v1/internal/backuppart): a snapshot taken once the replica has
// applied minIndex, which must find the state frozen for id and free of
// locks. start gives the writer, flush (if set) pushes out what is
// written, once the snapshot is taken.
func (s *Server) WriteBackupPart(ctx context.Context, g kvd.GroupID, id string, minIndex uint64, start func() io.Writer, flush func()) error {
	grp, err := s.replica(g)
	if err != nil {
		return err
	}
	return s.writePart(ctx, grp, id, minIndex, start, flush)
}

func (s *Server) writePart(ctx context.Context, grp *replication.Group, id string, minIndex uint64, start func() io.Writer, flush func()) error {
	wctx, cancel := context.WithTimeout(ctx, partOpenWait)
	err := grp.WaitApplied(wctx, minIndex)
	cancel()
	if err != nil {
		return err
	}
	if err := grp.Serving(); err != nil {
		return err
	}
	snap, err := grp.Store().Snapshot()
	if err != nil {
		return err
	}
	defer snap.Close()
	part, err := snap.BackupPart()
	if err != nil {
		return err
	}
	switch {
	case part.Freeze.ID != id || part.Freeze.Level != store.FreezeWrites:
		return fmt.Errorf("group %d at index %d is not frozen for backup %s (freeze %q, level %d): %w", grp.ID(), part.Index, id, part.Freeze.ID, part.Freeze.Level, kvd.ErrUnavailable)
	case part.Locks > 0:
		return fmt.Errorf("group %d holds %d transaction locks at the cut: %w", grp.ID(), part.Locks, kvd.ErrUnavailable)
	case part.Restoring != "":
		return fmt.Errorf("group %d is loading restore %s: %w", grp.ID(), part.Restoring, kvd.ErrUnavailable)
	}
	bw := bufio.NewWriterSize(start(), 256<<10)
	hdr, _ := json.Marshal(partHeader{Group: grp.ID(), Index: part.Index, Served: part.Served.Ranges()})
	if err := backup.WriteChunk(bw, partHeaderChunk, hdr); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if flush != nil {
		flush()
	}
	var buf []byte
	var n uint64
	err = snap.ForEachKey(&part.Served, part.Freeze.Since, func(key string, val []byte, exp int64) error {
		buf = backup.AppendRecord(buf, backup.Record{Key: key, Value: val, Expires: exp})
		n++
		if len(buf) >= 1<<20 {
			err := backup.WriteChunk(bw, backup.ChunkData, buf)
			buf = buf[:0]
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
		return nil
	})
	if err == nil && len(buf) > 0 {
		err = backup.WriteChunk(bw, backup.ChunkData, buf)
	}
	if err == nil {
		end, _ := json.Marshal(partEnd{Keys: n})
		err = backup.WriteChunk(bw, partEndChunk, end)
	}
	if err == nil {
		err = bw.Flush()
	}
	return err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// newBackupID returns a fresh backup or restore id.
func newBackupID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// liftStaleFreezes lifts, in each group this node leads, a freeze that
// has stood longer than freezeMax: its backup's driver is gone.
func (s *Server) liftStaleFreezes(ctx context.Context) {
	for gid, g := range s.hosted() {
		f := g.Store().Frozen()
		stale := time.Since(time.Unix(0, f.Since)) > freezeMax || f.Writes != 0 && time.Since(time.Unix(0, f.Writes)) > freezeWritesMax
		if f.ID == "" || !g.IsLeader() || !stale {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		data, _ := json.Marshal(store.Freeze{ID: f.ID, Level: store.FreezeLift})
		_, err := g.Propose(pctx, store.Cmd{Kind: store.CmdFreeze, Data: data})
		cancel()
		s.log.Warn("backup: lifted a freeze its backup left", "group", gid, "backup", f.ID, "err", err)
	}
}

// Scheduled backups are files named backupPrefix + UTC time + backupExt.
// A scheduled backup is written to a file named backupPartial first.
const (
	backupPrefix  = "kvd-backup-"
	backupExt     = ".kvdb"
	backupPartial = ".partial-*"
)

// runScheduledBackups writes a backup into Config.BackupDir every
// BackupEvery while this node leads the system group, and keeps the
// newest BackupKeep.
func (s *Server) runScheduledBackups(ctx context.Context) {
	// Another node may share the directory: only a partial file old
	// enough to be no one's backup under way is a crash's leftover.
	removeLeftovers(s.cfg.BackupDir, backupPartial, time.Hour, s.log)
	repeat(ctx, s.cfg.BackupEvery, func() {
		if s.systemLeader(ctx) != nil {
			return
		}
		path, err := s.backupToDir(ctx)
		if err != nil {
			s.log.Warn("scheduled backup failed", "dir", s.cfg.BackupDir, "err", err)
			return
		}
		s.log.Info("scheduled backup written", "file", path)
		if err := pruneBackups(s.cfg.BackupDir, s.cfg.BackupKeep); err != nil {
			s.log.Warn("scheduled backups: cannot remove old ones", "dir", s.cfg.BackupDir, "err", err)
		}
	})
}

// backupToDir writes a backup into the backup directory: to a temporary
// file, synced and renamed once whole, so the directory only ever holds
// whole backups.
func (s *Server) backupToDir(ctx context.Context) (string, error) {
	if err := os.MkdirAll(s.cfg.BackupDir, 0o750); err != nil {
		return "", err
	}
	name := filepath.Join(s.cfg.BackupDir, backupPrefix+time.Now().UTC().Format("20060102T150405.000Z")+backupExt)
	f, err := os.CreateTemp(s.cfg.BackupDir, backupPartial)
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name()) // once renamed, removes nothing
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	if _, err := s.Backup(ctx, func() io.Writer { return bw }); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), name); err != nil {
		return "", err
	}
	return name, fsutil.SyncDir(s.cfg.BackupDir)
}

// pruneBackups removes the oldest scheduled backups in dir past keep.
func pruneBackups(dir string, keep int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && strings.HasPrefix(n, backupPrefix) && strings.HasSuffix(n, backupExt) {
			names = append(names, n)
		}
	}
	slices.Sort(names) // the UTC time in the name sorts by age
	var errs []error
	for len(names) > keep {
		errs = append(errs, os.Remove(filepath.Join(dir, names[0])))
		names = names[1:]
	}
	return errors.Join(errs...)
}
