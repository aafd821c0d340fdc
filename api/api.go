// Package api holds the HTTP wire types, header names and error codes of
// kvd's API v1, shared by the server's handlers and by clients. It depends
// on the standard library and the module's root package alone.
package api

import (
	"encoding/json"
	"time"
)

// Header names.
const (
	// HeaderGroup and HeaderEpoch name the group and map epoch a routed
	// request was sent for. A request carrying them is never forwarded:
	// a node that cannot serve it answers 421 or 503.
	HeaderGroup = "X-Kvd-Group"
	HeaderEpoch = "X-Kvd-Epoch"
	// HeaderSlots, on a routed scan, names the slots the sender's map
	// gives the group (256 hex digits, kvd.SlotSet): the group refuses
	// the scan (503) unless it serves exactly those.
	HeaderSlots = "X-Kvd-Slots"
	// SlotsInTransit is in the message of a 503 to a routed scan whose
	// X-Kvd-Slots are not the slots the group serves: the router reads
	// again with a fresh map.
	SlotsInTransit = "slots are being handed between groups"
	// HeaderLeader carries the node id of the group's leader on a 503.
	HeaderLeader = "X-Kvd-Leader"
	// HeaderForwarded marks a request one node forwarded to another; it
	// names the forwarding node. A forwarded request is not forwarded
	// again.
	HeaderForwarded = "X-Kvd-Forwarded"
	// HeaderNode names the node that served a request.
	HeaderNode = "X-Kvd-Node"
	// HeaderExpires, on a GET of a key with a TTL, says when it ends
	// (RFC 3339, UTC).
	HeaderExpires = "X-Kvd-Expires"
	// HeaderPeerAuth carries a node's credential, derived from the
	// cluster's peer secret, on node-to-node calls. Node-to-node
	// endpoints (/v1/internal/) refuse calls without it (403).
	HeaderPeerAuth = "X-Kvd-Peer-Auth"
)

// InternalPrefix opens the path of every node-to-node endpoint.
const InternalPrefix = "/v1/internal/"

// Error is the body of every error response.
type Error struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes an error.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Leader is the node id of the group's leader, when known, on
	// "unavailable" errors from a replica that is not the leader.
	Leader string `json:"leader,omitempty"`
	// Group is the group the error concerns, when there is one.
	Group uint64 `json:"group,omitempty"`
}

// PutResponse is the body of a successful PUT.
type PutResponse struct {
	Version uint64 `json:"version"`
}

// DeleteResponse is the body of a successful DELETE.
type DeleteResponse struct {
	Deleted bool `json:"deleted"`
	// Version is the version of the delete when it removed a key.
	Version uint64 `json:"version,omitempty"`
}

// Item is one key of a scan. Value is base64 in JSON.
type Item struct {
	Key     string `json:"key"`
	Value   []byte `json:"value"`
	Version uint64 `json:"version"`
}

// ScanResponse is one page of a scan.
type ScanResponse struct {
	Items []Item `json:"items"`
	More  bool   `json:"more"`
	// Next is the start of the next page when More is set.
	Next string `json:"next,omitempty"`
}

// Node is a node of the cluster map.
type Node struct {
	ID   string `json:"id"`
	HTTP string `json:"http"`
	Raft string `json:"raft"`
	// State is "active", "joining" (added, not yet seen up) or "leaving"
	// (its replicas are being moved off before it is removed).
	State string `json:"state,omitempty"`
}

// Group is a group of the cluster map with its current leader.
type Group struct {
	ID      uint64   `json:"id"`
	Members []string `json:"members"`
	// Learners are replicas still catching up, not yet voting; they
	// serve no reads.
	Learners []string `json:"learners"`
	// Leader is the node id of the current leader, "" while there is none.
	Leader string `json:"leader"`
	// Slots are inclusive slot ranges.
	Slots [][2]int `json:"slots"`
}

// Cluster is the body of GET /v1/cluster.
type Cluster struct {
	Epoch  uint64  `json:"epoch"`
	Nodes  []Node  `json:"nodes"`
	Groups []Group `json:"groups"`
	// Replicas is how many replicas each group is kept at.
	Replicas int `json:"replicas,omitempty"`
	// Moves are the slot moves under way (and pending), without their
	// progress (GET /v1/admin/moves has it).
	Moves []MoveInfo `json:"moves,omitempty"`
	// Restore is the restore under way, if any.
	Restore *RestoreInfo `json:"restore,omitempty"`
}

// NodeRequest is the body of POST /v1/admin/nodes: a node to add, with
// its advertised addresses.
type NodeRequest struct {
	ID   string `json:"id"`
	HTTP string `json:"http"`
	Raft string `json:"raft"`
}

// MemberRequest is the body of POST /v1/admin/groups/{g}/members and of
// POST /v1/admin/groups/{g}/leader.
type MemberRequest struct {
	Node string `json:"node"`
}

// Change states of a membership change's answer.
const (
	ChangeDone       = "done"
	ChangeInProgress = "in_progress"
)

// MembershipChange answers a change to a group's replicas (200 when done,
// 202 while the cluster is still carrying it out: the map records it,
// and it finishes on its own, also across crashes).
type MembershipChange struct {
	Group uint64 `json:"group"`
	Node  string `json:"node"`
	// State is "done" or "in_progress".
	State string `json:"state"`
	Epoch uint64 `json:"epoch"`
	// Members, Learners and Leader are the group's as of the answer.
	Members  []string `json:"members"`
	Learners []string `json:"learners"`
	Leader   string   `json:"leader,omitempty"`
	// Message says what is left to do, if anything.
	Message string `json:"message,omitempty"`
}

// NodeChange answers POST /v1/admin/nodes and DELETE /v1/admin/nodes/{id}.
type NodeChange struct {
	Node Node `json:"node"`
	// State is "done" (added, or removed from the map) or "in_progress"
	// (the node is leaving: its replicas are being moved).
	State string `json:"state"`
	Epoch uint64 `json:"epoch"`
	// Groups lists the groups whose replicas the node still holds.
	Groups []uint64 `json:"groups,omitempty"`
	// Message says what is left to do, if anything.
	Message string `json:"message,omitempty"`
}

// JoinResponse answers a joining node (node to node): the cluster it
// joined and the map it is in.
type JoinResponse struct {
	Cluster string          `json:"cluster"`
	Map     json.RawMessage `json:"map"`
}

// GroupOf returns the id of the group that owns slot (see kvd.Slot).
func (c Cluster) GroupOf(slot int) (uint64, bool) {
	for _, g := range c.Groups {
		for _, r := range g.Slots {
			if slot >= r[0] && slot <= r[1] {
				return g.ID, true
			}
		}
	}
	return 0, false
}

// GroupStatus describes one replica hosted by a node.
type GroupStatus struct {
	Group        uint64    `json:"group"`
	Role         string    `json:"role"`
	Term         uint64    `json:"term"`
	Leader       string    `json:"leader"`
	CommitIndex  uint64    `json:"commit_index"`
	AppliedIndex uint64    `json:"applied_index"`
	LastIndex    uint64    `json:"last_index"`
	LastContact  time.Time `json:"last_contact,omitzero"`
	Members      []string  `json:"members"`
	// Replica is this replica's place in the map: "member", "learner"
	// (being added: catching up, serving no reads) or "removed" (out of
	// the map, waiting to be dropped from the Raft configuration; it
	// serves no reads).
	Replica string `json:"replica,omitempty"`
	// Health is the replica's ability to serve.
	Health *Health `json:"health,omitempty"`
	// StateBytes is the size of the replica's state file.
	StateBytes int64 `json:"state_bytes,omitempty"`
	// DiskBytes is what the replica's directory takes on disk: its
	// state, Raft log and snapshots.
	DiskBytes int64 `json:"disk_bytes,omitempty"`
	// Traffic counts the client requests of the group this replica
	// served (reads, and writes it proposed as leader).
	Traffic *Traffic `json:"traffic,omitempty"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Node    string        `json:"node"`
	HTTP    string        `json:"http"`
	Raft    string        `json:"raft"`
	Version string        `json:"version"`
	Uptime  string        `json:"uptime"`
	Epoch   uint64        `json:"epoch"`
	Groups  []GroupStatus `json:"groups"`
	// Missing lists groups the map places on this node that it refuses
	// to start (their data was lost): each must be re-added as a new
	// replica.
	Missing []MissingGroup `json:"missing,omitempty"`
	// Storage is the state of the node's disk.
	Storage *Storage `json:"storage,omitempty"`
	// Features names what this node's version can take part in that
	// earlier versions cannot (FeatureSlotMoves).
	Features []string `json:"features,omitempty"`
	// Restores are the restores this node drives now.
	Restores []string `json:"restores,omitempty"`
	// Traffic counts the client requests (keys, scans, transactions,
	// batches) this node has served since it started.
	Traffic *Traffic `json:"traffic,omitempty"`
}

// Traffic is a node's client requests since it started: their number,
// and how many took at most each of LatencyBounds seconds (cumulative,
// as a Prometheus histogram's buckets). Two samples give the rate and
// the latency percentiles between them.
type Traffic struct {
	Requests      uint64    `json:"requests"`
	LatencyBounds []float64 `json:"latency_bounds"`
	LatencyCounts []uint64  `json:"latency_counts"`
}

// NodesStatus is the body of GET /v1/status?nodes=all: every node's
// status, asked at once by the node that answers.
type NodesStatus struct {
	Nodes []NodeStatus `json:"nodes"`
}

// NodeStatus is one node's answer, or why there is none.
type NodeStatus struct {
	Node   string  `json:"node"`
	Up     bool    `json:"up"`
	Status *Status `json:"status,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// FeatureSlotMoves is the feature of nodes that apply the commands of
// slot moves and bootstrap groups created on demand.
const FeatureSlotMoves = "slot-moves"

// FeatureTxnVersions is the feature of nodes that apply a transaction's
// prepare that fixes its writes' versions (store.TxnPrepare.
// VersionAtPrepare): a cross-group transaction is answered after its
// decision only when every replica of its groups has it.
const FeatureTxnVersions = "txn-versions"

// MissingGroup is a group a node does not start.
type MissingGroup struct {
	Group  uint64 `json:"group"`
	Reason string `json:"reason"`
}

// Storage describes a node's data directory and its disk.
type Storage struct {
	// UsedBytes is the size of the data directory, FreeBytes the space
	// left on its disk.
	UsedBytes int64 `json:"used_bytes"`
	FreeBytes int64 `json:"free_bytes"`
	// QuotaBytes (0: none) and MinFreeBytes are the node's limits.
	QuotaBytes   int64 `json:"quota_bytes,omitempty"`
	MinFreeBytes int64 `json:"min_free_bytes"`
	// Writable is false while writes are refused; Reason says why.
	Writable bool   `json:"writable"`
	Reason   string `json:"reason,omitempty"`
}

// Health is a replica's ability to serve (see replication.Health).
type Health struct {
	// State is "ok", "catching_up", "repairing" or "stalled".
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
	// Integrity is the outcome of the last integrity check.
	Integrity *IntegrityCheck `json:"integrity,omitempty"`
}

// IntegrityCheck is the outcome of a replica's last integrity check.
type IntegrityCheck struct {
	At        time.Time         `json:"at"`
	Index     uint64            `json:"index,omitempty"`
	OK        bool              `json:"ok"`
	Hashes    map[string]string `json:"hashes,omitempty"`
	Alarm     string            `json:"alarm,omitempty"`
	Unreached []string          `json:"unreached,omitempty"`
}

// LogEntry is one Raft log entry (node to node: a repair).
type LogEntry struct {
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	Type  uint8  `json:"type"`
	Data  []byte `json:"data"`
}

// HashResponse is a replica's state hash at an index (node to node), in
// hex.
type HashResponse struct {
	Hash string `json:"hash"`
}

// TxnInfo describes a transaction that holds locks or a record.
type TxnInfo struct {
	ID string `json:"id"`
	// State is the record's state ("pending", "committed", "aborted"),
	// or "absent" when its record group holds no record.
	State        string    `json:"state"`
	RecordGroup  uint64    `json:"record_group"`
	Deadline     string    `json:"deadline,omitempty"`
	Participants []uint64  `json:"participants,omitempty"`
	Locks        []TxnLock `json:"locks,omitempty"`
}

// TxnLock is one lock of a transaction.
type TxnLock struct {
	Group uint64 `json:"group"`
	Key   string `json:"key"`
	Write bool   `json:"write,omitempty"`
}

// TxnList is the body of GET /v1/admin/txns.
type TxnList struct {
	Txns []TxnInfo `json:"txns"`
	// Unreached lists groups that could not be read.
	Unreached []uint64 `json:"unreached,omitempty"`
}

// GroupTxns is one group's transaction state (node to node).
type GroupTxns struct {
	Records map[string]TxnRecord `json:"records"`
	Locks   []TxnLockHeld        `json:"locks"`
}

// TxnRecord is a transaction record (node to node).
type TxnRecord struct {
	State        string   `json:"state"`
	Deadline     int64    `json:"deadline"`
	Participants []uint64 `json:"participants,omitempty"`
}

// TxnLockHeld is a lock as a group holds it (node to node).
type TxnLockHeld struct {
	Txn         string `json:"txn"`
	Key         string `json:"key"`
	Write       bool   `json:"write,omitempty"`
	RecordGroup uint64 `json:"record_group"`
	Deadline    int64  `json:"deadline"`
}

// ReadIndexResponse is the body of the node-to-node read-index call.
type ReadIndexResponse struct {
	Index uint64 `json:"index"`
}

// TxnCompare is one compare of POST /v1/txn: exactly one of Version,
// Value and Exists is given.
type TxnCompare struct {
	Key     string  `json:"key"`
	Version *uint64 `json:"version,omitempty"`
	Value   []byte  `json:"value,omitempty"`
	Exists  *bool   `json:"exists,omitempty"`
}

// MarshalJSON writes value whenever it is set, empty included: a compare
// with the empty value (the key holds zero bytes) is not a compare
// without one.
func (c TxnCompare) MarshalJSON() ([]byte, error) {
	type plain TxnCompare
	if c.Value == nil || len(c.Value) > 0 {
		return json.Marshal(plain(c))
	}
	return json.Marshal(struct {
		plain
		Value []byte `json:"value"`
	}{plain(c), c.Value})
}

// TxnOp is one op of POST /v1/txn: get, put, delete or add.
type TxnOp struct {
	Op    string `json:"op"`
	Key   string `json:"key"`
	Value []byte `json:"value,omitempty"`
	// Delta is an add's increment.
	Delta int64 `json:"delta,omitempty"`
	// TTL is a put's time to live, a Go duration ("30s").
	TTL string `json:"ttl,omitempty"`
}

// TxnRequest is the body of POST /v1/txn.
type TxnRequest struct {
	Compare []TxnCompare `json:"compare,omitempty"`
	Ops     []TxnOp      `json:"ops,omitempty"`
}

// TxnResult answers one op.
type TxnResult struct {
	Op      string `json:"op"`
	Key     string `json:"key"`
	Found   *bool  `json:"found,omitempty"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version,omitempty"`
	Deleted *bool  `json:"deleted,omitempty"`
}

// TxnResponse is the body of a POST /v1/txn answer.
type TxnResponse struct {
	Committed bool        `json:"committed"`
	Results   []TxnResult `json:"results,omitempty"`
	// Failed lists the indexes of the compares that did not hold.
	Failed []int        `json:"failed,omitempty"`
	Error  *ErrorDetail `json:"error,omitempty"`
}

// HistoryEvent is one change in a group's history (node to node).
type HistoryEvent struct {
	Pos    string `json:"pos"`
	Delete bool   `json:"delete,omitempty"`
	Key    string `json:"key"`
	Value  []byte `json:"value,omitempty"`
	// Version is the change's version when it is not the index of its
	// position (a group that took moved keys adds a version base).
	Version uint64 `json:"version,omitempty"`
}

// HistoryPage is a page of a group's history (node to node): the events
// after a position, the position read up to, and the history's floor. An
// answer to a wait alone (limit 0) holds no events; Pending says whether
// one follows Upto.
type HistoryPage struct {
	Events  []HistoryEvent `json:"events"`
	Upto    string         `json:"upto"`
	Floor   string         `json:"floor"`
	Pending bool           `json:"pending,omitempty"`
}

// WatchEvent is the data of one event of GET /v1/watch.
type WatchEvent struct {
	Type    string `json:"type"`
	Key     string `json:"key"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version"`
}

// Event is something that happened to the cluster, as the node that did
// it or saw it first recorded it: "leader" (a replica became its group's
// leader) or "map" (a change of the cluster map this node made:
// membership, slot moves, nodes joining and leaving).
type Event struct {
	Time  time.Time `json:"time"`
	Node  string    `json:"node"`
	Kind  string    `json:"kind"`
	Group uint64    `json:"group,omitempty"`
	Text  string    `json:"text"`
}

// Events is the body of GET /v1/events: the newest first.
type Events struct {
	Events []Event `json:"events"`
	// Missing names the nodes that did not answer (?nodes=all).
	Missing []string `json:"missing,omitempty"`
}
