package server

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/replication"
)

// nodeMetrics are the node's own metrics beyond HTTP's (httpapi) and the
// per-replica gauges read at scrape time (raftCollector).
type nodeMetrics struct {
	apply  *prometheus.HistogramVec
	append *prometheus.HistogramVec

	// Counted by the node's own work.
	expired       atomic.Uint64 // keys deleted by their TTL
	watchesOpen   atomic.Int64
	watchesShed   atomic.Uint64 // watches refused: the node served its most
	txnRecoveries atomic.Uint64 // transactions finished by a reader or a janitor
	txnOutcomes   *prometheus.CounterVec

	// Membership.
	mapChanges      *prometheus.CounterVec
	configChanges   *prometheus.CounterVec
	learnerBehind   *prometheus.GaugeVec
	replicasRetired atomic.Uint64

	// Slot moves.
	moves        *prometheus.CounterVec
	moveHandOff  prometheus.Histogram
	strayDropped prometheus.Counter

	// Backups and restores.
	backups, restores  *prometheus.CounterVec
	backupLastTime     atomic.Int64 // Unix ns of the last backup taken whole
	backupLastBytes    atomic.Uint64
	backupLastDuration atomic.Int64 // ns
}

func newNodeMetrics() *nodeMetrics {
	return &nodeMetrics{
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvd_state_apply_seconds",
			Help:    "Time to apply one batch of committed entries to a replica's state (one bbolt transaction).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"group"}),
		append: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvd_raft_log_append_seconds",
			Help:    "Time to append entries to a replica's Raft log, fsync included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"group"}),
		mapChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_cluster_map_changes_total",
			Help: "Changes this node made to the cluster map as the system group's leader, by kind (add-node, activate, leave, drop-node, add-learner, promote, remove-replica, reorder).",
		}, []string{"change"}),
		configChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_raft_configuration_changes_total",
			Help: "Raft configuration changes this node made as a group's leader, by kind (add_learner, promote, remove).",
		}, []string{"change"}),
		learnerBehind: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvd_learner_entries_behind",
			Help: "How many entries a learner (a replica being added) trails its group leader's commit index, as the leader last measured.",
		}, []string{"group", "node"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_slot_moves_total",
			Help: "Slot moves this node drove to their end, by result (done, failed).",
		}, []string{"result"}),
		moveHandOff: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvd_slot_move_hand_off_seconds",
			Help:    "How long the slots of a move refused writes: from the fence in the source's log to the flip.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		strayDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvd_moved_keys_dropped_total",
			Help: "Keys this node's groups dropped as leaders because their slots moved to another group (or a failed move had copied them).",
		}),
		backups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_backups_total",
			Help: "Backups this node took (asked over HTTP, or on its schedule), by result (done, failed).",
		}, []string{"result"}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_restores_total",
			Help: "Restores this node drove, by result (done, failed).",
		}, []string{"result"}),
		txnOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvd_txn_total",
			Help: "Transactions this node coordinated, by outcome (committed, conflict, compare_failed, not_a_number, unknown, failed).",
		}, []string{"outcome"}),
	}
}

// observer feeds a replica's applies and appends into the histograms.
func (m *nodeMetrics) observer(g kvd.GroupID) replication.Observer {
	label := strconv.FormatUint(uint64(g), 10)
	apply, appendH := m.apply.WithLabelValues(label), m.append.WithLabelValues(label)
	return replication.Observer{
		Apply:  func(d time.Duration) { apply.Observe(d.Seconds()) },
		Append: func(d time.Duration) { appendH.Observe(d.Seconds()) },
	}
}

func (m *nodeMetrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.apply, m.append, m.txnOutcomes, m.mapChanges, m.configChanges, m.learnerBehind, m.moves, m.moveHandOff, m.strayDropped,
		m.backups, m.restores)
	gauge := func(name, help string, fn func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn)
	}
	reg.MustRegister(
		gauge("kvd_backup_last_timestamp_seconds", "When this node finished its last backup taken whole (Unix time; 0: none yet).",
			func() float64 { return float64(m.backupLastTime.Load()) / 1e9 }),
		gauge("kvd_backup_last_size_bytes", "Size of the last backup this node took whole.",
			func() float64 { return float64(m.backupLastBytes.Load()) }),
		gauge("kvd_backup_last_duration_seconds", "How long the last backup this node took whole lasted.",
			func() float64 { return float64(m.backupLastDuration.Load()) / 1e9 }),
	)
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		counter("kvd_ttl_expired_total", "Keys this node deleted as their leader because their time to live ran out.", &m.expired),
		counter("kvd_txn_recoveries_total", "Transactions left by their coordinator that this node finished (readers and janitors).", &m.txnRecoveries),
		counter("kvd_watches_refused_total", "Watches refused because the node served as many as it may (429).", &m.watchesShed),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kvd_watches_open", Help: "Watches this node is serving."},
			func() float64 { return float64(m.watchesOpen.Load()) }),
	)
}

// raftCollector reports each hosted group's Raft state, health and sizes
// when scraped, and the node's disk.
type raftCollector struct{ s *Server }

var (
	descState = prometheus.NewDesc("kvd_raft_state", "Raft role of this node's replica of a group (1 for the current role).",
		[]string{"group", "role"}, nil)
	descTerm    = prometheus.NewDesc("kvd_raft_term", "Current Raft term of a group's replica.", []string{"group"}, nil)
	descCommit  = prometheus.NewDesc("kvd_raft_commit_index", "Raft commit index of a group's replica.", []string{"group"}, nil)
	descApplied = prometheus.NewDesc("kvd_raft_applied_index", "Index of the last entry a group's replica has applied to its state.", []string{"group"}, nil)
	descLast    = prometheus.NewDesc("kvd_raft_last_index", "Index of the last entry in a group replica's log.", []string{"group"}, nil)
	descLeader  = prometheus.NewDesc("kvd_raft_has_leader", "1 if the group's replica knows a leader.", []string{"group"}, nil)
	descHealth  = prometheus.NewDesc("kvd_replica_health", "Health of a group's replica (1 for the current state: ok, catching_up, repairing, stalled).",
		[]string{"group", "state"}, nil)
	descStateBytes = prometheus.NewDesc("kvd_state_bytes", "Size of a group replica's state file (bbolt).", []string{"group"}, nil)
	descHistEvents = prometheus.NewDesc("kvd_history_events", "Events a group replica's watch history holds (bounded by --watch-history).", []string{"group"}, nil)
	descHistBytes  = prometheus.NewDesc("kvd_history_bytes", "Bytes of keys and values a group replica's watch history holds.", []string{"group"}, nil)
	descCacheBytes = prometheus.NewDesc("kvd_raft_log_cache_bytes", "Bytes of recent log entries a replica caches.", []string{"group"}, nil)
	descQueued     = prometheus.NewDesc("kvd_proposal_queue_bytes", "Bytes of commands waiting to be proposed in a group.", []string{"group"}, nil)
	descInflight   = prometheus.NewDesc("kvd_proposal_inflight_bytes", "Bytes of entries proposed in a group and not yet applied.", []string{"group"}, nil)
	descShed       = prometheus.NewDesc("kvd_proposals_shed_total", "Proposals refused because a group's queue was full.", []string{"group"}, nil)
	descSnapshots  = prometheus.NewDesc("kvd_snapshots_total", "Snapshots of a group's state: taken here, or installed from the leader.", []string{"group", "kind"}, nil)
	descDamaged    = prometheus.NewDesc("kvd_corruption_detected_total", "Damaged data found in a replica (log entries or stored values failing their checksum).", []string{"group"}, nil)
	descRepairs    = prometheus.NewDesc("kvd_repairs_total", "Repairs of damaged data, by result.", []string{"group", "result"}, nil)
	descChecks     = prometheus.NewDesc("kvd_integrity_checks_total", "Integrity checks (scrubs, and hash comparisons on the leader), by result.", []string{"group", "result"}, nil)
	descAlarm      = prometheus.NewDesc("kvd_integrity_alarm", "1 while the last integrity check of a group's replica failed.", []string{"group"}, nil)
	descStalls     = prometheus.NewDesc("kvd_apply_stalls_total", "Times a replica's applies waited for its disk (ENOSPC, EIO).", []string{"group"}, nil)
	descMissing    = prometheus.NewDesc("kvd_replica_missing", "1 for a group the map places on this node that it does not start (its data was lost).", []string{"group"}, nil)
	descDiskUsed   = prometheus.NewDesc("kvd_disk_used_bytes", "Size of the node's data directory.", nil, nil)
	descDiskFree   = prometheus.NewDesc("kvd_disk_free_bytes", "Free space on the data directory's disk.", nil, nil)
	descWritable   = prometheus.NewDesc("kvd_storage_writable", "0 while the node refuses writes for lack of disk space or quota.", nil, nil)
	descRaftRefuse = prometheus.NewDesc("kvd_raft_connections_refused_total", "Raft connections refused at the handshake (another cluster, or no secret).", nil, nil)
)

var raftDescs = []*prometheus.Desc{descState, descTerm, descCommit, descApplied, descLast, descLeader, descHealth, descStateBytes, descHistEvents, descHistBytes,
	descCacheBytes, descQueued, descInflight, descShed, descSnapshots, descDamaged, descRepairs, descChecks, descAlarm, descStalls,
	descMissing, descDiskUsed, descDiskFree, descWritable, descRaftRefuse}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range raftDescs {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	one := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for gid, g := range c.s.hosted() {
		st := g.Status()
		label := strconv.FormatUint(uint64(gid), 10)
		for _, role := range []string{"leader", "follower", "candidate", "shutdown"} {
			gauge(descState, one(st.Role == role), label, role)
		}
		gauge(descTerm, float64(st.Term), label)
		gauge(descCommit, float64(st.CommitIndex), label)
		gauge(descApplied, float64(st.AppliedIndex), label)
		gauge(descLast, float64(st.LastIndex), label)
		gauge(descLeader, one(st.Leader != ""), label)
		h := g.Health()
		for _, state := range []string{"ok", "catching_up", "repairing", "stalled"} {
			gauge(descHealth, one(h.State == state), label, state)
		}
		gauge(descAlarm, one(h.Integrity != nil && !h.Integrity.OK), label)
		gs := g.Stats()
		gauge(descStateBytes, float64(gs.StateBytes), label)
		gauge(descHistEvents, float64(gs.HistoryEvents), label)
		gauge(descHistBytes, float64(gs.HistoryBytes), label)
		gauge(descCacheBytes, float64(gs.LogCacheBytes), label)
		gauge(descQueued, float64(gs.QueuedBytes), label)
		gauge(descInflight, float64(gs.InflightBytes), label)
		counter(descShed, gs.Shed, label)
		counter(descSnapshots, gs.SnapshotsTaken, label, "taken")
		counter(descSnapshots, gs.SnapshotsInstalled, label, "installed")
		counter(descDamaged, gs.Damaged, label)
		counter(descRepairs, gs.Repairs, label, "ok")
		counter(descRepairs, gs.RepairFailures, label, "failed")
		counter(descChecks, gs.ChecksOK, label, "ok")
		counter(descChecks, gs.ChecksFailed, label, "failed")
		counter(descStalls, gs.ApplyStalls, label)
	}
	for gid := range c.s.missing {
		gauge(descMissing, 1, strconv.FormatUint(uint64(gid), 10))
	}
	if c.s.disk != nil {
		d := c.s.disk.status()
		gauge(descDiskUsed, float64(d.UsedBytes))
		gauge(descDiskFree, float64(d.FreeBytes))
		gauge(descWritable, one(d.Writable))
	}
	if c.s.mux != nil {
		counter(descRaftRefuse, c.s.mux.Refused())
	}
}

// backupDone counts a backup that began at began, and keeps its figures if
// it was taken whole.
func (m *nodeMetrics) backupDone(began time.Time, sum backup.Summary, size int64, err error) {
	if err != nil {
		m.backups.WithLabelValues("failed").Inc()
		return
	}
	m.backups.WithLabelValues("done").Inc()
	m.backupLastTime.Store(time.Now().UnixNano())
	m.backupLastBytes.Store(uint64(size))
	m.backupLastDuration.Store(int64(time.Since(began)))
}
