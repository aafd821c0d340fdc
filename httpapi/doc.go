// Package httpapi serves kvd's HTTP API v1 with gorilla/mux: single-key
// GET/PUT/DELETE with ETags and conditions, scans, the cluster map, node
// status, health, readiness and Prometheus metrics.
//
// Handlers parse and validate a request completely (limits included)
// before the Backend sees it, so nothing malformed is ever proposed. A
// request the local node cannot serve because it does not lead the key's
// group is forwarded to the leader, unless the client routed it itself
// (X-Kvd-Group and X-Kvd-Epoch): then the node answers 421 or 503 with the
// leader's id so the client can refresh its map. One function, statusOf,
// maps errors to status codes and error codes.
package httpapi
