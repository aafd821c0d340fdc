package jepsen

import "time"

// Scope says whose a resource is.
type Scope string

// Scopes of resources.
const (
	// ScopeProcess: a node's process; its series starts again when the
	// node restarts.
	ScopeProcess Scope = "process"
	// ScopeDisk: a node's data directory, which outlives its processes.
	ScopeDisk Scope = "disk"
	// ScopeCluster: the cluster's, sampled once per round.
	ScopeCluster Scope = "cluster"
)

// clusterNode names the series of cluster resources.
const clusterNode = "cluster"

// Resource is one sampled resource.
type Resource struct {
	Name, Title, Unit string
	Scope             Scope
	// Bound judges it; nil: plotted, not judged.
	Bound *Bound
	// WarmUp is how long it may grow before it settles: it is judged
	// only in runs whose second quarter starts after it.
	WarmUp time.Duration
}

// Bound is the rule by which a resource counts as bounded. With m2 and
// m4 the means of its samples in the second and the last quarter of the
// run, and a the growth the live data allows between them (PerKey times
// the growth of the keys the clients wrote and did not delete, plus
// PerMiB times that of their keys' and values' MiB), it is unbounded
// when the growth m4 - m2 - a exceeds both (Ratio - 1) * m2 and Floor.
//
// Why these quarters: the first holds the warm-up (heaps and caches
// filling, the first snapshots, the Raft logs reaching their trailing
// length), which is growth but not a leak. Why a ratio: a leak that
// grows linearly from a base b by g over the run moves the mean from
// b + 3g/8 to b + 7g/8, so the ratio grows with g/b while noise does not
// move it far; a linear leak from nothing gives 7/3, so any Ratio below
// 2.33 catches one that dominates. Why a floor: a small resource (a few
// file descriptors, a few MiB of disk) doubles by chance, and growth
// below the floor is not worth failing a run for.
type Bound struct {
	Ratio, Floor   float64
	PerKey, PerMiB float64
}

// soakResources are the resources a soak samples, in the order they are
// reported. The bounds were chosen from soak runs (figures in the
// comments: 3 nodes, 3 groups, mixed faults, 16 workers):
var soakResources = []Resource{
	// RSS counts the pages of the memory-mapped bbolt files that were
	// touched, which grow with the data: the allowance per key covers
	// them.
	{Name: "rss", Title: "resident memory (VmRSS)", Unit: "MiB", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 64, PerKey: 1.0 / 1024, PerMiB: 4}},
	// Anonymous memory (heap, stacks) is what a leak in the process
	// grows.
	{Name: "rss_anon", Title: "anonymous resident memory (RssAnon)", Unit: "MiB", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 32, PerKey: 0.25 / 1024, PerMiB: 2}},
	{Name: "heap", Title: "Go heap in use (go_memstats_heap_inuse_bytes)", Unit: "MiB", Scope: ScopeProcess},
	// A node runs 70 goroutines idle and up to 200 under the soak's
	// clients: every client and peer connection holds one or two.
	{Name: "goroutines", Title: "goroutines (go_goroutines)", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 100}},
	{Name: "open_fds", Title: "open file descriptors (process_open_fds)", Scope: ScopeProcess,
		Bound: &Bound{Ratio: 1.5, Floor: 100}},
	// The data directory grows with the data the clients keep (the set
	// workload only ever inserts): a key costs its bytes and a few
	// hundred bytes of record, B+tree page and snapshot copy on each
	// node. Past that it must stay bounded: the Raft logs are truncated
	// after snapshots, old snapshots removed, the watch history and
	// idempotency records pruned.
	//
	// A Raft log file grows until its group's first snapshot lets it be
	// truncated, and never shrinks (bbolt reuses its free pages): its
	// size is the most entries a replica ever held between snapshots.
	// A replica checks for a snapshot every 30 to 60 s of its process's
	// life, so while the nemesis restarts a node more often than that
	// its logs grow (3 minutes without one: 24 MiB on a node). The high
	// mark rises in steps as such stretches come; a log never truncated
	// grows by several MiB a minute for good. Disk is judged only in
	// runs of 8 minutes or more: 2 minutes of warm-up and more.
	{Name: "data_dir", Title: "data directory (allocated)", Unit: "MiB", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 32, PerKey: 1.0 / 1024, PerMiB: 4}},
	{Name: "raft_log", Title: "Raft log files (wal/ or raft.db)", Unit: "MiB", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 32}},
	{Name: "snapshots", Title: "snapshot files", Unit: "MiB", Scope: ScopeDisk},
	// The watch history is pruned to --watch-history events a group (a
	// soak sets 5000): past warm-up it must stay at its bound.
	{Name: "history_events", Title: "watch history events (kvd_history_events, all groups)", Scope: ScopeDisk, WarmUp: 2 * time.Minute,
		Bound: &Bound{Ratio: 1.5, Floor: 1000}},
	{Name: "state", Title: "state files (state.db: data, watch history, idempotency and transaction records)", Unit: "MiB", Scope: ScopeDisk},
	// Committed and aborted transactions' records are forgotten once
	// every participant has resolved; a handful may be in flight.
	{Name: "txn_records", Title: "transaction records (GET /v1/admin/txns)", Scope: ScopeCluster,
		Bound: &Bound{Ratio: 1.5, Floor: 500}},
	{Name: "live_keys", Title: "keys the clients wrote and did not delete", Scope: ScopeCluster},
	{Name: "live_data", Title: "keys and values the clients wrote and did not delete", Unit: "MiB", Scope: ScopeCluster},
}

// Resources lists the resources a soak samples.
func Resources() []Resource { return append([]Resource(nil), soakResources...) }

// ResourceSample is one round's figures for one node (or the cluster).
type ResourceSample struct {
	// T is the time since the run began, in seconds.
	T    float64 `json:"t_s"`
	Node string  `json:"node"`
	// Pid is the node's process, 0 when it was not running.
	Pid int `json:"pid,omitempty"`
	// Values are the figures by resource name, in the resource's unit;
	// a figure that could not be read (a paused node's metrics) is
	// missing.
	Values map[string]float64 `json:"values"`
}
