package replication

import "sync/atomic"

// groupStats counts a replica's events since it opened.
type groupStats struct {
	damaged, repairs, repairFailures atomic.Uint64
	checksOK, checksFailed           atomic.Uint64
	applyStalls, shed                atomic.Uint64
	snapshotsTaken                   atomic.Uint64
	snapshotsInstalled               atomic.Uint64
}

// Stats are a replica's counters and sizes, for metrics.
type Stats struct {
	// Damaged counts damage found (a log entry or a stored value failing
	// its checksum); Repairs and RepairFailures the repair attempts.
	Damaged, Repairs, RepairFailures uint64
	// ChecksOK and ChecksFailed count integrity checks.
	ChecksOK, ChecksFailed uint64
	// ApplyStalls counts the times applying waited for the disk.
	ApplyStalls uint64
	// Shed counts proposals refused because the queue was full.
	Shed uint64
	// SnapshotsTaken counts snapshots persisted here; SnapshotsInstalled
	// the snapshots received from a leader and installed.
	SnapshotsTaken, SnapshotsInstalled uint64
	// QueuedBytes, InflightBytes and LogCacheBytes are the bytes of
	// proposals waiting, entries not yet applied, and cached log entries.
	QueuedBytes, InflightBytes, LogCacheBytes int64
	// StateBytes is the size of the state file.
	StateBytes int64
	// HistoryEvents and HistoryBytes are what the watch history holds.
	HistoryEvents, HistoryBytes uint64
}

// Stats returns the replica's counters and sizes.
func (g *Group) Stats() Stats {
	s := &g.stats
	st := Stats{
		Damaged: s.damaged.Load(), Repairs: s.repairs.Load(), RepairFailures: s.repairFailures.Load(),
		ChecksOK: s.checksOK.Load(), ChecksFailed: s.checksFailed.Load(),
		ApplyStalls: s.applyStalls.Load(), Shed: s.shed.Load(),
		SnapshotsTaken: s.snapshotsTaken.Load(), SnapshotsInstalled: s.snapshotsInstalled.Load(),
		QueuedBytes: g.queued.Load(), InflightBytes: g.inflightSize.Load(), LogCacheBytes: int64(g.logs.cachedBytes()),
		StateBytes: g.db.Size(),
	}
	st.HistoryEvents, st.HistoryBytes = g.db.HistorySize()
	return st
}
