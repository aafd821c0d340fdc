package replication

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvd-project/kvd/internal/fsutil"
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
	if err := fsutil.WriteFile(filepath.Join(dir, floorName), binary.BigEndian.AppendUint64(nil, idx), 0o600); err != nil {
		return fmt.Errorf("record the served index: %w", err)
	}
	return nil
}
