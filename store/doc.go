// Package store keeps one replica's state in bbolt: keys with values and
// versions, the index of the last applied Raft entry, and the cluster map.
//
// The store knows nothing of Raft. Replication hands it batches of entries
// (Apply), each stamped with its log index; the store applies a whole batch
// in one bbolt transaction and records the last applied index in the same
// transaction, so applying is idempotent: an entry at or below the recorded
// index is skipped. A restart therefore never applies an entry twice, and,
// because each batch commits atomically with its index, never loses one
// the store has acknowledged.
//
// Reads (Get, Scan) run in their own read-only transactions and see only
// committed batches. Snapshot fixes a consistent read transaction whose
// contents can be streamed out later; Restore replaces the whole state
// atomically (temporary file, fsync, verify, rename, reopen).
package store
