// Package client is kvd's Go client: a smart router that talks to every
// node of a cluster directly.
//
// It bootstraps from any seed endpoint, caches the cluster map and each
// group's leader, and sends every request straight to a replica of the
// key's group, naming the group and map epoch (X-Kvd-Group, X-Kvd-Epoch)
// so a node that cannot serve it refuses rather than forwards. Writes and
// linearizable reads go to the group's leader; follower and stale reads
// are spread over the group's replicas by a read policy (random,
// round-robin, or power of two choices on in-flight requests and latency).
//
// Failures are handled per request, within the caller's context: a
// replica that refuses connections or times out is ejected with backoff
// and probed back in the background; reads (idempotent) move on to
// another replica; writes are retried only when the node promised nothing
// was proposed (503, or a connection that never opened). A write whose
// outcome is unknown is returned as kvd.ErrUnknownOutcome, never retried.
//
// Backup and Restore stream a whole cluster's keys, at one consistent
// cut, to and from a file in the format of package backup, through any
// node; a backup is verified as it arrives.
//
// Errors match the kvd sentinel errors under errors.Is (kvd.ErrNotFound,
// kvd.ErrPreconditionFailed, kvd.ErrUnknownOutcome, ...), re-exported here.
package client

import "github.com/kvd-project/kvd"

// The errors a Client returns, for errors.Is.
var (
	ErrNotFound           = kvd.ErrNotFound
	ErrPreconditionFailed = kvd.ErrPreconditionFailed
	ErrCompareFailed      = kvd.ErrCompareFailed
	ErrConflict           = kvd.ErrConflict
	ErrInvalid            = kvd.ErrInvalid
	ErrTooLarge           = kvd.ErrTooLarge
	ErrWrongGroup         = kvd.ErrWrongGroup
	ErrUnavailable        = kvd.ErrUnavailable
	ErrUnknownOutcome     = kvd.ErrUnknownOutcome
	ErrClosed             = kvd.ErrClosed
)
