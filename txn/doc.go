// Package txn runs transactions across shard groups with two-phase
// commit and a durable transaction record.
//
// A transaction whose keys all live in one group commits in one Raft
// round of that group (one-phase). Otherwise the coordinator (whichever
// node took the request):
//
//  1. prepares every participant group in parallel, each through its own
//     log: the group checks the compares on its keys, fails fast if
//     another transaction holds a conflicting lock, reads its gets, locks
//     its keys (write locks carry the new values) and votes. The group of
//     the first key also creates the transaction's record, pending;
//  2. decides: commits (all voted yes) or aborts the record, through the
//     record group's log, with a compare-and-set from pending. The
//     transaction is committed exactly when its record says so. The same
//     entry resolves the record group's own locks;
//  3. resolves the other groups' locks (applying or dropping the new
//     values), then answers. Aborted transactions are answered at once
//     and resolved in the background.
//
// A coordinator may die at any point. Every lock names its transaction,
// its record group and a deadline. Anyone who meets an expired lock
// (a read, a write, the janitor) asks the record group to recover the
// transaction: a pending record past its deadline is aborted, an absent
// one is created aborted, both through the log with the same
// compare-and-set the coordinator's commit uses, so exactly one wins.
// Prepares after the deadline are refused, so no lock appears once a
// record may have been aborted.
//
// See DESIGN.md in this directory and docs/transactions.md.
package txn
