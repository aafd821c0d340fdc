package replication

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// A repair can install a state past the end of the replica's own log and
// snapshots (a peer's snapshot). The replica then serves reads at that
// index; if it crashed and rebuilt its state from its own snapshot and
// log, it would serve an older one. So a repair records the index it
// installed in a small file, and the catch-up floor after a restart
// covers it (see runCatchUp).

const floorName = "served.index"

// readFloor returns the index recorded in dir (0 if none).
func readFloor(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, floorName))
	if err != nil || len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// writeFloor records idx in dir, durably.
func writeFloor(dir string, idx uint64) error {
	path := filepath.Join(dir, floorName)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record the served index: %w", err)
	}
	if _, err := f.Write(binary.BigEndian.AppendUint64(nil, idx)); err != nil {
		f.Close()
		return fmt.Errorf("record the served index: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("record the served index: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("record the served index: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("record the served index: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("record the served index: %w", err)
	}
	defer d.Close()
	return d.Sync()
}
