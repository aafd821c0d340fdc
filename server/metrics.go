package server

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// raftCollector reports each hosted group's Raft state when scraped.
type raftCollector struct{ s *Server }

var (
	descState = prometheus.NewDesc("kvd_raft_state", "Raft role of this node's replica of a group (1 for the current role).",
		[]string{"group", "role"}, nil)
	descTerm    = prometheus.NewDesc("kvd_raft_term", "Current Raft term of a group's replica.", []string{"group"}, nil)
	descCommit  = prometheus.NewDesc("kvd_raft_commit_index", "Raft commit index of a group's replica.", []string{"group"}, nil)
	descApplied = prometheus.NewDesc("kvd_raft_applied_index", "Index of the last entry a group's replica has applied to its state.", []string{"group"}, nil)
	descLast    = prometheus.NewDesc("kvd_raft_last_index", "Index of the last entry in a group replica's log.", []string{"group"}, nil)
	descLeader  = prometheus.NewDesc("kvd_raft_has_leader", "1 if the group's replica knows a leader.", []string{"group"}, nil)
)

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descTerm, descCommit, descApplied, descLast, descLeader} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	for gid, g := range c.s.hosted() {
		st := g.Status()
		label := strconv.FormatUint(uint64(gid), 10)
		for _, role := range []string{"leader", "follower", "candidate", "shutdown"} {
			v := 0.0
			if st.Role == role {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, label, role)
		}
		ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(st.Term), label)
		ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(st.CommitIndex), label)
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(st.AppliedIndex), label)
		ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, float64(st.LastIndex), label)
		leader := 0.0
		if st.Leader != "" {
			leader = 1
		}
		ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader, label)
	}
}
