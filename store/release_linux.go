//go:build linux

package store

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseMemory drops the resident pages of the state file's memory map.
//
// bbolt reads the file through a shared, read-only memory map, and
// rewrites whole leaves when a value changes, so a stream of large values
// leaves the file's pages mapped into the process: the kernel counts them
// in its resident memory (and against it when it picks a process to kill
// for memory), though they are the page cache's and clean. Dropping them
// changes nothing a reader sees (the file is the same; a page is read
// back on its next access) and keeps the process's resident memory to
// what it holds itself.
//
// It holds a read transaction meanwhile, so bbolt cannot move the map.
func (db *DB) ReleaseMemory() error {
	db.handleMu.RLock()
	defer db.handleMu.RUnlock()
	if db.h == nil {
		return nil
	}
	tx, err := db.h.bdb.Begin(false)
	if err != nil {
		return fmt.Errorf("release memory: %w", err)
	}
	defer tx.Rollback()
	start := db.h.bdb.Info().Data
	end, err := mappingEnd(start)
	if err != nil {
		return fmt.Errorf("release memory: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED); errno != 0 {
		return fmt.Errorf("release memory: madvise: %w", errno)
	}
	return nil
}

// mappingEnd returns the end of this process's memory mapping that
// starts at start, from /proc/self/maps.
func mappingEnd(start uintptr) (uintptr, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	want := strconv.FormatUint(uint64(start), 16)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rng, _, _ := strings.Cut(sc.Text(), " ")
		s, e, ok := strings.Cut(rng, "-")
		if !ok || strings.TrimLeft(s, "0") != want {
			continue
		}
		end, err := strconv.ParseUint(e, 16, 64)
		if err != nil || uintptr(end) <= start {
			return 0, fmt.Errorf("bad mapping %q", rng)
		}
		return uintptr(end), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no mapping at %#x", start)
}
