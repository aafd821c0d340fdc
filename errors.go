package kvd

import (
	"errors"
	"fmt"
)

// The errors callers branch on. Every layer wraps them with the operation
// that failed (%w), so test with errors.Is, never by message. The HTTP layer
// maps each to one status code and error code of the contract.
var (
	// ErrInvalid means the request is malformed; nothing was applied.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound means the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge means a key, value, body or transaction exceeds a limit.
	ErrTooLarge = errors.New("too large")
	// ErrPreconditionFailed means an If-Match or If-None-Match condition did
	// not hold; nothing was applied.
	ErrPreconditionFailed = errors.New("precondition failed")
	// ErrCompareFailed means a transaction compare did not hold.
	ErrCompareFailed = errors.New("compare failed")
	// ErrConflict means the operation met another transaction's lock and
	// was not applied; it may be retried.
	ErrConflict = errors.New("conflict")
	// ErrNotANumber means a counter op met a value that is not a decimal
	// 64-bit integer, or the sum overflowed.
	ErrNotANumber = errors.New("not a number")
	// ErrCompacted means a requested position is older than the retained
	// history.
	ErrCompacted = errors.New("compacted")
	// ErrWrongGroup means the request reached a group that does not own the
	// key's slot at the epoch the caller named.
	ErrWrongGroup = errors.New("wrong group")
	// ErrIdempotencyMismatch means an idempotency key was reused for a
	// different request.
	ErrIdempotencyMismatch = errors.New("idempotency key reused for a different request")
	// ErrUnavailable means the request could not be served now and nothing
	// was proposed; it is safe to retry.
	ErrUnavailable = errors.New("unavailable")
	// ErrNotLeader means this replica is not its group's leader; nothing
	// was proposed. Errors that wrap it are also ErrUnavailable and may be
	// a *NotLeaderError naming the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrUnknownOutcome means a write was handed to Raft but its outcome is
	// not known: it may or may not take effect. Never retry such a write
	// blindly.
	ErrUnknownOutcome = errors.New("outcome unknown")
	// ErrClosed means the component has been closed.
	ErrClosed = errors.New("closed")
	// ErrInsufficientStorage means the node refused a write because its
	// disk is full, or nearly, or its data is over its quota; nothing was
	// applied. Reads go on, and writes are taken again once there is room.
	ErrInsufficientStorage = errors.New("insufficient storage")
	// ErrForbidden means the caller may not make this request (a
	// node-to-node call without the cluster's secret, or a token without
	// a grant for a key the request touches).
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthenticated means the request carries no valid token, on a
	// cluster that requires one.
	ErrUnauthenticated = errors.New("unauthenticated")
)

// ErrOverloaded means the node shed the request to keep its memory and
// latency bounded; nothing was proposed. It also matches ErrUnavailable:
// trying again later, or elsewhere, is safe.
var ErrOverloaded error = overloadedError{}

type overloadedError struct{}

func (overloadedError) Error() string        { return "overloaded" }
func (overloadedError) Is(target error) bool { return target == ErrUnavailable }

// NotLeaderError is returned by a replica that is not its group's leader.
// It matches ErrNotLeader and ErrUnavailable under errors.Is.
type NotLeaderError struct {
	// Group is the group asked.
	Group GroupID
	// Leader is the node id of the current leader, or "" if none is known.
	Leader string
}

// Error implements error.
func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return fmt.Sprintf("group %d: not the leader, no leader known", e.Group)
	}
	return fmt.Sprintf("group %d: not the leader, the leader is %s", e.Group, e.Leader)
}

// Is makes a *NotLeaderError match ErrNotLeader and ErrUnavailable.
func (e *NotLeaderError) Is(target error) bool {
	return target == ErrNotLeader || target == ErrUnavailable
}

// LeaderHint returns the leader named by a NotLeaderError in err's chain, or
// "" if there is none.
func LeaderHint(err error) string {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.Leader
	}
	return ""
}
