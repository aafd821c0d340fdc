package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
	"github.com/kvd-project/kvd/txn"
)

// GroupOf returns the group that owns key under this node's map.
func (s *Server) GroupOf(key string) (kvd.GroupID, error) {
	g, ok := s.Map().GroupOf(kvd.Slot(key))
	if !ok {
		return 0, fmt.Errorf("slot %d has no group: %w", kvd.Slot(key), kvd.ErrUnavailable)
	}
	return g, nil
}

// Propose replicates cmd through group g's log for the transaction
// coordinator: through the local replica when this node leads g, else at
// the leader's node over the internal propose endpoint, following leader
// hints. It retries definite failures (nothing was proposed) until ctx
// ends; it returns an unknown outcome as soon as it meets one.
func (s *Server) Propose(ctx context.Context, g kvd.GroupID, cmd store.Cmd) (store.Result, error) {
	retry := func(err error) bool {
		return !errors.Is(err, kvd.ErrUnknownOutcome) && errors.Is(err, kvd.ErrUnavailable)
	}
	return atLeader(ctx, s, g, retry,
		func(local *replication.Group) (store.Result, error) {
			fillWriteKeys(local.Store(), &cmd)
			return s.propose(ctx, local, cmd)
		},
		func(target string) (store.Result, error) { return s.remotePropose(ctx, target, g, cmd) })
}

// atLeader runs an operation at group g's leader: locally when this node
// leads g (or is the node to try), else at the node it takes for the
// leader. Errors that retry accepts are tried again, at the leader a hint
// names or, without one, after a backoff at whichever node is then taken
// for the leader, until ctx ends; others are returned at once.
func atLeader[T any](ctx context.Context, s *Server, g kvd.GroupID, retry func(error) bool,
	local func(*replication.Group) (T, error), remote func(target string) (T, error)) (T, error) {
	var zero T
	hint := ""
	var lastErr error
	for attempt := 0; ; attempt++ {
		target := hint
		if target == "" {
			target = s.leaderOrPreferred(ctx, g)
		}
		var out T
		var err error
		if grp, hosted := s.servingReplica(g); hosted && (grp.IsLeader() || target == s.id) {
			out, err = local(grp)
		} else {
			out, err = remote(target)
		}
		if err == nil {
			return out, nil
		}
		lastErr = err
		if !retry(err) {
			return out, err
		}
		hint = kvd.LeaderHint(err)
		if hint == "" || hint == target {
			hint = ""
			s.forgetLeader(g)
			if leaderBackoff.Wait(ctx, attempt) != nil {
				return zero, fmt.Errorf("group %d: %v: %w", g, lastErr, kvd.ErrUnavailable)
			}
		}
		if ctx.Err() != nil {
			return zero, fmt.Errorf("group %d: %v: %w", g, lastErr, kvd.ErrUnavailable)
		}
	}
}

// wireResult is a store.Result on the node-to-node wire.
type wireResult struct {
	Version uint64            `json:"version,omitempty"`
	Deleted bool              `json:"deleted,omitempty"`
	Err     string            `json:"err,omitempty"`
	Message string            `json:"message,omitempty"`
	Locks   *store.LockSet    `json:"locks,omitempty"`
	Txn     *store.TxnOutcome `json:"txn,omitempty"`
	Dedup   *store.DedupState `json:"dedup,omitempty"`
}

// resultCodes are the codes of api.Codes a result's error travels as
// between nodes; any other error travels as "invalid" (a refusal of the
// state machine), which is what nodes of earlier versions read.
var resultCodes = map[string]bool{api.CodePreconditionFailed: true, api.CodeConflict: true, api.CodeIdempotencyMismatch: true,
	api.CodeWrongGroup: true, api.CodeTooLarge: true, api.CodeUnavailable: true, api.CodeNotFound: true}

// encodeResult puts r on the wire; its error travels as its code and its
// message.
func encodeResult(r store.Result) ([]byte, error) {
	w := wireResult{Version: r.Version, Deleted: r.Deleted, Locks: r.Locks, Txn: r.Txn, Dedup: r.Dedup}
	if r.Err != nil {
		w.Message = r.Err.Error()
		w.Err = "invalid"
		if code := api.CodeOf(r.Err, false).Code; resultCodes[code] {
			w.Err = code
		}
	}
	return json.Marshal(w)
}

// decodeResult reads what encodeResult wrote. A code without a sentinel
// error ("invalid") is a refusal of the state machine.
func decodeResult(b []byte) (store.Result, error) {
	var w wireResult
	if err := json.Unmarshal(b, &w); err != nil {
		return store.Result{}, err
	}
	r := store.Result{Version: w.Version, Deleted: w.Deleted, Locks: w.Locks, Txn: w.Txn, Dedup: w.Dedup}
	if w.Err != "" {
		sentinel := api.ErrOfCode(w.Err)
		if sentinel == nil {
			sentinel = kvd.ErrInvalid
		}
		r.Err = fmt.Errorf("%s: %w", w.Message, sentinel)
	}
	return r, nil
}

// remotePropose proposes cmd at node's replica of group g.
func (s *Server) remotePropose(ctx context.Context, node string, g kvd.GroupID, cmd store.Cmd) (store.Result, error) {
	b := store.Batch{Cmds: []store.Cmd{cmd}}
	body, err := s.call(ctx, peerCall{op: "propose at", method: http.MethodPost, node: node, path: "/v1/internal/propose?" + groupQuery(g),
		body: b.AppendEncode(nil), group: g, write: true})
	if err != nil {
		return store.Result{}, err
	}
	r, err := decodeResult(body)
	if err != nil {
		return store.Result{}, fmt.Errorf("propose at %s: %v: %w", node, err, kvd.ErrUnknownOutcome)
	}
	return r, nil
}

// ProposeRaw serves the internal propose endpoint: a single encoded
// transaction command for group g, which this node must lead. The command
// is checked as the state machine will check it (keys owned by g by the
// group's stored map, sizes, deadlines) and against the node's limits, so
// what is proposed applies as it reads.
func (s *Server) ProposeRaw(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
	grp, err := s.replica(g)
	if err != nil {
		return nil, err
	}
	batch, err := store.DecodeBatch(body)
	if err != nil || len(batch.Cmds) != 1 {
		return nil, fmt.Errorf("%w: propose: one encoded command expected", kvd.ErrInvalid)
	}
	cmd := batch.Cmds[0]
	if !proposedRemotely(cmd.Kind) {
		return nil, fmt.Errorf("%w: command kind %s is not proposed remotely", kvd.ErrInvalid, cmd.Kind)
	}
	cmd.Data = append([]byte(nil), cmd.Data...)
	doc, err := grp.Store().CheckCmd(&cmd, time.Now().UnixNano(), &s.cfg.Limits)
	if err != nil {
		return nil, fmt.Errorf("propose in group %d: %w", g, err)
	}
	cmd.WriteKeys = writeKeys(grp.Store(), doc)
	res, err := s.propose(ctx, grp, cmd)
	if err != nil {
		return nil, err
	}
	return encodeResult(res)
}

// propose proposes cmd through this node's replica g. A client's write
// (not the commands that finish what was started: decisions,
// resolutions, expiries) is refused when the group is short of disk:
// this node's, or a majority of the group's members' (then no write
// could commit). Writes that only delete are let through, so space can
// be reclaimed.
func (s *Server) propose(ctx context.Context, g *replication.Group, cmd store.Cmd) (store.Result, error) {
	switch cmd.Kind {
	case store.CmdPut, store.CmdDelete, store.CmdTxnPrepare, store.CmdTxnOnePhase, store.CmdDedupClaim, store.CmdDedupRegister:
		if g.IsLeader() {
			if err := s.admitWrite(g.ID(), &cmd); err != nil {
				return store.Result{}, fmt.Errorf("group %d: %w", g.ID(), err)
			}
		}
	}
	return g.Propose(ctx, cmd)
}

// admitWrite applies the disk limits to a client's write in group gid.
func (s *Server) admitWrite(gid kvd.GroupID, cmd *store.Cmd) error {
	err := s.disk.admit(cmd.EncodedSize())
	if err == nil {
		err = s.peerDisks.admit(s.Map(), gid, s.id)
	}
	if err != nil && onlyDeletes(cmd) {
		return nil
	}
	return err
}

// onlyDeletes reports whether a write only deletes keys (and reads).
func onlyDeletes(c *store.Cmd) bool {
	var ops []store.TxnOp
	switch c.Kind {
	case store.CmdDelete:
		return true
	case store.CmdTxnPrepare:
		var p store.TxnPrepare
		if json.Unmarshal(c.Data, &p) != nil {
			return false
		}
		ops = p.Ops
	case store.CmdTxnOnePhase:
		var t store.TxnOnePhase
		if json.Unmarshal(c.Data, &t) != nil || t.Idem != nil {
			return false
		}
		ops = t.Ops
	default:
		return false
	}
	for _, op := range ops {
		if op.Op != "delete" && op.Op != "get" {
			return false
		}
	}
	return true
}

// fillWriteKeys names the keys a decision or resolution may write: those
// its transaction holds write locks on here.
func fillWriteKeys(db *store.DB, c *store.Cmd) {
	var doc any
	switch c.Kind {
	case store.CmdTxnDecide:
		doc = new(store.TxnDecide)
	case store.CmdTxnResolve:
		doc = new(store.TxnResolve)
	default:
		return
	}
	if json.Unmarshal(c.Data, doc) == nil {
		c.WriteKeys = writeKeys(db, doc)
	}
}

// writeKeys names the keys a command (its decoded document) may write,
// for the proposer: a one-phase transaction's; a decision's or
// resolution's, those its transaction holds write locks on here.
func opWriteKeys(ops []store.TxnOp) []string {
	var keys []string
	for _, op := range ops {
		if op.Op != "get" {
			keys = append(keys, op.Key)
		}
	}
	return keys
}

func writeKeys(db *store.DB, doc any) []string {
	var id string
	switch d := doc.(type) {
	case *store.TxnOnePhase:
		return opWriteKeys(d.Ops)
	case *store.TxnPrepare:
		// A prepare shares no entry with another write of its keys: it
		// would refuse a key the entry changed before it (its version).
		return opWriteKeys(d.Ops)
	case *store.TxnDecide:
		if !d.ResolveHere {
			return nil
		}
		id = d.ID
	case *store.TxnResolve:
		if !d.Commit {
			return nil
		}
		id = d.ID
	default:
		return nil
	}
	keys, err := db.TxnWriteKeys(id)
	if err != nil {
		return nil
	}
	return keys
}

// proposedRemotely admits only the transaction and idempotency commands
// over the internal endpoint.
func proposedRemotely(k store.CmdKind) bool {
	switch k {
	case store.CmdTxnPrepare, store.CmdTxnResolve, store.CmdTxnRecover, store.CmdTxnForget, store.CmdDedupClaim, store.CmdDedupDone,
		store.CmdDedupRegister, store.CmdTxnDecide, store.CmdTxnOnePhase, store.CmdMoveIngest, store.CmdSetMap, store.CmdFreeze, store.CmdRestore, store.CmdTokens:
		return true
	}
	return false
}

// Txn runs transaction t through the node's coordinator; o's
// idempotency key, if any, makes it idempotent.
func (s *Server) Txn(ctx context.Context, t kvd.Txn, o kvd.WriteOptions) (kvd.TxnResponse, error) {
	idem, err := kvd.TxnIdem(o, t)
	if err != nil {
		return kvd.TxnResponse{}, err
	}
	resp, err := s.coord.Do(ctx, t, idem)
	s.countTxn(err)
	return resp, err
}

// countTxn counts a coordinated transaction's outcome.
func (s *Server) countTxn(err error) {
	outcome := "committed"
	switch {
	case err == nil:
	case errors.Is(err, kvd.ErrCompareFailed):
		outcome = "compare_failed"
	case errors.Is(err, kvd.ErrNotANumber):
		outcome = "not_a_number"
	case errors.Is(err, kvd.ErrConflict):
		outcome = "conflict"
	case errors.Is(err, kvd.ErrUnknownOutcome):
		outcome = "unknown"
	default:
		outcome = "failed"
	}
	s.metrics.txnOutcomes.WithLabelValues(outcome).Inc()
}

// runJanitors sweeps, every interval, the transactions left behind in
// the groups this node leads.
func (s *Server) runJanitors(ctx context.Context, every time.Duration) {
	janitors := map[kvd.GroupID]*txn.Janitor{}
	repeat(ctx, every, func() {
		for gid, g := range s.hosted() {
			if !g.IsLeader() {
				continue
			}
			j := janitors[gid]
			if j == nil {
				j = txn.NewJanitor(s, g.Store(), gid, s.log)
				j.OnFinished = func() { s.metrics.txnRecoveries.Add(1) }
				janitors[gid] = j
			}
			sctx, cancel := context.WithTimeout(ctx, 10*every)
			if err := j.Sweep(sctx); err != nil && ctx.Err() == nil {
				s.log.Debug("transaction janitor", "group", gid, "err", err)
			}
			cancel()
		}
	})
}

// Read reads keys of group g linearizably at g's leader: locally if this
// node leads g, else through the leader's internal read endpoint.
func (s *Server) Read(ctx context.Context, g kvd.GroupID, keys []string) ([]store.KeyState, error) {
	retry := func(err error) bool { return errors.Is(err, kvd.ErrUnavailable) }
	return atLeader(ctx, s, g, retry,
		func(local *replication.Group) ([]store.KeyState, error) { return readLocal(ctx, local, keys) },
		func(target string) ([]store.KeyState, error) { return s.remoteRead(ctx, target, g, keys) })
}

func readLocal(ctx context.Context, g *replication.Group, keys []string) ([]store.KeyState, error) {
	if err := g.ReadBarrier(ctx, kvd.Linearizable); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := g.Store().Readable(k); err != nil {
			return nil, fmt.Errorf("read %q in group %d: %w", k, g.ID(), err)
		}
	}
	return g.Store().ReadKeys(keys)
}

// remoteRead reads keys of group g at node, which should lead g.
func (s *Server) remoteRead(ctx context.Context, node string, g kvd.GroupID, keys []string) ([]store.KeyState, error) {
	req, _ := json.Marshal(keys)
	body, err := s.call(ctx, peerCall{op: "read at", method: http.MethodPost, node: node, path: "/v1/internal/read?" + groupQuery(g),
		body: req, group: g, limit: 256 << 20, retryRefusals: true})
	if err != nil {
		return nil, err
	}
	var out []store.KeyState
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("read at %s: %v: %w", node, err, kvd.ErrUnavailable)
	}
	return out, nil
}

// ReadRaw serves the internal read endpoint: keys (a JSON list) of group
// g, read linearizably on this node, which must lead g.
func (s *Server) ReadRaw(ctx context.Context, g kvd.GroupID, body []byte) ([]byte, error) {
	grp, err := s.replica(g)
	if err != nil {
		return nil, err
	}
	var keys []string
	if err := json.Unmarshal(body, &keys); err != nil {
		return nil, fmt.Errorf("%w: read: %v", kvd.ErrInvalid, err)
	}
	out, err := readLocal(ctx, grp, keys)
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}
