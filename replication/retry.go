package replication

import (
	"time"

	"github.com/kvd-project/kvd/internal/backoff"
)

// The replica's paces between attempts.
var (
	// diskBackoff paces the retries of writes the disk refused (the
	// state's applies, raft's term and vote): 50 ms, doubling, up to 2 s.
	diskBackoff = backoff.Policy{Base: 50 * time.Millisecond, Max: 2 * time.Second}
	// repairBackoff paces the attempts to repair damaged state or log
	// entries from peers: 100 ms, doubling, up to 5 s.
	repairBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}
)
