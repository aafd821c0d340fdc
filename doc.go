// Package kvd holds the types shared by every layer of the kvd key-value
// store: keys and their slots, versions, the cluster map with its placement
// rule, the limits of the contract, and the errors callers branch on.
//
// kvd is a replicated, sharded key-value store. Keys hash into 1024 slots;
// each slot is owned by a shard group, a Raft group whose replicas keep their
// state in bbolt. A node (one kvd process) hosts replicas of one or more
// groups. The packages build on each other from the bottom up:
//
//	store/        one replica's state in bbolt; knows nothing of Raft
//	replication/  a Raft group over a store
//	api/          HTTP wire types and error codes shared by server and clients
//	httpapi/      the HTTP handlers
//	server/       the composition root of one node
//	cmd/kvd       the daemon
//
// Nothing imports upward.
package kvd
