package server

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// diskGuard watches the data directory's size and its disk's free space,
// and refuses clients' writes (kvd.ErrInsufficientStorage, 507) before
// the disk fills: past the quota, or below the free space to keep. Reads
// go on; writes are taken again as soon as there is room, without a
// restart. The free space kept back leaves room for what Raft must still
// write: terms and votes, and the entries that finish transactions and
// expire keys.
type diskGuard struct {
	dir     string
	quota   int64
	minFree int64
	log     *slog.Logger

	low atomic.Bool
	// mu protects st.
	mu sync.Mutex
	st api.Storage
}

func newDiskGuard(dir string, quota, minFree int64, log *slog.Logger) *diskGuard {
	d := &diskGuard{dir: dir, quota: quota, minFree: minFree, log: log}
	d.check()
	return d
}

// run checks every interval until ctx ends.
func (d *diskGuard) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.check()
		}
	}
}

// check measures the directory and the disk, and decides.
func (d *diskGuard) check() {
	used := dirSize(d.dir)
	free := freeSpace(d.dir)
	st := api.Storage{UsedBytes: used, FreeBytes: free, QuotaBytes: d.quota, MinFreeBytes: d.minFree, Writable: true}
	switch {
	case d.quota > 0 && used >= d.quota:
		st.Writable, st.Reason = false, fmt.Sprintf("the data directory holds %d bytes, its quota is %d", used, d.quota)
	case free >= 0 && free < d.minFree:
		st.Writable, st.Reason = false, fmt.Sprintf("the data directory's disk has %d bytes free, at least %d must stay free", free, d.minFree)
	}
	d.mu.Lock()
	d.st = st
	d.mu.Unlock()
	if was := d.low.Swap(!st.Writable); was != !st.Writable {
		if st.Writable {
			d.log.Info("disk space is back; taking writes again", "used", used, "free", free)
		} else {
			d.log.Error("refusing writes: "+st.Reason, "used", used, "free", free)
		}
	}
}

// admit returns nil if a client's write may be proposed now.
func (d *diskGuard) admit() error {
	if !d.low.Load() {
		return nil
	}
	d.mu.Lock()
	reason := d.st.Reason
	d.mu.Unlock()
	return fmt.Errorf("write refused: %s: %w", reason, kvd.ErrInsufficientStorage)
}

func (d *diskGuard) status() api.Storage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// dirSize is the apparent size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if e.Type().IsRegular() {
			if info, err := e.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
