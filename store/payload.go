package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/kvd-project/kvd"
)

// The payloads of the commands that carry a JSON document in Cmd.Data
// (CmdKind.hasDocument): the transaction commands and the idempotency
// commands, with the outcomes they answer. Their JSON is part of the Raft
// log's format: never change a field's JSON name.

// TxnCompare is one compare of a transaction, on one key.
type TxnCompare struct {
	// Index is the compare's position in the request.
	Index int    `json:"index"`
	Key   string `json:"key"`
	// Exactly one of Version, Value or Exists is set.
	Version *uint64 `json:"version,omitempty"`
	Value   []byte  `json:"value,omitempty"`
	Exists  *bool   `json:"exists,omitempty"`
}

// holds reports whether the compare holds for the key's committed record
// (nil: absent).
func (c *TxnCompare) holds(rec []byte) bool {
	cur := version(rec)
	switch {
	case c.Version != nil:
		return cur == *c.Version
	case c.Exists != nil:
		return (cur != 0) == *c.Exists
	default:
		return rec != nil && bytes.Equal(recValue(rec), c.Value)
	}
}

// TxnOp is one operation of a transaction.
type TxnOp struct {
	Index int    `json:"index"`
	Op    string `json:"op"` // get, put, delete, add
	Key   string `json:"key"`
	Value []byte `json:"value,omitempty"`
	// Delta is an add's increment; TTL a put's time to live in ns.
	Delta int64 `json:"delta,omitempty"`
	TTL   int64 `json:"ttl,omitempty"`
}

// TxnPrepare asks a participant group to check the compares on its keys,
// lock its keys, read its gets and vote.
type TxnPrepare struct {
	ID          string       `json:"id"`
	RecordGroup kvd.GroupID  `json:"record_group"`
	Deadline    int64        `json:"deadline"`
	Compares    []TxnCompare `json:"compares,omitempty"`
	Ops         []TxnOp      `json:"ops,omitempty"`
	// Participants is set for the record group, which creates the record.
	Participants []kvd.GroupID `json:"participants,omitempty"`
	// VersionAtPrepare makes the transaction's puts and adds take this
	// entry's version when they are resolved (see Lock.Version), and the
	// vote report it. A prepare made by an older node lacks it, so its
	// log replays as it applied then: writes take the resolving entry's.
	VersionAtPrepare bool `json:"version_at_prepare,omitempty"`
}

// TxnDecide moves a record from pending to committed or aborted. With
// ResolveHere, the same entry also resolves the transaction's locks in
// the record group.
type TxnDecide struct {
	ID          string `json:"id"`
	Commit      bool   `json:"commit"`
	ResolveHere bool   `json:"resolve_here,omitempty"`
}

// TxnResolve applies (Commit) or drops the transaction's locks in a group.
// Callers must have read the decision from the record.
type TxnResolve struct {
	ID     string `json:"id"`
	Commit bool   `json:"commit"`
}

// TxnRecover reads a record, aborting it first if it is pending past its
// deadline, or creating it aborted if it is absent past Deadline. With
// Force (an operator's abort) it does so whatever the deadlines.
type TxnRecover struct {
	ID       string `json:"id"`
	Deadline int64  `json:"deadline"`
	Force    bool   `json:"force,omitempty"`
}

// TxnOnePhase runs a transaction whose keys all live in one group, in one
// entry.
type TxnOnePhase struct {
	Compares []TxnCompare `json:"compares,omitempty"`
	Ops      []TxnOp      `json:"ops,omitempty"`
	// Idem, if set, makes the transaction idempotent under that key.
	Idem *Idem `json:"idem,omitempty"`
}

// TxnForget deletes a decided record.
type TxnForget struct {
	ID string `json:"id"`
}

// TxnRead is the answer to a get op.
type TxnRead struct {
	Index   int    `json:"index"`
	Found   bool   `json:"found"`
	Value   []byte `json:"value,omitempty"`
	Version uint64 `json:"version,omitempty"`
}

// TxnWrite is the answer to a put or delete op.
type TxnWrite struct {
	Index   int    `json:"index"`
	Key     string `json:"key"`
	Version uint64 `json:"version,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
	// Value is an add's new value.
	Value []byte `json:"value,omitempty"`
}

// TxnOutcome is the result of a transaction command.
type TxnOutcome struct {
	// Vote is a prepare's (or one-phase's) answer: true when the
	// compares held and the locks were taken (or the writes applied).
	Vote bool `json:"vote"`
	// Code says why the vote is no: CodeConflict, CodeCompareFailed,
	// CodeExpired or CodeAborted, among others.
	Code TxnCode `json:"code,omitempty"`
	// Failed lists the indexes of compares that did not hold.
	Failed []int `json:"failed,omitempty"`
	// Conflicts are the locks that stood in the way.
	Conflicts []Lock `json:"conflicts,omitempty"`
	// Reads and Writes answer the ops.
	Reads  []TxnRead  `json:"reads,omitempty"`
	Writes []TxnWrite `json:"writes,omitempty"`
	// State is a record's state after the command.
	State TxnState `json:"state,omitempty"`
}

// TxnCode says why a transaction command voted no. Its values are stored
// in outcomes kept under idempotency keys and travel as JSON between
// nodes: never change them.
type TxnCode string

// Outcome codes.
const (
	CodeConflict            TxnCode = "conflict"
	CodeCompareFailed       TxnCode = "compare_failed"
	CodeNotANumber          TxnCode = "not_a_number"
	CodeExpired             TxnCode = "expired"
	CodeAborted             TxnCode = "aborted"
	CodeIdempotencyMismatch TxnCode = "idempotency_mismatch"
	// CodeInvalid answers a command the state machine refused to apply
	// (see CheckCmd).
	CodeInvalid TxnCode = "invalid"
	// CodeMoving answers a command the state machine refused because a
	// key's slot is not (or no longer, or not yet) the group's: a slot
	// move handed it on, or is handing it over. Nothing was applied; a
	// new attempt routed by the current map may succeed.
	CodeMoving TxnCode = "moving"
)

// DedupStatus says what became of an idempotency claim, registration or
// release. Its values travel as JSON between nodes, in the results of
// forwarded proposals: never change them.
type DedupStatus string

// Idempotency statuses.
const (
	// DedupNew means the claim or registration is taken: the key was
	// free.
	DedupNew DedupStatus = "new"
	// DedupExisting means the key is held by the same request: a repeat.
	DedupExisting DedupStatus = "existing"
	// DedupMismatch means the key is used by a different request.
	DedupMismatch DedupStatus = "mismatch"
	// DedupReleased means a transaction's claim was freed (it did not
	// run).
	DedupReleased DedupStatus = "released"
)

// DedupState answers an idempotency claim.
type DedupState struct {
	// Status is DedupNew (the claim is taken), DedupMismatch (the key is
	// used by a different request), DedupExisting (a repeat) or, for a
	// release, DedupReleased.
	Status DedupStatus `json:"status"`
	// Txn is the transaction that holds the claim, and At when it was
	// claimed (leader clock, Unix ns).
	Txn string `json:"txn,omitempty"`
	At  int64  `json:"at,omitempty"`
	// Done and Response give the first outcome, once known.
	Done     bool            `json:"done,omitempty"`
	Response json.RawMessage `json:"response,omitempty"`
}

// DedupClaim claims an idempotency key for a cross-group transaction.
type DedupClaim struct {
	Idem Idem   `json:"idem"`
	Txn  string `json:"txn"`
}

// DedupDone stores a cross-group transaction's outcome under its key, or,
// with Release, frees the key held by transaction Txn (which did not run).
type DedupDone struct {
	Idem     Idem            `json:"idem"`
	Response json.RawMessage `json:"response,omitempty"`
	Release  bool            `json:"release,omitempty"`
	Txn      string          `json:"txn,omitempty"`
}

// DedupRegister registers a request under its idempotency key in the
// key's home group; the answer's Status is DedupNew, DedupExisting (the
// same request) or DedupMismatch.
type DedupRegister struct {
	Idem Idem `json:"idem"`
}

// DedupGC removes idempotency records older than Before (Unix ns).
type DedupGC struct {
	Before int64 `json:"before"`
}

// decodeDocument decodes the payload of a command that carries a
// document into its type; it returns nil for a command without one.
func decodeDocument(c *Cmd) (any, error) {
	var p any
	switch c.Kind {
	case CmdTxnPrepare:
		p = new(TxnPrepare)
	case CmdTxnDecide:
		p = new(TxnDecide)
	case CmdTxnResolve:
		p = new(TxnResolve)
	case CmdTxnRecover:
		p = new(TxnRecover)
	case CmdTxnOnePhase:
		p = new(TxnOnePhase)
	case CmdTxnForget:
		p = new(TxnForget)
	case CmdDedupClaim:
		p = new(DedupClaim)
	case CmdDedupDone:
		p = new(DedupDone)
	case CmdDedupRegister:
		p = new(DedupRegister)
	case CmdDedupGC:
		p = new(DedupGC)
	case CmdMoveIngest:
		p = new(MoveIngest)
	case CmdDropKeys:
		p = new(DropKeys)
	case CmdFreeze:
		p = new(Freeze)
	case CmdRestore:
		p = new(RestoreOp)
	case CmdTokens:
		p = new(TokenOp)
	default:
		return nil, nil
	}
	if err := json.Unmarshal(c.Data, p); err != nil {
		return nil, fmt.Errorf("%w: %s payload: %v", kvd.ErrInvalid, c.Kind, err)
	}
	return p, nil
}
