package server

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
)

// diskGuard watches the data directory's size and its disk's free space,
// and refuses clients' writes (kvd.ErrInsufficientStorage, 507) before
// the disk fills: past the quota, or below the free space to keep. Reads
// go on; writes are taken again as soon as there is room, without a
// restart. The free space kept back leaves room for what Raft must still
// write: terms and votes, and the entries that finish transactions and
// expire keys.
//
// Between two measurements, every write it lets through is charged what
// it will take on disk (its log entry, its value in the state and in the
// watch history), so a burst cannot overrun the limits before the next
// measurement notices.
type diskGuard struct {
	dir     string
	quota   int64
	minFree int64
	log     *slog.Logger

	low atomic.Bool
	// used and free are the last measurement; charged is what the writes
	// let through since it will take.
	used, free, charged atomic.Int64
	// mu protects st and groups.
	mu sync.Mutex
	st api.Storage
	// groups is what each group's directory took at the last
	// measurement, by its name under groups/.
	groups map[string]int64
}

func newDiskGuard(dir string, quota, minFree int64, log *slog.Logger) *diskGuard {
	d := &diskGuard{dir: dir, quota: quota, minFree: minFree, log: log}
	d.check()
	return d
}

// check measures the directory and the disk, and decides.
func (d *diskGuard) check() {
	used, groups := dataDirUsage(d.dir)
	free := freeSpace(d.dir)
	d.charged.Store(0)
	st := api.Storage{UsedBytes: used, FreeBytes: free, QuotaBytes: d.quota, MinFreeBytes: d.minFree, Writable: true}
	switch {
	case d.quota > 0 && used >= d.quota:
		st.Writable, st.Reason = false, fmt.Sprintf("the data directory holds %d bytes, its quota is %d", used, d.quota)
	case free >= 0 && free < d.minFree:
		st.Writable, st.Reason = false, fmt.Sprintf("the data directory's disk has %d bytes free, at least %d must stay free", free, d.minFree)
	}
	d.mu.Lock()
	d.st, d.groups = st, groups
	d.mu.Unlock()
	d.used.Store(used)
	d.free.Store(free)
	if was := d.low.Swap(!st.Writable); was != !st.Writable {
		if st.Writable {
			d.log.Info("disk space is back; taking writes again", "used", used, "free", free)
		} else {
			d.log.Error("refusing writes: "+st.Reason, "used", used, "free", free)
		}
	}
}

// writeCost estimates what a write of n bytes takes on disk: its Raft log
// entry, the value in the state and in the watch history, and pages.
func writeCost(n int) int64 { return 3*int64(n) + 4096 }

// admit returns nil if a client's write of n bytes may be proposed now,
// and charges it.
func (d *diskGuard) admit(n int) error {
	if !d.low.Load() {
		cost := writeCost(n)
		charged := d.charged.Add(cost)
		used, free := d.used.Load(), d.free.Load()
		over := (d.quota > 0 && used+charged > d.quota) || (free >= 0 && free-charged < d.minFree)
		if !over {
			return nil
		}
		d.charged.Add(-cost)
		return fmt.Errorf("write refused: it would leave the data directory past its quota or its disk short of %d free bytes: %w", d.minFree, kvd.ErrInsufficientStorage)
	}
	d.mu.Lock()
	reason := d.st.Reason
	d.mu.Unlock()
	return fmt.Errorf("write refused: %s: %w", reason, kvd.ErrInsufficientStorage)
}

// room returns nil while clients' writes are taken: background rewrites
// (re-encryption) wait, as clients' writes do, when the disk is short of
// the space it must keep.
func (d *diskGuard) room() error {
	if d.low.Load() {
		d.mu.Lock()
		reason := d.st.Reason
		d.mu.Unlock()
		return fmt.Errorf("waiting for disk space: %s: %w", reason, kvd.ErrInsufficientStorage)
	}
	return nil
}

func (d *diskGuard) status() api.Storage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// groupBytes returns what group g's directory took at the last
// measurement.
func (d *diskGuard) groupBytes(g kvd.GroupID) int64 {
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.groups[strconv.FormatUint(uint64(g), 10)]
}

// dataDirUsage is the disk space the regular files under dir take (bbolt
// extends its files sparsely: their apparent size overstates it), in all
// and by group directory (groups/<id>/), in one walk.
func dataDirUsage(dir string) (int64, map[string]int64) {
	var n int64
	groups := map[string]int64{}
	under := filepath.Join(dir, "groups") + string(filepath.Separator)
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return nil
		}
		size := allocated(info)
		n += size
		if rest, ok := strings.CutPrefix(path, under); ok {
			id, _, _ := strings.Cut(rest, string(filepath.Separator))
			groups[id] += size
		}
		return nil
	})
	return n, groups
}

// peerDisks remembers which nodes said their disk refuses writes, from
// their /v1/status, so a leader refuses a group's writes when a majority
// of its members could not append them.
type peerDisks struct {
	// mu protects low.
	mu  sync.Mutex
	low map[string]time.Time // node -> when it last said so
	// lows is len(low), read without the lock: a write then costs one
	// atomic load while every disk has room.
	lows atomic.Int32
}

// peerDiskTTL is how long a node's "low" is believed.
const peerDiskTTL = 5 * time.Second

func (p *peerDisks) set(node string, low bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.low == nil {
		p.low = map[string]time.Time{}
	}
	if low {
		p.low[node] = time.Now()
	} else {
		delete(p.low, node)
	}
	p.lows.Store(int32(len(p.low)))
}

func (p *peerDisks) isLow(node string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.low[node]
	return ok && time.Since(at) < peerDiskTTL
}

// admit refuses a write in group gid when a majority of its members other
// than self are short of disk (self is checked on its own, more closely).
func (p *peerDisks) admit(m *kvd.Map, gid kvd.GroupID, self string) error {
	if p.lows.Load() == 0 {
		return nil
	}
	grp, ok := m.Group(gid)
	if !ok {
		return nil
	}
	var low []string
	for _, mem := range grp.Members {
		if mem != self && p.isLow(mem) {
			low = append(low, mem)
		}
	}
	if len(low) > 0 && len(low) >= len(grp.Members)/2+1 {
		return fmt.Errorf("write refused: the disks of %v, a majority of group %d, are short of space: %w", low, gid, kvd.ErrInsufficientStorage)
	}
	return nil
}

// handOffWhileShort hands the leadership of every group this node leads
// to a member whose disk has room, while this node's disk refuses writes:
// the leader decides on writes by its own disk, so a leader short of
// space would keep its group unwritable although a majority of its
// members could take the writes. The member must follow this node (it is
// caught up enough to win at once); lastTry spaces the attempts per
// group.
func (s *Server) handOffWhileShort(ctx context.Context, lastTry map[kvd.GroupID]time.Time) {
	if !s.disk.low.Load() {
		return
	}
	m := s.Map()
	for gid, g := range s.hosted() {
		grp, ok := m.Group(gid)
		if !ok || !g.IsLeader() || time.Since(lastTry[gid]) < 5*time.Second {
			continue
		}
		lastTry[gid] = time.Now()
		for _, to := range grp.Members {
			if to == s.id || s.peerDisks.isLow(to) {
				continue
			}
			st, err := s.peerStatus(ctx, to)
			if err != nil || !followsMe(st, gid, s.id) || st.Storage == nil || !st.Storage.Writable {
				continue
			}
			if err := g.TransferLeadershipTo(to); err != nil {
				s.log.Warn("this node's disk is short of space; handing leadership to a member with room failed", "group", gid, "to", to, "err", err)
				continue
			}
			s.log.Warn("this node's disk is short of space; leadership handed to a member with room", "group", gid, "to", to)
			break
		}
	}
}

// warnSmallReserve warns when the free space kept back for Raft's own
// writes cannot hold a new raft-wal segment for every hosted group (each
// segment is allocated whole): writes are then refused only after the
// disk has filled, and a group whose state or log cannot grow stalls
// until space is freed. Deleting keys frees none (bbolt files do not
// shrink).
func (s *Server) warnSmallReserve() {
	rc := s.cfg.Replication
	if rc.LogStore != replication.LogStoreWAL || rc.WALSegmentBytes <= 0 || s.cfg.MinFreeBytes <= 0 {
		return
	}
	need := int64(len(s.hosted())) * int64(rc.WALSegmentBytes)
	if s.cfg.MinFreeBytes < need {
		s.log.Warn("--min-free-bytes is less than a raft-wal segment for every hosted group: the disk can fill before writes are refused",
			"min_free_bytes", s.cfg.MinFreeBytes, "groups", len(s.hosted()), "segment_bytes", rc.WALSegmentBytes, "advised", need)
	}
}
