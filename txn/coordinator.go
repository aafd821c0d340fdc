package txn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
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
	// VersionsAtPrepare tells whether every replica of the groups can
	// apply a prepare that fixes its writes' versions (store.TxnPrepare.
	// VersionAtPrepare): then a transaction is answered after its
	// decision. Otherwise (an older node among them, during an upgrade)
	// its writes take the resolving entry's version and the answer
	// waits for the resolution, as before. nil means they all can.
	VersionsAtPrepare func(groups []kvd.GroupID) bool
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
	// decided holds the transactions this coordinator decided whose
	// locks it is still resolving, by id: the decision (true: commit).
	// A transaction that meets one of their locks resolves it at once
	// and tries again, rather than fail with a conflict.
	decided sync.Map
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

// Do runs a transaction. Errors: kvd.ErrInvalid / kvd.ErrTooLarge (bad
// request, nothing done); kvd.ErrCompareFailed (with Response.Failed) and
// kvd.ErrConflict (another transaction's lock; retry) when it did not
// commit; kvd.ErrUnavailable when nothing was applied; kvd.ErrUnknownOutcome
// when it may or may not have committed.
func (c *Coordinator) Do(ctx context.Context, req Request, idem *kvd.Idem) (Response, error) {
	if err := Validate(req, c.cfg.Limits); err != nil {
		return Response{}, err
	}
	for attempt := 0; ; attempt++ {
		resp, err := c.do(ctx, req, idem)
		// A key's slot moved under the transaction: nothing was applied
		// (a refusal before any commit), so it runs again, planned by
		// the map as it is now. An idempotent one is not: its key
		// remembers the attempt.
		if idem != nil || attempt >= moveRetries || !(errors.Is(err, errSlotMoving) || errors.Is(err, kvd.ErrWrongGroup)) ||
			retryBackoff.Wait(ctx, attempt+2) != nil {
			return resp, err
		}
	}
}

// moveRetries bounds the attempts of a transaction whose keys' slots
// keep moving.
const moveRetries = 20

// do is one attempt of Do.
func (c *Coordinator) do(ctx context.Context, req Request, idem *kvd.Idem) (Response, error) {
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
	for attempt := 0; ; attempt++ {
		resp, err := c.twoPhase(ctx, req, parts, rg, newID(), nil)
		// A lock of a transaction decided here but not yet resolved
		// stood in the way, and was resolved: run again.
		if !errors.Is(err, errLocksResolved) || attempt >= lockRetries || lockWaitBackoff.Wait(ctx, attempt) != nil {
			return resp, err
		}
	}
}

// lockRetries bounds the attempts of a transaction that keeps meeting
// locks of transactions decided but not yet resolved.
const lockRetries = 5

// encode builds the store command of kind carrying payload as JSON;
// writes are the keys it writes, for the proposer.
func encode(kind store.CmdKind, payload any, writes []string) store.Cmd {
	b, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("encode transaction command: %v", err)) // plain structs: cannot fail
	}
	return store.Cmd{Kind: kind, Data: b, WriteKeys: writes}
}

// newID returns a fresh random transaction id.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}
