package replication

import "errors"

var (
	// ErrNoState is returned by Open for a replica that must have state
	// (Config.RequireState) and has none.
	ErrNoState = errors.New("no raft state")

	// errNoLeader says a replica knows of no leader for now.
	errNoLeader = errors.New("no leader known")
	// errNotApplied answers entries a closing replica did not apply.
	errNotApplied = errors.New("entry not applied: the replica is closing")
	// errReplicaClosed answers the heartbeats that reach a replica after
	// it shut its transport's gate (see gatedTransport).
	errReplicaClosed = errors.New("replica closed")
)
