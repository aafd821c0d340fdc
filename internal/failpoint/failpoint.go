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
)

// Failpoints lists every failpoint.
var Failpoints = []string{TxnBeforeDecision}
