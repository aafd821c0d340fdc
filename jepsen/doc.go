// Package jepsen is kvd's fault-injection harness, in the manner of
// Jepsen: it starts a real cluster of kvd processes on loopback, runs
// concurrent clients through the HTTP API while a nemesis kills, pauses,
// partitions and restarts nodes, records every operation with its
// invocation and completion times, heals the cluster, and checks the
// history against the store's guarantees.
//
// Partitions need no privileges: every node dials every peer through its
// own TCP proxy, one per ordered pair of nodes (Raft and node-to-node
// HTTP each), set with kvd's --peer-addrs. Cutting a directed link closes
// the proxy's open connections and refuses new ones, so a partition also
// cuts connections already pooled. Clients talk to the nodes directly and
// reach every node throughout.
//
// A run may also take backups as it goes (Options.Backup): each one's
// cut is checked against the workload's invariant and each is restored
// into a fresh cluster of another shape and read back (see backup.go).
//
// Nothing imports this package; cmd/kvd-jepsen is its command line.
package jepsen
