package api

// EncryptionStatus answers GET /v1/admin/encryption: where encryption at
// rest stands on every node of the cluster.
type EncryptionStatus struct {
	// Done is whether every node answered and has everything it holds
	// under its active key, the same on every node.
	Done  bool             `json:"done"`
	Nodes []NodeEncryption `json:"nodes"`
}

// NodeEncryption is one node's encryption at rest.
type NodeEncryption struct {
	Node string `json:"node"`
	// Enabled is whether the node has a key file.
	Enabled bool `json:"enabled"`
	// Active is the id of the key new data is sealed under; Keys are the
	// ids of every key the node holds, the active one first.
	Active string   `json:"active,omitempty"`
	Keys   []string `json:"keys,omitempty"`
	// Done is whether every replica the node hosts has its state, Raft
	// log and snapshots under the active key.
	Done   bool                       `json:"done"`
	Groups map[string]GroupEncryption `json:"groups,omitempty"`
	// Error says why the node could not be asked, or its last reload of
	// the key file failed.
	Error string `json:"error,omitempty"`
}

// GroupEncryption is one replica's re-encryption.
type GroupEncryption struct {
	Done      bool   `json:"done"`
	Rewritten uint64 `json:"rewritten"`
	Error     string `json:"error,omitempty"`
}

// KeyRotation answers POST /v1/admin/encryption/rotate.
type KeyRotation struct {
	// Key is the id of the new active key.
	Key string `json:"key"`
	// Nodes are the nodes that now seal under it.
	Nodes []string `json:"nodes"`
}
