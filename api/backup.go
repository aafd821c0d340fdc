package api

// RestoreResult answers POST /v1/admin/restore: what the backup held and
// what was loaded.
type RestoreResult struct {
	// ID names the restore (in logs and in the map while it runs).
	ID string `json:"id"`
	// Keys and Bytes count the keys loaded and their keys' and values'
	// bytes; Expired counts the keys left out because their TTL had run
	// out by the time they were loaded.
	Keys    uint64 `json:"keys"`
	Bytes   uint64 `json:"bytes"`
	Expired uint64 `json:"expired,omitempty"`
	// Groups is the number of groups the keys were loaded into.
	Groups int `json:"groups"`
	// Replaced tells that the cluster's keys were dropped first
	// (?force=true on a cluster that held keys).
	Replaced bool `json:"replaced,omitempty"`
	// Created is when the backup was taken (RFC 3339).
	Created string `json:"created,omitempty"`
	// TookMS is how long the restore took, in milliseconds.
	TookMS int64 `json:"took_ms"`
}

// FeatureBackup is the feature of nodes that apply the commands of
// backups and restores.
const FeatureBackup = "backup"

// RestoreInfo is a restore under way, as GET /v1/cluster shows it: its
// id, the node that drives it, its state ("staging": the keys are being
// staged out of sight, a failure drops them; "loading": the groups load
// them, and it finishes whatever crashes) and when it started.
type RestoreInfo struct {
	ID      string `json:"id"`
	Node    string `json:"node"`
	State   string `json:"state"`
	Force   bool   `json:"force,omitempty"`
	Started string `json:"started,omitempty"`
}
