// Package replication runs a shard group's replica on hashicorp/raft.
//
// A Group is one replica: raft with a raft-wal (or raft-boltdb) log and
// stable store, file snapshots and a TCP transport (shared by all of a node's groups
// through a Mux), and a store.DB as its state machine. It adds what raft
// lacks:
//
//   - Propose coalesces concurrent writes into shared log entries (group
//     commit) and classifies failures as definite (nothing proposed) or
//     unknown outcome (the entry may still commit).
//   - ReadBarrier makes linearizable reads cheap: a read-index round,
//     shared by every read that arrives while none runs, captures the
//     commit index, confirms leadership with a quorum, and waits for the
//     local state to apply the index. Followers ask the leader for the
//     index (follower reads). Reads never go through the log.
//   - On start the state is brought up to the newest snapshot if it is
//     behind it; raft then replays the log and the store skips entries it
//     has already applied.
//
// See DESIGN.md in this directory for the invariants.
package replication
