// Package failpoint holds kvd's hooks for fault-injection runs, which
// exist only in binaries built with the tag "failpoints" (the jepsen
// suite builds those); in a normal build every hook is a constant no-op
// that the compiler removes.
//
// A failpoint is a named step of kvd (say, between a transaction's
// prepare and its decision) that a run arms through
// PUT /debug/failpoints/{name} on a node, so that the node crashes there,
// as kill -9 would, the next time it passes.
//
// A mutant is a deliberately planted bug, named at build time with
// -ldflags "-X github.com/kvd-project/kvd/internal/failpoint.mutant=NAME";
// `make mutants` builds each and runs the workloads that must catch it.
package failpoint

// Failpoints.
const (
	// TxnBeforeDecision is in the transaction coordinator after every
	// participant answered its prepare (yes or no) and before the
	// decision is proposed to the record group.
	TxnBeforeDecision = "txn-before-decision"
	// MoveCopying is in a slot move's driver after the first page of the
	// copy reached the target; MoveCatchingUp after it recorded the
	// catch-up; MoveHandingOff after the source's log fenced the slots,
	// before the last changes are copied and the map flips. Armed with
	// "pause=DURATION" they hold the move in that phase, for a test to
	// crash a group's leader there.
	MoveCopying    = "move-copying"
	MoveCatchingUp = "move-catching-up"
	MoveHandingOff = "move-handing-off"
	// BackupCut is in a backup's driver once every group is frozen for
	// writes, before the snapshots are taken; RestoreStaged in a
	// restore's driver once every key is staged, before the decision;
	// RestoreLoading after the decision, before the groups are sealed.
	BackupCut      = "backup-cut"
	RestoreStaged  = "restore-staged"
	RestoreLoading = "restore-loading"
)

// Failpoints lists every failpoint.
var Failpoints = []string{TxnBeforeDecision, MoveCopying, MoveCatchingUp, MoveHandingOff, BackupCut, RestoreStaged, RestoreLoading}

// Mutants: each names one planted bug. A mutant's site is a branch
// `if failpoint.Mutant(failpoint.MutantX) { ... }` that a normal build
// compiles away; docs/testing.md says which workload and nemesis catch
// each.
const (
	// MutantFollowerReadNoWait: a follower read gets the leader's read
	// index but does not wait to have applied it (replication
	// Group.ReadBarrier).
	MutantFollowerReadNoWait = "follower-read-no-wait"
	// MutantReadOnlyTxnIgnoresLocks: a read-only transaction reads the
	// committed value under a prepared write lock instead of settling the
	// lock's transaction first (txn Coordinator.readAll).
	MutantReadOnlyTxnIgnoresLocks = "ro-txn-ignores-locks"
	// MutantLeaderReadNoQuorum: a linearizable read is served from local
	// state whenever the replica thinks it leads, without a read-index
	// round (replication Group.ReadBarrier).
	MutantLeaderReadNoQuorum = "leader-read-no-quorum"
	// MutantAbsentRecordAborted: recovery settles a lock whose
	// transaction has no record yet as aborted, without writing an
	// aborted record, so a late prepare can still create it and the
	// transaction commit (store applier.recover).
	MutantAbsentRecordAborted = "absent-record-aborted"
	// MutantRecoverCommitsPending: recovery rolls a pending record past
	// its deadline forward to committed instead of aborting it (store
	// applier.recover).
	MutantRecoverCommitsPending = "recover-commits-pending"
	// MutantRecoverAbortsCommitted: recovery reports a committed
	// transaction as aborted, so its locks are dropped (store
	// applier.recover).
	MutantRecoverAbortsCommitted = "recover-aborts-committed"
	// MutantAckBeforeCommit: a write whose entry raft appended but whose
	// leadership was lost before it committed is answered as a success
	// (replication Group.complete ignores the apply future's error).
	MutantAckBeforeCommit = "ack-before-commit"
	// MutantServeBeforeCatchUp: a restarted replica counts as caught up
	// at once and serves stale reads (and says it is ready) before it
	// has re-applied its log (replication Open).
	MutantServeBeforeCatchUp = "serve-before-catch-up"
)

// Mutants lists every mutant.
var Mutants = []string{
	MutantFollowerReadNoWait, MutantReadOnlyTxnIgnoresLocks, MutantLeaderReadNoQuorum,
	MutantAbsentRecordAborted, MutantRecoverCommitsPending, MutantRecoverAbortsCommitted,
	MutantAckBeforeCommit, MutantServeBeforeCatchUp,
}
