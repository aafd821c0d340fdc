package server

import (
	"time"

	"github.com/kvd-project/kvd/internal/backoff"
)

// The node's paces between attempts.
var (
	// leaderBackoff paces the search for a group's leader when no hint
	// names it (a command or read sent to the group's leader): 10 ms,
	// doubling, up to 320 ms.
	leaderBackoff = backoff.Policy{Base: 10 * time.Millisecond, Max: 320 * time.Millisecond}
	// lockBackoff paces a plain write's retries while a transaction's
	// lock refuses it (for at most lockWait): 5 ms, doubling, up to 80 ms.
	lockBackoff = backoff.Policy{Base: 5 * time.Millisecond, Max: 80 * time.Millisecond}
	// cutBackoff paces a backup's tries to take its cut: 100 ms,
	// doubling, up to 2 s.
	cutBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	// hopBackoff paces a scan's few hops towards a group's leader when a
	// hop names none: 50 ms, doubling, up to 400 ms.
	hopBackoff = backoff.Policy{Base: 50 * time.Millisecond, Max: 400 * time.Millisecond}
	// watchBackoff paces a watch's retries of a group's history: 50 ms,
	// doubling, up to 800 ms.
	watchBackoff = backoff.Policy{Base: 50 * time.Millisecond, Max: 800 * time.Millisecond}
	// joinPace paces a joining node's attempts while no member takes it:
	// 250 ms, doubling, up to 5 s.
	joinPace = backoff.Policy{Base: 250 * time.Millisecond, Max: 5 * time.Second}
)
