// Package kvd holds the types shared by every layer of the kvd key-value
// store: keys and their slots, versions, the cluster map with its placement
// rule, the limits of the contract, and the errors callers branch on.
//
// kvd is a replicated, sharded key-value store. Keys hash into 1024 slots;
// each slot is owned by a shard group, a Raft group whose replicas keep their
// state in bbolt. A node (one kvd process) hosts replicas of one or more
// groups. The packages build on each other from the bottom up:
//
//	kvd (root)    keys, slots, the cluster map, limits, errors, the KV
//	              interface and idempotency fingerprints
//	api/          HTTP wire types and the one table of error codes
//	store/        one replica's state in bbolt; knows nothing of Raft
//	replication/  a Raft group over a store
//	txn/          cross-group transactions: two-phase commit, recovery
//	server/       a node's core: its replicas, routing, leader duties
//	httpapi/      the HTTP API, an adapter over the core
//	node/         the composition root: the core served over HTTP
//	embed/        the core in-process, as a KV (no HTTP)
//	client/       the Go client (smart router), also a KV
//	shell/        kvcli's commands over the client
//	cmd/          the daemon (kvd), the shell (kvcli), the load tool
//
// Nothing imports upward: TestLayers holds the arrows with one table,
// shown in docs/architecture.md.
package kvd
