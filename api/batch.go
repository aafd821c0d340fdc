package api

// MaxBatchOps bounds the operations of one POST /v1/batch.
const MaxBatchOps = 1000

// BatchRequest is the body of POST /v1/batch: independent operations,
// each with its own outcome. A batch is not atomic (use /v1/txn for
// that): it saves round trips, and the node proposes its writes together.
type BatchRequest struct {
	Ops []BatchOp `json:"ops"`
}

// BatchOp is one operation of a batch: "put" (Value, and TTL as a Go
// duration), "delete" or "get" (Consistency as the get's parameter:
// linearizable, follower or stale).
type BatchOp struct {
	Op          string `json:"op"`
	Key         string `json:"key"`
	Value       []byte `json:"value,omitempty"`
	TTL         string `json:"ttl,omitempty"`
	Consistency string `json:"consistency,omitempty"`
}

// BatchResponse answers a batch: one result per op, in the order sent.
type BatchResponse struct {
	Results []BatchResult `json:"results"`
}

// BatchResult is one op's outcome: the status its request alone would
// have got, and then what it would have answered (a put's version, a
// get's value and version, whether a delete found the key), or its error.
type BatchResult struct {
	Status  int          `json:"status"`
	Version uint64       `json:"version,omitempty"`
	Value   []byte       `json:"value,omitempty"`
	Deleted *bool        `json:"deleted,omitempty"`
	Error   *ErrorDetail `json:"error,omitempty"`
}
