package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
	"github.com/kvd-project/kvd/store"
)

// Encryption at rest (Config.Keys) reaches the replica's three files:
//
//   - the state: the store seals each value (store.Options.Keys);
//   - the Raft log: sealedLog seals the payload of each command entry on
//     its way to raft-boltdb, bound to its index (configuration entries,
//     which hold the members' ids and addresses, stay as raft writes them:
//     raft decodes them itself and panics on one it cannot);
//   - snapshots: sealedSnapshots seals each snapshot file as a stream.
//
// What travels between replicas (entries, snapshots being installed) is
// plaintext to this layer, on the peers' own connections (TLS when
// --peer-tls is set); each replica seals what it writes. A snapshot holds
// the state file's pages, whose values stay sealed under the sender's key:
// every node of a cluster holds the same keys.
//
// A rotation (a new active key) is carried out by reencrypt: the state's
// values, then the log's entries, then the snapshots are brought under the
// active key, while the replica serves.

// logAD binds a sealed entry payload to its index.
func logAD(index uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("kvd raft log\x00"), index)
}

// snapshotAD binds a sealed stream to being a snapshot.
var snapshotAD = []byte("kvd snapshot")

// sealedLog seals the payloads of command entries in the Raft log.
type sealedLog struct {
	raft.LogStore
	keys *atrest.Keys
	log  interface{ Warn(string, ...any) }
	// mu orders reencrypt's rewrites with raft's writes and deletes, so
	// that a rewrite never brings back an entry raft replaced or removed.
	mu sync.Mutex
}

var _ raft.LogStore = (*sealedLog)(nil)

func (s *sealedLog) sealed(logs []*raft.Log) []*raft.Log {
	ring := s.keys.Ring()
	if ring == nil {
		return logs
	}
	out := make([]*raft.Log, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand || len(l.Data) == 0 {
			out[i] = l
			continue
		}
		c := *l
		c.Data = ring.Seal(nil, l.Data, logAD(l.Index))
		out[i] = &c
	}
	return out
}

// StoreLog implements raft.LogStore.
func (s *sealedLog) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore: it stores sealed copies; the logs
// raft passed are left as they are (the cache keeps them).
func (s *sealedLog) StoreLogs(logs []*raft.Log) error {
	sealed := s.sealed(logs)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.LogStore.StoreLogs(sealed)
}

// DeleteRange implements raft.LogStore.
func (s *sealedLog) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.LogStore.DeleteRange(min, max)
}

// GetLog implements raft.LogStore. An entry whose payload cannot be
// opened (damaged, or under a key the ring lacks) is returned with its
// payload sealed: the FSM finds it undecodable and repairs it from a peer
// (see repair.go), as it does a payload that failed its checksum, rather
// than raft stopping on an error.
func (s *sealedLog) GetLog(idx uint64, out *raft.Log) error {
	if err := s.LogStore.GetLog(idx, out); err != nil {
		return err
	}
	if out.Type != raft.LogCommand || !atrest.IsSealed(out.Data) {
		return nil
	}
	ring := s.keys.Ring()
	if ring == nil {
		s.log.Warn("raft log entry is encrypted and the node has no key", "index", idx)
		return nil
	}
	plain, err := ring.Open(nil, out.Data, logAD(idx))
	if err != nil {
		s.log.Warn("raft log entry cannot be opened", "index", idx, "err", err)
		return nil
	}
	out.Data = plain
	return nil
}

// IsMonotonic implements raft.MonotonicLogStore as the store below does.
func (s *sealedLog) IsMonotonic() bool { return isMonotonic(s.LogStore) }

// errLogAging means entries under an older key remain in a log that
// cannot rewrite an entry in place (raft-wal takes consecutive appends
// only): they leave when the log is compacted behind a snapshot
// (compactBehindSnapshot).
type errLogAging struct{ left int }

func (e errLogAging) Error() string {
	return fmt.Sprintf("%d raft log entries are under an older key; they leave once the log is compacted behind a snapshot (raft-wal cannot rewrite an entry in place): keep the old key until then", e.left)
}

// reencrypt rewrites every command entry not sealed under the active key,
// a batch at a time, and returns how many it rewrote. A log that takes
// consecutive appends only is not rewritten: it fails with errLogAging
// while such entries remain.
func (s *sealedLog) reencrypt(ctx context.Context, room func() error) (int, error) {
	ring := s.keys.Ring()
	if ring == nil {
		return 0, nil
	}
	first, err := s.FirstIndex()
	if err != nil {
		return 0, err
	}
	last, err := s.LastIndex()
	if err != nil {
		return 0, err
	}
	if isMonotonic(s.LogStore) {
		left := 0
		for idx := first; idx <= last && idx > 0; idx++ {
			var l raft.Log
			if err := s.LogStore.GetLog(idx, &l); err != nil || l.Type != raft.LogCommand || len(l.Data) == 0 {
				continue
			}
			if id, ok := atrest.SealedWith(l.Data); !ok || id != ring.Active() {
				left++
			}
		}
		if left > 0 {
			return 0, errLogAging{left}
		}
		return 0, nil
	}
	n := 0
	for idx := first; idx <= last && idx > 0; {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if room != nil {
			if err := room(); err != nil {
				return n, err
			}
		}
		k, err := s.reencryptBatch(ring, idx, min(last, idx+63))
		n += k
		if err != nil {
			return n, err
		}
		idx += 64
	}
	return n, nil
}

func (s *sealedLog) reencryptBatch(ring *atrest.Keyring, from, to uint64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var batch []*raft.Log
	for idx := from; idx <= to; idx++ {
		var l raft.Log
		err := s.LogStore.GetLog(idx, &l)
		if errors.Is(err, raft.ErrLogNotFound) {
			continue // compacted or truncated meanwhile
		}
		if err != nil {
			return 0, fmt.Errorf("read raft log entry %d: %w", idx, err)
		}
		if l.Type != raft.LogCommand || len(l.Data) == 0 {
			continue
		}
		if id, ok := atrest.SealedWith(l.Data); ok && id == ring.Active() {
			continue
		}
		plain := l.Data
		if atrest.IsSealed(l.Data) {
			if plain, err = ring.Open(nil, l.Data, logAD(idx)); err != nil {
				// Left for the FSM's repair, or for a snapshot to
				// compact away.
				s.log.Warn("raft log entry cannot be opened to re-encrypt it", "index", idx, "err", err)
				continue
			}
		}
		l.Data = ring.Seal(nil, plain, logAD(idx))
		batch = append(batch, &l)
	}
	if len(batch) == 0 {
		return 0, nil
	}
	if err := s.LogStore.StoreLogs(batch); err != nil {
		return 0, fmt.Errorf("rewrite raft log entries %d-%d: %w", from, to, err)
	}
	return len(batch), nil
}

// sealedSnapshots seals the snapshot files of a raft.FileSnapshotStore. A
// snapshot written before encryption was on is read as it is.
type sealedSnapshots struct {
	*raft.FileSnapshotStore
	dir  string // the store's directory (snapshots under dir/snapshots)
	keys *atrest.Keys
}

var _ raft.SnapshotStore = (*sealedSnapshots)(nil)

// Create implements raft.SnapshotStore.
func (s *sealedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.FileSnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	ring := s.keys.Ring()
	if ring == nil {
		return sink, nil
	}
	w, err := ring.NewWriter(sink, snapshotAD)
	if err != nil {
		sink.Cancel()
		return nil, fmt.Errorf("seal snapshot: %w", err)
	}
	return &sealedSink{SnapshotSink: sink, w: w}, nil
}

// Open implements raft.SnapshotStore: it opens a sealed snapshot, and
// gives its plaintext size (raft sends that many bytes to a follower).
func (s *sealedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.FileSnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(rc)
	head, _ := br.Peek(len(atrest.StreamMagic))
	if !atrest.IsSealedStream(head) {
		return meta, readCloser{br, rc}, nil
	}
	ring := s.keys.Ring()
	if ring == nil {
		rc.Close()
		return nil, nil, fmt.Errorf("snapshot %s is encrypted and the node has no key: %w", id, atrest.ErrUnknownKey)
	}
	r, err := ring.NewReader(br, snapshotAD)
	if err != nil {
		rc.Close()
		return nil, nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	m := *meta
	m.Size = atrest.PlainSize(meta.Size)
	return &m, readCloser{r, rc}, nil
}

// reencrypt brings the retained snapshots under the active key, outside
// and in: it writes the newest one again with every value of its state
// sealed under the active key, twice (the store keeps the two newest, and
// a copy of the same index counts as newer). Run once the state is under
// the active key: a snapshot raft takes from then on is under it too.
// trans is the group's transport (the file store encodes the members'
// addresses with it).
func (s *sealedSnapshots) reencrypt(ctx context.Context, trans raft.Transport, room func() error) (bool, error) {
	if s.keys.Ring() == nil {
		return false, nil
	}
	metas, err := s.List()
	if err != nil || len(metas) == 0 {
		return false, err
	}
	for range 2 {
		if room != nil {
			if err := room(); err != nil {
				return false, err
			}
		}
		if err := s.copyNewest(ctx, trans); err != nil {
			return true, err
		}
		// Snapshot names end in milliseconds: two copies in one would
		// share a name.
		time.Sleep(5 * time.Millisecond)
	}
	return true, nil
}

func (s *sealedSnapshots) copyNewest(ctx context.Context, trans raft.Transport) error {
	metas, err := s.List()
	if err != nil || len(metas) == 0 {
		return err
	}
	m := metas[0]
	meta, rc, err := s.Open(m.ID)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", m.ID, err)
	}
	defer rc.Close()
	sink, err := s.Create(meta.Version, meta.Index, meta.Term, meta.Configuration, meta.ConfigurationIndex, trans)
	if err != nil {
		return fmt.Errorf("copy snapshot %s: %w", m.ID, err)
	}
	if err := store.ReencryptSnapshot(ctx, rc, sink, s.dir, s.keys); err != nil {
		sink.Cancel()
		return fmt.Errorf("copy snapshot %s: %w", m.ID, err)
	}
	return sink.Close()
}

// sealedSink seals what is written to a snapshot sink.
type sealedSink struct {
	raft.SnapshotSink
	w io.WriteCloser
}

func (s *sealedSink) Write(p []byte) (int, error) { return s.w.Write(p) }

// Close writes the stream's last chunk, then closes the file.
func (s *sealedSink) Close() error {
	if err := s.w.Close(); err != nil {
		s.SnapshotSink.Cancel()
		return fmt.Errorf("seal snapshot: %w", err)
	}
	return s.SnapshotSink.Close()
}

type readCloser struct {
	io.Reader
	io.Closer
}

// encryptionState is what the replica's re-encryption has done.
type encryptionState struct {
	kick chan struct{} // asks runReencrypt for a pass

	mu        sync.Mutex // protects the fields below
	done      bool       // everything is under doneFor
	doneFor   atrest.KeyID
	snapsDone bool // the snapshots are under snapsFor
	snapsFor  atrest.KeyID
	rewritten uint64
	err       error
}

// EncryptionStatus tells where a replica's re-encryption stands.
type EncryptionStatus struct {
	// Encrypted is whether the replica has keys.
	Encrypted bool
	// Active is the id of the key new data is sealed under.
	Active string
	// Done is whether the state, the log and the snapshots are all under
	// the active key.
	Done bool
	// Rewritten counts the values, entries and snapshots re-encrypted
	// since the replica opened.
	Rewritten uint64
	// Error is the last pass's failure ("" if none).
	Error string
}

// EncryptionStatus returns where the replica's re-encryption stands.
func (g *Group) EncryptionStatus() EncryptionStatus {
	ring := g.cfg.Keys.Ring()
	if ring == nil {
		return EncryptionStatus{}
	}
	g.enc.mu.Lock()
	defer g.enc.mu.Unlock()
	st := EncryptionStatus{Encrypted: true, Active: ring.Active().String(), Rewritten: g.enc.rewritten,
		Done: g.enc.done && g.enc.doneFor == ring.Active()}
	if g.enc.err != nil {
		st.Error = g.enc.err.Error()
	}
	return st
}

// Reencrypt asks the replica to bring what it holds under the active key
// (after the keys changed); it returns at once, the work goes on in the
// background (see EncryptionStatus).
func (g *Group) Reencrypt() {
	g.forgetReencrypted()
	kick(g.enc.kick)
}

// encryptedMarker names the file that records the key a whole pass last
// brought the replica's state, log and snapshots under (its id in hex).
const encryptedMarker = "encrypted-under"

// forgetReencrypted forgets that the replica is all under one key: the
// keys changed, or a snapshot from another replica is being installed.
// The marker file goes first, so that a crash cannot leave it claiming
// what is no longer so.
func (g *Group) forgetReencrypted() {
	g.enc.mu.Lock()
	g.enc.done, g.enc.snapsDone = false, false
	g.enc.mu.Unlock()
	if err := os.Remove(filepath.Join(g.cfg.Dir, encryptedMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		g.log.Warn("cannot remove the re-encryption marker", "err", err)
	}
}

// reencryptedUnder reads the marker file (ok false if absent or unreadable).
func (g *Group) reencryptedUnder() (atrest.KeyID, bool) {
	var id atrest.KeyID
	b, err := os.ReadFile(filepath.Join(g.cfg.Dir, encryptedMarker))
	if err != nil {
		return id, false
	}
	raw, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(raw) != len(id) {
		return id, false
	}
	copy(id[:], raw)
	return id, true
}

// noteRestoreFailed records why installing a snapshot failed when it is
// a key the node lacks: the operator must see it (GET
// /v1/admin/encryption), not only the log.
func (g *Group) noteRestoreFailed(err error) {
	if g.cfg.Keys == nil || !errors.Is(err, atrest.ErrUnknownKey) {
		return
	}
	g.log.Error("cannot install a snapshot: it holds data under a key this node lacks; add the cluster's keys to the key file", "err", err)
	g.enc.mu.Lock()
	g.enc.done, g.enc.err = false, fmt.Errorf("install a snapshot: %w", err)
	g.enc.mu.Unlock()
}

// checkKeys refuses to open a state encrypted under a key the replica
// lacks: every read would fail.
func (g *Group) checkKeys() error {
	id, ok, err := g.db.SealedUnder()
	if err != nil || !ok {
		return err
	}
	ring := g.cfg.Keys.Ring()
	if ring == nil {
		return fmt.Errorf("group %d: the state is encrypted (key %s): start the node with its --encryption-key-file", g.id, id)
	}
	if !ring.Has(id) {
		return fmt.Errorf("group %d: the state is encrypted under key %s, which the key file lacks: %w", g.id, id, atrest.ErrUnknownKey)
	}
	return nil
}

// runReencrypt makes a pass when asked (and once at the start), again
// after a failure, until the replica closes.
func (g *Group) runReencrypt() {
	if g.cfg.Keys == nil {
		return
	}
	kick(g.enc.kick)
	for attempt := 0; ; {
		select {
		case <-g.ctx.Done():
			return
		case <-g.enc.kick:
		}
		err := g.reencryptPass()
		g.enc.mu.Lock()
		g.enc.err = err
		g.enc.mu.Unlock()
		if err == nil || g.ctx.Err() != nil {
			attempt = 0
			continue
		}
		var aging errLogAging
		if errors.As(err, &aging) {
			// The entries cannot be rewritten in place: compact them
			// away behind a snapshot, then look again.
			if err := g.compactBehindSnapshot(); err != nil {
				g.log.Warn("cannot compact the raft log entries under an older key yet", "left", aging.left, "err", err)
			}
			if !g.pause(2 * time.Second) {
				return
			}
			kick(g.enc.kick)
			continue
		}
		g.log.Warn("re-encryption pass failed; trying again", "err", err)
		attempt++
		if !g.pause(diskBackoff.Delay(attempt)) {
			return
		}
		kick(g.enc.kick)
	}
}

// reencryptPass brings the state, the log and the snapshots under the
// active key.
func (g *Group) reencryptPass() error {
	ring := g.cfg.Keys.Ring()
	if ring == nil {
		return nil
	}
	active := ring.Active()
	g.enc.mu.Lock()
	skip := g.enc.done && g.enc.doneFor == active
	g.enc.mu.Unlock()
	if skip {
		return nil
	}
	start := time.Now()
	values, err := g.db.Reencrypt(g.ctx, g.cfg.Room)
	g.noteRewritten(values)
	if err != nil {
		return fmt.Errorf("re-encrypt the state: %w", err)
	}
	if id, ok := g.reencryptedUnder(); ok && id == active && values == 0 {
		// A pass finished under this key before the replica last
		// stopped, and nothing since asked for another.
		g.enc.mu.Lock()
		g.enc.done, g.enc.doneFor = true, active
		g.enc.mu.Unlock()
		return nil
	}
	entries, logErr := g.sealedLogs.reencrypt(g.ctx, g.cfg.Room)
	g.noteRewritten(entries)
	var aging errLogAging
	if logErr != nil && !errors.As(logErr, &aging) {
		return fmt.Errorf("re-encrypt the raft log: %w", logErr)
	}
	g.enc.mu.Lock()
	snapsDone := g.enc.snapsDone && g.enc.snapsFor == active
	g.enc.mu.Unlock()
	rewrote := false
	if !snapsDone {
		rewrote, err = g.sealedSnaps.reencrypt(g.ctx, g.trans, g.cfg.Room)
		if rewrote {
			g.noteRewritten(1)
		}
		if err != nil {
			return fmt.Errorf("re-encrypt the snapshots: %w", err)
		}
		g.enc.mu.Lock()
		g.enc.snapsDone, g.enc.snapsFor = true, active
		g.enc.mu.Unlock()
	}
	if logErr != nil {
		return fmt.Errorf("re-encrypt the raft log: %w", logErr)
	}
	if g.cfg.Keys.Ring().Active() != active {
		kick(g.enc.kick) // rotated again meanwhile
		return nil
	}
	if err := fsutil.WriteFile(filepath.Join(g.cfg.Dir, encryptedMarker), []byte(active.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("record the re-encryption: %w", err)
	}
	g.enc.mu.Lock()
	g.enc.done, g.enc.doneFor = true, active
	g.enc.mu.Unlock()
	if values+entries > 0 || rewrote {
		g.log.Info("re-encrypted the replica under the active key", "key", active.String(), "values", values, "log_entries", entries, "snapshots_rewritten", rewrote, "took", time.Since(start))
	}
	return nil
}

// compactBehindSnapshot takes a snapshot of what is applied (if anything
// is new since the last one) and drops every log entry the newest
// snapshot covers, trailing entries included: raft-wal cannot rewrite an
// entry under the new key, and an idle group would otherwise keep its
// old entries, and need the old key, for as long as it stays idle. A
// follower lagging behind the dropped entries then catches up through a
// snapshot, as after any compaction.
func (g *Group) compactBehindSnapshot() error {
	if err := g.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("snapshot: %w", err)
	}
	metas, err := g.snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if len(metas) == 0 {
		return errors.New("no snapshot yet")
	}
	first, err := g.logs.FirstIndex()
	if err != nil {
		return err
	}
	upTo := metas[0].Index
	if first == 0 || first > upTo {
		return nil
	}
	if err := g.logs.DeleteRange(first, upTo); err != nil {
		return fmt.Errorf("drop raft log entries %d-%d: %w", first, upTo, err)
	}
	g.log.Info("dropped the raft log entries a snapshot covers, to retire an older key", "from", first, "to", upTo)
	return nil
}

func (g *Group) noteRewritten(n int) {
	g.enc.mu.Lock()
	g.enc.rewritten += uint64(n)
	g.enc.mu.Unlock()
}
