package txn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/failpoint"
	"github.com/kvd-project/kvd/store"
)

// Groups is what the coordinator needs from the cluster.
type Groups interface {
	// GroupOf returns the group that owns key.
	GroupOf(key string) (kvd.GroupID, error)
	// Propose replicates cmd through group g's log, at g's leader
	// wherever it is, and returns its result. Errors follow
	// replication.Group.Propose: definite (kvd.ErrUnavailable: nothing
	// applied) or unknown (kvd.ErrUnknownOutcome).
	Propose(ctx context.Context, g kvd.GroupID, cmd store.Cmd) (store.Result, error)
	// Read reads keys of group g linearizably, all at one point of g's
	// log, with the write locks held on them.
	Read(ctx context.Context, g kvd.GroupID, keys []string) ([]store.KeyState, error)
}

// A transaction's request and answer are the module's own types: a
// Request is a kvd.Txn (if every compare holds, all ops apply,
// atomically; exactly one of a compare's Version, Value and Exists is
// set), and a Response a kvd.TxnResponse (Failed lists the compares that
// did not hold, with kvd.ErrCompareFailed).
type (
	Compare  = kvd.Compare
	Op       = kvd.Op
	Request  = kvd.Txn
	OpResult = kvd.OpResult
	Response = kvd.TxnResponse
)

// Config configures a Coordinator.
type Config struct {
	// Timeout is how long a transaction may stay pending before anyone
	// may abort it; its locks' deadline.
	Timeout time.Duration
	// ResolveTimeout bounds the background resolution of aborted
	// transactions.
	ResolveTimeout time.Duration
	// Limits are enforced on requests.
	Limits kvd.Limits
	// Logger receives the coordinator's logs.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// LockWait is how long a single-group transaction waits for another
	// transaction's locks on its keys (helping expired ones along) before
	// giving up with kvd.ErrConflict, as a plain write does.
	LockWait time.Duration
	// AfterPrepare, if set, runs after every participant voted yes and
	// before the decision; a test hook to stop a coordinator there. If it
	// returns an error the coordinator gives up without deciding.
	AfterPrepare func(id string) error
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, ResolveTimeout: 30 * time.Second, LockWait: time.Second, Limits: kvd.DefaultLimits(), Logger: slog.Default()}
}

// Coordinator runs transactions. It is safe for concurrent use.
type Coordinator struct {
	g   Groups
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	// mu orders goroutine starts (spawn) before Close's Wait.
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// spawn runs f on a goroutine that Close waits for; once Close has begun
// it runs nothing and reports false.
func (c *Coordinator) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// New returns a coordinator over g. Close stops its background work.
func New(g Groups, cfg Config) *Coordinator {
	def := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = def.ResolveTimeout
	}
	if cfg.Limits.MaxTxnKeys == 0 {
		cfg.Limits = def.Limits
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LockWait == 0 {
		cfg.LockWait = def.LockWait
	}
	c := &Coordinator{g: g, cfg: cfg, log: cfg.Logger}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// Close stops background resolutions and waits for them.
func (c *Coordinator) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// Validate checks a request against the limits and the rules: at least
// one op or compare, known ops, one kind of compare each, no key written
// twice or read twice, at most MaxTxnKeys distinct keys.
func Validate(req Request, l kvd.Limits) error {
	if len(req.Ops) == 0 && len(req.Compares) == 0 {
		return fmt.Errorf("%w: a transaction needs at least one op or compare", kvd.ErrInvalid)
	}
	keys := map[string]bool{}
	for i, cmp := range req.Compares {
		if err := l.ValidateKey(cmp.Key); err != nil {
			return fmt.Errorf("compare %d: %w", i, err)
		}
		n := 0
		if cmp.Version != nil {
			n++
		}
		if cmp.Value != nil {
			n++
		}
		if cmp.Exists != nil {
			n++
		}
		if n != 1 {
			return fmt.Errorf("%w: compare %d must have exactly one of version, value and exists", kvd.ErrInvalid, i)
		}
		if err := l.ValidateValue(len(cmp.Value)); err != nil {
			return fmt.Errorf("compare %d: %w", i, err)
		}
		keys[cmp.Key] = true
	}
	written, read := map[string]bool{}, map[string]bool{}
	for i, op := range req.Ops {
		if err := l.ValidateKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if op.TTL < 0 || (op.TTL > 0 && op.Op != "put" && op.Op != "add") {
			return fmt.Errorf("%w: op %d: a ttl is for puts and adds, and positive", kvd.ErrInvalid, i)
		}
		if err := kvd.ValidateTTL(op.TTL); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if op.Delta != 0 && op.Op != "add" {
			return fmt.Errorf("%w: op %d: a delta is for adds", kvd.ErrInvalid, i)
		}
		switch op.Op {
		case "get":
			// A second get would answer the same again: all of a
			// transaction's gets read at one point.
			if read[op.Key] {
				return fmt.Errorf("%w: op %d reads %q a second time; all gets read at the same point, so the first answers for both", kvd.ErrInvalid, i, op.Key)
			}
			read[op.Key] = true
		case "put", "delete", "add":
			if err := l.ValidateValue(len(op.Value)); err != nil {
				return fmt.Errorf("op %d: %w", i, err)
			}
			if written[op.Key] {
				return fmt.Errorf("%w: op %d writes %q a second time", kvd.ErrInvalid, i, op.Key)
			}
			written[op.Key] = true
		default:
			return fmt.Errorf("%w: op %d: unknown op %q (get, put, delete, add)", kvd.ErrInvalid, i, op.Op)
		}
		if !utf8.ValidString(op.Key) {
			return fmt.Errorf("%w: op %d: key is not valid UTF-8", kvd.ErrInvalid, i)
		}
		keys[op.Key] = true
	}
	if len(keys) > l.MaxTxnKeys {
		return fmt.Errorf("%w: %d keys, the limit is %d", kvd.ErrTooLarge, len(keys), l.MaxTxnKeys)
	}
	return nil
}

// vote is a group's answer to a prepare.
type vote struct {
	out *store.TxnOutcome
	err error
}

// part is one group's share of a transaction.
type part struct {
	group    kvd.GroupID
	compares []store.TxnCompare
	ops      []store.TxnOp
	writes   []string
}

// plan splits a request by group and names the record group: the group
// of the first key (of the ops, else of the compares).
func (c *Coordinator) plan(req Request) (map[kvd.GroupID]*part, kvd.GroupID, error) {
	parts := map[kvd.GroupID]*part{}
	get := func(key string) (*part, error) {
		g, err := c.g.GroupOf(key)
		if err != nil {
			return nil, err
		}
		p := parts[g]
		if p == nil {
			p = &part{group: g}
			parts[g] = p
		}
		return p, nil
	}
	for i, cmp := range req.Compares {
		p, err := get(cmp.Key)
		if err != nil {
			return nil, 0, err
		}
		p.compares = append(p.compares, store.TxnCompare{Index: i, Key: cmp.Key, Version: cmp.Version, Value: cmp.Value, Exists: cmp.Exists})
	}
	for i, op := range req.Ops {
		p, err := get(op.Key)
		if err != nil {
			return nil, 0, err
		}
		p.ops = append(p.ops, store.TxnOp{Index: i, Op: op.Op, Key: op.Key, Value: op.Value, Delta: op.Delta, TTL: int64(op.TTL)})
		if op.Op != "get" {
			p.writes = append(p.writes, op.Key)
		}
	}
	first := ""
	if len(req.Ops) > 0 {
		first = req.Ops[0].Key
	} else {
		first = req.Compares[0].Key
	}
	rg, err := c.g.GroupOf(first)
	return parts, rg, err
}

func encode(kind store.CmdKind, payload any, writes []string) store.Cmd {
	b, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("encode transaction command: %v", err)) // plain structs: cannot fail
	}
	return store.Cmd{Kind: kind, Data: b, WriteKeys: writes}
}

// Do runs a transaction. Errors: kvd.ErrInvalid / kvd.ErrTooLarge (bad
// request, nothing done); kvd.ErrCompareFailed (with Response.Failed) and
// kvd.ErrConflict (another transaction's lock; retry) when it did not
// commit; kvd.ErrUnavailable when nothing was applied; kvd.ErrUnknownOutcome
// when it may or may not have committed.
func (c *Coordinator) Do(ctx context.Context, req Request, idem *kvd.Idem) (Response, error) {
	if err := Validate(req, c.cfg.Limits); err != nil {
		return Response{}, err
	}
	parts, rg, err := c.plan(req)
	if err != nil {
		return Response{}, err
	}
	if err := Register(ctx, c.g, idem, rg); err != nil {
		return Response{}, err
	}
	if idem != nil && len(parts) > 1 {
		return c.idempotent(ctx, req, parts, rg, idem)
	}
	readOnly := idem == nil
	for _, op := range req.Ops {
		readOnly = readOnly && op.Op == "get"
	}
	if readOnly {
		resp, err := c.readOnly(ctx, req, parts)
		if !errors.Is(err, errContended) {
			return resp, err
		}
		// Writers kept changing the keys: take read locks instead.
	}
	if len(parts) == 1 {
		return c.onePhase(ctx, req, parts[rg], idem)
	}
	return c.twoPhase(ctx, req, parts, rg, newID(), nil)
}

// onePhase runs a transaction whose keys are all in one group as a single
// Raft entry. If another transaction holds one of its keys, it waits up
// to LockWait for that one to finish (settling it if it is past its
// deadline), since a refusal for a lock applied nothing.
func (c *Coordinator) onePhase(ctx context.Context, req Request, p *part, idem *kvd.Idem) (Response, error) {
	cmd := encode(store.CmdTxnOnePhase, store.TxnOnePhase{Compares: p.compares, Ops: p.ops, Idem: idem}, p.writes)
	until := time.Now().Add(c.cfg.LockWait) // a wait: the real clock
	var out *store.TxnOutcome
	for attempt := 0; ; attempt++ {
		res, err := c.g.Propose(ctx, p.group, cmd)
		if err != nil {
			return Response{}, fmt.Errorf("transaction in group %d: %w", p.group, err)
		}
		out = res.Txn
		if out == nil {
			return Response{}, fmt.Errorf("transaction in group %d: no outcome: %w", p.group, kvd.ErrUnknownOutcome)
		}
		if out.Vote || out.Code != store.CodeConflict || time.Now().After(until) {
			break
		}
		c.settleExpired(ctx, p.group, out.Conflicts)
		select {
		case <-time.After(time.Duration(5<<min(attempt, 4)) * time.Millisecond):
		case <-ctx.Done():
			return c.refused([]*store.TxnOutcome{out})
		}
	}
	if !out.Vote {
		return c.refused([]*store.TxnOutcome{out})
	}
	resp := Response{Committed: true}
	fill(&resp, req, []*store.TxnOutcome{out})
	return resp, nil
}

// settleExpired finishes the transactions behind locks in group g that
// are past their deadline (their coordinators are slow or gone).
func (c *Coordinator) settleExpired(ctx context.Context, g kvd.GroupID, locks []store.Lock) {
	now := c.cfg.Now().UnixNano()
	done := map[string]bool{}
	for _, l := range locks {
		if l.Deadline >= now || done[l.Txn] {
			continue
		}
		done[l.Txn] = true
		state, err := Recover(ctx, c.g, l)
		if err != nil || (state != store.TxnCommitted && state != store.TxnAborted) {
			continue
		}
		if _, err := Resolve(ctx, c.g, l.Txn, g, state == store.TxnCommitted); err != nil {
			c.log.Debug("settle an expired lock", "txn", l.Txn, "group", g, "err", err)
		}
	}
}

// refused turns no votes into the error the client sees.
func (c *Coordinator) refused(outs []*store.TxnOutcome) (Response, error) {
	var failed []int
	conflict := ""
	for _, o := range outs {
		if o == nil || o.Vote {
			continue
		}
		switch o.Code {
		case store.CodeCompareFailed:
			failed = append(failed, o.Failed...)
		case store.CodeNotANumber:
			return Response{}, fmt.Errorf("transaction not committed: an add met a value that is not a 64-bit integer, or overflowed: %w", kvd.ErrNotANumber)
		case store.CodeIdempotencyMismatch:
			return Response{}, fmt.Errorf("transaction not run: %w", kvd.ErrIdempotencyMismatch)
		case store.CodeInvalid:
			return Response{}, fmt.Errorf("transaction not run: the store refused it as invalid: %w", kvd.ErrInvalid)

		case store.CodeConflict:
			if len(o.Conflicts) > 0 {
				conflict = o.Conflicts[0].Txn
			}
		}
	}
	if len(failed) > 0 {
		sort.Ints(failed)
		return Response{Failed: failed}, fmt.Errorf("transaction not committed: compares %v failed: %w", failed, kvd.ErrCompareFailed)
	}
	if conflict != "" {
		return Response{}, fmt.Errorf("transaction not committed: a key is locked by transaction %s: %w", conflict, kvd.ErrConflict)
	}
	return Response{}, fmt.Errorf("transaction not committed: aborted: %w", kvd.ErrConflict)
}

// fill builds the results of a committed transaction from the groups'
// outcomes: reads from the prepares, write versions from the
// resolutions.
func fill(resp *Response, req Request, outs []*store.TxnOutcome) {
	resp.Results = make([]OpResult, len(req.Ops))
	for i, op := range req.Ops {
		resp.Results[i] = OpResult{Op: op.Op, Key: op.Key}
	}
	versions := map[string]uint64{}
	for _, o := range outs {
		if o == nil {
			continue
		}
		for _, r := range o.Reads {
			res := &resp.Results[r.Index]
			res.Found, res.Value, res.Version = r.Found, r.Value, r.Version
		}
		for _, w := range o.Writes {
			if w.Version != 0 {
				versions[w.Key] = w.Version
			}
			if w.Index < len(req.Ops) && req.Ops[w.Index].Key == w.Key {
				switch req.Ops[w.Index].Op {
				case "delete":
					resp.Results[w.Index].Deleted = w.Deleted
				case "add":
					if w.Value != nil {
						resp.Results[w.Index].Value, resp.Results[w.Index].Found = w.Value, true
					}
				}
			}
		}
	}
	for i, op := range req.Ops {
		if op.Op == "put" || op.Op == "add" {
			resp.Results[i].Version = versions[op.Key]
		}
	}
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// twoPhase runs a transaction over several groups: prepare everywhere,
// the decision in the record group, then resolution of the others.
//
// Once locks may be taken the protocol runs to its end even if the caller
// gives up: abandoned half way, it would leave locks that block the keys
// until the deadline and recovery. It runs on a goroutine of the
// coordinator, bounded by the transaction's timeout and by Close. After a
// commit the answer waits for the resolution (so that it carries every
// write's version) only as long as the caller does. finished, if set, is
// called on that goroutine with the final outcome (after resolution),
// whether or not the caller is still there.
func (c *Coordinator) twoPhase(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, id string, finished func(Response, error)) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, fmt.Errorf("transaction not started: %v: %w", err, kvd.ErrUnavailable)
	}
	decided := make(chan twoPhaseResult, 1)
	final := make(chan Response, 1)
	started := c.spawn(func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		r := c.runTwoPhase(dctx, req, parts, rg, id)
		decided <- r
		if r.err != nil || !r.resp.Committed {
			if finished != nil {
				finished(r.resp, r.err)
			}
			return
		}
		// Committed: resolve the other groups, so the answer can carry
		// every write's version.
		rctx, rcancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer rcancel()
		resp := Response{Committed: true}
		fill(&resp, req, append(r.outs, c.resolve(rctx, id, r.groups, rg, true)...))
		final <- resp
		if finished != nil {
			finished(resp, nil)
		}
	})
	if !started {
		return Response{}, fmt.Errorf("transaction not started: %w", kvd.ErrClosed)
	}
	var r twoPhaseResult
	select {
	case r = <-decided:
	case <-ctx.Done():
		select {
		case r = <-decided: // decided just now: report it
		default:
			return Response{}, fmt.Errorf("transaction %s: the caller gave up before the decision (it is decided without it): %v: %w", id, ctx.Err(), kvd.ErrUnknownOutcome)
		}
	}
	if r.err != nil || !r.resp.Committed {
		return r.resp, r.err
	}
	select {
	case resp := <-final:
		return resp, nil
	case <-ctx.Done():
		// Committed all the same; the versions written in groups not yet
		// resolved are left out.
		resp := Response{Committed: true}
		fill(&resp, req, r.outs)
		return resp, nil
	}
}

// twoPhaseResult is the outcome of a two-phase transaction at its
// decision; a commit carries the outcomes so far and the participants.
type twoPhaseResult struct {
	resp   Response
	err    error
	outs   []*store.TxnOutcome
	groups []kvd.GroupID
}

func (c *Coordinator) runTwoPhase(ctx context.Context, req Request, parts map[kvd.GroupID]*part, rg kvd.GroupID, id string) twoPhaseResult {
	fail := func(resp Response, err error) twoPhaseResult { return twoPhaseResult{resp: resp, err: err} }
	deadline := c.cfg.Now().Add(c.cfg.Timeout).UnixNano()
	var groups []kvd.GroupID
	for g := range parts {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i] < groups[j] })

	// Phase 1: prepare everywhere at once.
	votes := make(map[kvd.GroupID]*vote, len(groups))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range groups {
		p := parts[g]
		prep := store.TxnPrepare{ID: id, RecordGroup: rg, Deadline: deadline, Compares: p.compares, Ops: p.ops}
		if g == rg {
			prep.Participants = groups
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.g.Propose(ctx, g, encode(store.CmdTxnPrepare, prep, nil))
			mu.Lock()
			votes[g] = &vote{out: res.Txn, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	failpoint.Hit(failpoint.TxnBeforeDecision)
	allYes := true
	var outs []*store.TxnOutcome
	for _, g := range groups {
		v := votes[g]
		if v.err != nil || v.out == nil || !v.out.Vote {
			allYes = false
		}
		outs = append(outs, v.out)
	}
	if allYes && c.cfg.AfterPrepare != nil {
		if err := c.cfg.AfterPrepare(id); err != nil {
			return fail(Response{}, fmt.Errorf("transaction %s: stopped after prepare: %w", id, err))
		}
	}

	// Phase 2: the decision, in the record group.
	decided, err := c.decide(ctx, id, rg, allYes, parts[rg].writes)
	if err != nil {
		if allYes {
			return fail(Response{}, err) // may or may not have committed
		}
		// Not committed in any case: abort is the only possible outcome.
		c.resolveLater(id, groups, rg, false)
		return fail(c.refusedOrUnavailable(ctx, votes, outs))
	}
	if decided.State != store.TxnCommitted {
		c.resolveLater(id, groups, rg, false)
		if allYes {
			return fail(Response{}, fmt.Errorf("transaction %s was aborted by recovery before it could commit: %w", id, kvd.ErrConflict))
		}
		return fail(c.refusedOrUnavailable(ctx, votes, outs))
	}

	// Committed. Phase 3: resolve the other groups, so the answer can
	// carry every write's version.
	return twoPhaseResult{resp: Response{Committed: true}, outs: append(outs, decided), groups: groups}
}

// refusedOrUnavailable explains an aborted transaction: a no vote wins
// over a group that could not be reached.
func (c *Coordinator) refusedOrUnavailable(ctx context.Context, votes map[kvd.GroupID]*vote, outs []*store.TxnOutcome) (Response, error) {
	// Locks past their deadline belong to transactions whose coordinator
	// is slow or gone: settle them now, so a retry does not meet them.
	for g, v := range votes {
		if v.out != nil && v.out.Code == store.CodeConflict {
			c.settleExpired(ctx, g, v.out.Conflicts)
		}
	}
	for _, o := range outs {
		if o != nil && !o.Vote {
			return c.refused(outs)
		}
	}
	for g, v := range votes {
		if v.err != nil && (errors.Is(v.err, kvd.ErrInsufficientStorage) || errors.Is(v.err, kvd.ErrOverloaded)) {
			return Response{}, fmt.Errorf("transaction not committed: group %d: %w", g, v.err)
		}
	}
	for g, v := range votes {
		if v.err != nil {
			return Response{}, fmt.Errorf("transaction not committed: group %d: %v: %w", g, v.err, kvd.ErrUnavailable)
		}
	}
	return Response{}, fmt.Errorf("transaction not committed: %w", kvd.ErrConflict)
}

// decide sets the record to committed (commit) or aborted, resolving the
// record group's locks in the same entry, and returns the record's final
// state. A decision whose outcome is unknown is retried (it is a
// compare-and-set: retrying cannot change a decision already made).
func (c *Coordinator) decide(ctx context.Context, id string, rg kvd.GroupID, commit bool, writes []string) (*store.TxnOutcome, error) {
	cmd := encode(store.CmdTxnDecide, store.TxnDecide{ID: id, Commit: commit, ResolveHere: true}, writes)
	var out *store.TxnOutcome
	err := retrying(ctx, func(err error) bool {
		return errors.Is(err, kvd.ErrUnknownOutcome) || errors.Is(err, kvd.ErrUnavailable)
	}, func() error {
		res, err := c.g.Propose(ctx, rg, cmd)
		if err == nil && res.Txn == nil {
			err = fmt.Errorf("no outcome: %w", kvd.ErrUnknownOutcome)
		}
		out = res.Txn
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transaction %s: decision in group %d: %v: %w", id, rg, err, kvd.ErrUnknownOutcome)
	}
	return out, nil
}

// retrying calls try until it succeeds, returns an error that retry
// refuses, or ctx ends, backing off between attempts. It returns try's
// last error, or ctx's if try never ran.
func retrying(ctx context.Context, retry func(error) bool, try func() error) error {
	var lastErr error
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := try()
		if err == nil {
			return nil
		}
		lastErr = err
		if !retry(err) {
			return err
		}
		select {
		case <-time.After(time.Duration(10<<min(attempt, 5)) * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return lastErr
}

// always retries every error.
func always(error) bool { return true }

// resolve resolves the transaction's locks in every group but the record
// group, in parallel, retrying within ctx. It returns the outcomes it
// got; a group it could not reach is left to recovery.
func (c *Coordinator) resolve(ctx context.Context, id string, groups []kvd.GroupID, rg kvd.GroupID, commit bool) []*store.TxnOutcome {
	var mu sync.Mutex
	var outs []*store.TxnOutcome
	var wg sync.WaitGroup
	for _, g := range groups {
		if g == rg {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := Resolve(ctx, c.g, id, g, commit)
			if err != nil {
				c.log.Warn("transaction resolution left to recovery", "txn", id, "group", g, "err", err)
				return
			}
			mu.Lock()
			outs = append(outs, res.Txn)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return outs
}

// resolveLater resolves an aborted transaction's locks in the background,
// in every group but rg.
func (c *Coordinator) resolveLater(id string, groups []kvd.GroupID, rg kvd.GroupID, commit bool) {
	c.spawn(func() { // closing: the janitors and readers resolve it
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResolveTimeout)
		defer cancel()
		c.resolve(ctx, id, groups, rg, commit)
	})
}

// ResolveLater resolves transaction id's locks in group g in the
// background (a reader that found the transaction decided helps it
// along). The decision must be known from the record.
func (c *Coordinator) ResolveLater(id string, g kvd.GroupID, commit bool) {
	c.resolveLater(id, []kvd.GroupID{g}, 0, commit)
}

// Resolve resolves transaction id's locks in group g, retrying definite
// failures and unknown outcomes (resolution is idempotent) within ctx.
// The caller must know the decision from the record. The result's
// Version is the index of the resolving entry.
func Resolve(ctx context.Context, gs Groups, id string, g kvd.GroupID, commit bool) (store.Result, error) {
	cmd := encode(store.CmdTxnResolve, store.TxnResolve{ID: id, Commit: commit}, nil)
	var res store.Result
	err := retrying(ctx, always, func() error {
		var err error
		res, err = gs.Propose(ctx, g, cmd)
		return err
	})
	if err != nil {
		return store.Result{}, fmt.Errorf("resolve %s in group %d: %v: %w", id, g, err, kvd.ErrUnavailable)
	}
	return res, nil
}

// Recover returns the state of the transaction holding lock l, aborting
// it first if it is pending (or absent) past its deadline. Pending (or
// absent before the deadline) means it has not committed yet.
func Recover(ctx context.Context, gs Groups, l store.Lock) (store.TxnState, error) {
	res, err := gs.Propose(ctx, l.RecordGroup, encode(store.CmdTxnRecover, store.TxnRecover{ID: l.Txn, Deadline: l.Deadline}, nil))
	if err != nil {
		return "", fmt.Errorf("recover transaction %s: %w", l.Txn, err)
	}
	if res.Txn == nil {
		return "", fmt.Errorf("recover transaction %s: no outcome: %w", l.Txn, kvd.ErrUnavailable)
	}
	return res.Txn.State, nil
}

// ForceAbort aborts transaction id in its record group rg unless it has
// committed, whatever its deadline (an operator's abort), and returns its
// state: aborted, or committed if it committed first. The record's
// compare-and-set decides between this and the coordinator's commit.
// deadline is the transaction's, as its locks say (0 if unknown): the
// aborted record is kept at least until then.
func ForceAbort(ctx context.Context, gs Groups, id string, rg kvd.GroupID, deadline int64) (store.TxnState, error) {
	res, err := gs.Propose(ctx, rg, encode(store.CmdTxnRecover, store.TxnRecover{ID: id, Deadline: deadline, Force: true}, nil))
	if err != nil {
		return "", fmt.Errorf("abort transaction %s: %w", id, err)
	}
	if res.Txn == nil {
		return "", fmt.Errorf("abort transaction %s: no outcome: %w", id, kvd.ErrUnavailable)
	}
	if res.Err != nil {
		return "", fmt.Errorf("abort transaction %s: %w", id, res.Err)
	}
	return res.Txn.State, nil
}

// Forget deletes a decided record.
func Forget(ctx context.Context, gs Groups, id string, rg kvd.GroupID) error {
	_, err := gs.Propose(ctx, rg, encode(store.CmdTxnForget, store.TxnForget{ID: id}, nil))
	return err
}
