package api

// GroupRequest is the body of POST /v1/admin/groups: the nodes of the new
// group's replicas (the first is its preferred leader), or none to let
// the cluster choose the least loaded nodes. ID, if set, names the new
// group: a retry with the same id and members changes nothing.
type GroupRequest struct {
	ID      uint64   `json:"id,omitempty"`
	Members []string `json:"members,omitempty"`
}

// GroupChange answers POST /v1/admin/groups and DELETE
// /v1/admin/groups/{g}.
type GroupChange struct {
	Group uint64 `json:"group"`
	// State is "done" (the group is created and has a leader, or is
	// removed) or "in_progress".
	State   string   `json:"state"`
	Epoch   uint64   `json:"epoch"`
	Members []string `json:"members,omitempty"`
	Leader  string   `json:"leader,omitempty"`
	Message string   `json:"message,omitempty"`
}

// MoveRequest is the body of POST /v1/admin/moves: move the slots (inclusive
// ranges) to group To. Slots owned by several groups make one move per
// group. ID, if set, names the move (a retry with the same id starts
// nothing twice); otherwise the node chooses one.
type MoveRequest struct {
	Slots [][2]int `json:"slots"`
	To    uint64   `json:"to"`
	ID    string   `json:"id,omitempty"`
}

// MoveStarted answers POST /v1/admin/moves (202): the move's id, and the
// ids of all the moves started when the slots had several owners.
type MoveStarted struct {
	ID    string   `json:"id"`
	IDs   []string `json:"ids"`
	Epoch uint64   `json:"epoch"`
}

// MoveInfo is one slot move as GET /v1/admin/moves shows it.
type MoveInfo struct {
	ID    string   `json:"id"`
	Slots [][2]int `json:"slots"`
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	// State is pending, copying, catching_up, handing_off, done or failed.
	State   string `json:"state"`
	Attempt uint64 `json:"attempt"`
	Error   string `json:"error,omitempty"`
	// Started and Updated are RFC 3339 times.
	Started string `json:"started"`
	Updated string `json:"updated"`
	// Progress is the driver's, while the move is under way and its
	// driver answers.
	Progress *MoveProgress `json:"progress,omitempty"`
}

// MoveProgress is how far a move's current attempt has gone.
type MoveProgress struct {
	KeysCopied  uint64 `json:"keys_copied"`
	BytesCopied uint64 `json:"bytes_copied"`
	// CatchUpRounds counts the rounds of changes sent after the copy.
	CatchUpRounds int `json:"catch_up_rounds"`
	// HandOffMillis is how long the slots refused writes, once handed off.
	HandOffMillis int64 `json:"hand_off_ms,omitempty"`
}

// MoveList answers GET /v1/admin/moves.
type MoveList struct {
	Epoch uint64     `json:"epoch"`
	Moves []MoveInfo `json:"moves"`
}

// RebalanceRequest is the body of POST /v1/admin/rebalance.
type RebalanceRequest struct {
	DryRun bool `json:"dry_run"`
}

// GroupLoad is a group's share of the data as the rebalancer measured it.
type GroupLoad struct {
	Group uint64 `json:"group"`
	Slots int    `json:"slots"`
	Keys  uint64 `json:"keys"`
	Bytes uint64 `json:"bytes"`
}

// PlannedMove is a move of a rebalance plan.
type PlannedMove struct {
	ID    string   `json:"id,omitempty"`
	Slots [][2]int `json:"slots"`
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	Keys  uint64   `json:"keys"`
	Bytes uint64   `json:"bytes"`
}

// RebalancePlan answers POST /v1/admin/rebalance: the load before, the
// moves planned and, unless DryRun, started (each group takes part in
// one move at a time: the others wait as pending), and the load the
// plan leads to.
type RebalancePlan struct {
	DryRun bool          `json:"dry_run"`
	Before []GroupLoad   `json:"before"`
	After  []GroupLoad   `json:"after"`
	Moves  []PlannedMove `json:"moves"`
	Epoch  uint64        `json:"epoch"`
}
