package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/kvd-project/kvd"
)

// CmdKind identifies the kind of a replicated command.
type CmdKind uint8

// The command kinds. Their numbers are part of the on-disk log format:
// never renumber them.
const (
	// CmdNoop changes nothing; a new leader proposes one to commit an
	// entry of its own term.
	CmdNoop CmdKind = 1
	// CmdPut stores a value under a key, subject to its condition.
	CmdPut CmdKind = 2
	// CmdDelete removes a key, subject to its condition.
	CmdDelete CmdKind = 3
	// CmdSetMap stores the cluster map if its epoch is newer than the
	// stored one.
	CmdSetMap CmdKind = 4
	// Transaction commands; Data holds their JSON payload (see payload.go).
	CmdTxnPrepare  CmdKind = 5
	CmdTxnDecide   CmdKind = 6
	CmdTxnResolve  CmdKind = 7
	CmdTxnRecover  CmdKind = 8
	CmdTxnOnePhase CmdKind = 9
	CmdTxnForget   CmdKind = 10
	// CmdExpire deletes a key whose TTL ran out, if its version is still
	// Cond.Version; the leader proposes it.
	CmdExpire CmdKind = 11
	// Idempotency records: Data holds their JSON payload (see payload.go).
	CmdDedupGC    CmdKind = 12
	CmdDedupClaim CmdKind = 13
	CmdDedupDone  CmdKind = 14
	// CmdDedupRegister records, in the group an idempotency key hashes
	// to, which request uses the key, so a reuse for a key of any other
	// group is caught (see apply_dedup.go).
	CmdDedupRegister CmdKind = 15
	// CmdHashCheck records the state hash at its index, for the replicas
	// of a group to compare (see integrity.go).
	CmdHashCheck CmdKind = 16
	// CmdChangeMap stores a cluster map if the stored one's epoch is the
	// one it expects: a compare-and-set, so that two changes made at once
	// cannot both succeed (see MapChange). Only the system group's log
	// carries it.
	CmdChangeMap CmdKind = 17
	// CmdMoveIngest carries a piece of a slot move's copy into the
	// target group; CmdDropKeys drops keys of slots the group no longer
	// owns. Data holds their JSON payload (see move.go).
	CmdMoveIngest CmdKind = 18
	CmdDropKeys   CmdKind = 19
	// CmdFreeze freezes the group for a backup's cut, or lifts the
	// freeze; CmdRestore is a step of a restore. Data holds their JSON
	// payload (see backup.go).
	CmdFreeze  CmdKind = 20
	CmdRestore CmdKind = 21
	// CmdTokens changes the access token table (see tokens.go); only the
	// system group's log carries it.
	CmdTokens CmdKind = 22
)

// hasDocument reports whether k is a command whose payload is a JSON
// document in Data (transaction and idempotency commands).
func (k CmdKind) hasDocument() bool {
	return (k >= CmdTxnPrepare && k <= CmdTxnForget) || (k >= CmdDedupGC && k <= CmdDedupRegister) || (k >= CmdMoveIngest && k <= CmdTokens)
}

// String names the kind in errors and logs.
func (k CmdKind) String() string {
	names := [...]string{CmdNoop: "noop", CmdPut: "put", CmdDelete: "delete", CmdSetMap: "set-map", CmdChangeMap: "change-map", CmdTxnPrepare: "txn-prepare",
		CmdTxnDecide: "txn-decide", CmdTxnResolve: "txn-resolve", CmdTxnRecover: "txn-recover", CmdTxnOnePhase: "txn-one-phase",
		CmdTxnForget: "txn-forget", CmdExpire: "expire", CmdDedupGC: "dedup-gc", CmdDedupClaim: "dedup-claim", CmdDedupDone: "dedup-done",
		CmdDedupRegister: "dedup-register", CmdHashCheck: "hash-check", CmdMoveIngest: "move-ingest", CmdDropKeys: "drop-keys",
		CmdFreeze: "freeze", CmdRestore: "restore", CmdTokens: "tokens"}
	if int(k) < len(names) && names[k] != "" {
		return names[k]
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// Idem names an idempotent request.
type Idem = kvd.Idem

// Cmd is one replicated command. Which fields matter depends on Kind.
type Cmd struct {
	Kind  CmdKind
	Key   string
	Value []byte
	Cond  kvd.Cond
	// Data is the payload of commands that carry a document (CmdSetMap:
	// the cluster map; transaction commands: their JSON payload).
	Data []byte
	// TTL, for a put, is how long after the entry's time the key
	// expires, in ns (0: never).
	TTL int64
	// Idem, if set, makes the write idempotent under that key.
	Idem *Idem
	// WriteKeys lists the keys a multi-key command may write; it is not
	// replicated. The proposer keeps two writes of a key out of one entry
	// with it, so every change gets its own version.
	WriteKeys []string
}

// Batch is the payload of one Raft log entry: commands applied together,
// in order, at the entry's index. No two commands of a batch write the same
// key, so each change gets a distinct version.
type Batch struct {
	// Time is the leader's wall clock when it proposed the batch, in Unix
	// nanoseconds: the only clock apply may use, so that every replica
	// decides alike.
	Time int64
	// Origin and Seq identify the proposer (a random number per replica
	// incarnation) and the batch among its proposals, so the proposer
	// recognises its own entry when it applies it, even after losing
	// leadership. Apply ignores them.
	Origin uint64
	Seq    uint64
	Cmds   []Cmd
}

// Result is the outcome of one command.
type Result struct {
	// Version is the key's version after a successful put; for a failed
	// condition, the key's current version.
	Version uint64
	// Deleted reports whether a delete removed an existing key.
	Deleted bool
	// Err is nil, or kvd.ErrPreconditionFailed when the condition did
	// not hold, or kvd.ErrConflict when a transaction holds a lock on the
	// key; nothing was written then.
	Err error
	// Locks are the locks that caused an ErrConflict.
	Locks *LockSet
	// Txn is the outcome of a transaction command.
	Txn *TxnOutcome
	// Dedup is the outcome of an idempotency claim.
	Dedup *DedupState
	// Hash is the state hash a CmdHashCheck recorded.
	Hash uint64
}

// Batch formats: the first byte of every encoded batch. Format 2 follows
// it with a CRC-32C of the rest, checked on decode, so a log entry damaged
// on disk is found before it is applied; format 1 (written before) has
// none.
const (
	batchFormatV1 = 0x01
	batchFormat   = 0x02
)

// batchHeader is the size of format 2's format byte and checksum.
const batchHeader = 5

// ErrBadBatch means a log entry's payload is not a batch this version can
// decode (damaged on disk, or written by a newer version). It matches
// ErrCorrupt when the entry's checksum failed.
var ErrBadBatch = errors.New("undecodable command batch")

// AppendEncode appends the binary encoding of b to dst.
func (b *Batch) AppendEncode(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, batchFormat, 0, 0, 0, 0)
	dst = binary.AppendVarint(dst, b.Time)
	dst = binary.AppendUvarint(dst, b.Origin)
	dst = binary.AppendUvarint(dst, b.Seq)
	dst = binary.AppendUvarint(dst, uint64(len(b.Cmds)))
	for i := range b.Cmds {
		c := &b.Cmds[i]
		dst = append(dst, byte(c.Kind))
		switch c.Kind {
		case CmdNoop:
		case CmdPut:
			dst = appendBytes(dst, []byte(c.Key))
			dst = appendCond(dst, c.Cond)
			dst = appendBytes(dst, c.Value)
			dst = binary.AppendVarint(dst, c.TTL)
			dst = appendIdem(dst, c.Idem)
		case CmdDelete:
			dst = appendBytes(dst, []byte(c.Key))
			dst = appendCond(dst, c.Cond)
			dst = appendIdem(dst, c.Idem)
		case CmdExpire:
			dst = appendBytes(dst, []byte(c.Key))
			dst = binary.AppendUvarint(dst, c.Cond.Version)
		case CmdSetMap, CmdChangeMap:
			dst = appendBytes(dst, c.Data)
		case CmdHashCheck:
		default:
			if c.Kind.hasDocument() {
				dst = appendBytes(dst, c.Data)
			}
		}
	}
	binary.LittleEndian.PutUint32(dst[start+1:start+batchHeader], crc32.Checksum(dst[start+batchHeader:], castagnoli))
	return dst
}

// EncodedSize returns an upper bound of the encoded size of c.
func (c *Cmd) EncodedSize() int {
	n := 1 + 4*binary.MaxVarintLen64 + 2 + len(c.Key) + len(c.Value) + len(c.Data)
	if c.Idem != nil {
		n += len(c.Idem.Key) + len(c.Idem.FP) + 2*binary.MaxVarintLen64
	}
	return n
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendIdem(dst []byte, i *Idem) []byte {
	if i == nil {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	dst = appendBytes(dst, []byte(i.Key))
	return appendBytes(dst, i.FP)
}

func (d *decoder) idem() *Idem {
	if d.byte() == 0 {
		return nil
	}
	i := &Idem{Key: string(d.bytes())}
	i.FP = append([]byte(nil), d.bytes()...)
	return i
}

func appendCond(dst []byte, c kvd.Cond) []byte {
	dst = append(dst, byte(c.Kind))
	if c.Kind == kvd.CondVersionEq || c.Kind == kvd.CondVersionNe {
		dst = binary.AppendUvarint(dst, c.Version)
	}
	return dst
}

// DecodeBatch decodes a batch encoded by AppendEncode. Values and payloads
// alias data. An error wraps ErrBadBatch, and ErrCorrupt too when the
// entry's checksum does not match its contents.
func DecodeBatch(data []byte) (*Batch, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty entry", ErrBadBatch)
	}
	switch data[0] {
	case batchFormat:
		if len(data) < batchHeader {
			return nil, fmt.Errorf("%w: %w: truncated header", ErrBadBatch, ErrCorrupt)
		}
		want := binary.LittleEndian.Uint32(data[1:batchHeader])
		if got := crc32.Checksum(data[batchHeader:], castagnoli); got != want {
			return nil, fmt.Errorf("%w: %w: checksum %08x, stored %08x", ErrBadBatch, ErrCorrupt, got, want)
		}
		data = data[batchHeader:]
	case batchFormatV1:
		data = data[1:]
	default:
		return nil, fmt.Errorf("%w: unknown format %#x", ErrBadBatch, data[0])
	}
	d := decoder{buf: data}
	b := &Batch{Time: d.varint(), Origin: d.uvarint(), Seq: d.uvarint()}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(data)) {
		return nil, fmt.Errorf("%w: bad header", ErrBadBatch)
	}
	b.Cmds = make([]Cmd, n)
	for i := range b.Cmds {
		c := &b.Cmds[i]
		c.Kind = CmdKind(d.byte())
		switch c.Kind {
		case CmdNoop:
		case CmdPut:
			c.Key = string(d.bytes())
			c.Cond = d.cond()
			c.Value = d.bytes()
			c.TTL = d.varint()
			c.Idem = d.idem()
		case CmdDelete:
			c.Key = string(d.bytes())
			c.Cond = d.cond()
			c.Idem = d.idem()
		case CmdExpire:
			c.Key = string(d.bytes())
			c.Cond = kvd.Cond{Kind: kvd.CondVersionEq, Version: d.uvarint()}
		case CmdSetMap, CmdChangeMap:
			c.Data = d.bytes()
		case CmdHashCheck:
		default:
			if !c.Kind.hasDocument() {
				return nil, fmt.Errorf("%w: unknown command kind %d", ErrBadBatch, c.Kind)
			}
			c.Data = d.bytes()
		}
		if d.err != nil {
			return nil, fmt.Errorf("%w: command %d: %v", ErrBadBatch, i, d.err)
		}
	}
	return b, nil
}

type decoder struct {
	buf []byte
	err error
}

var errShort = errors.New("truncated")

func (d *decoder) byte() byte {
	if d.err != nil || len(d.buf) < 1 {
		d.err = errShort
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.buf)) {
		d.err = errShort
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) cond() kvd.Cond {
	c := kvd.Cond{Kind: kvd.CondKind(d.byte())}
	switch c.Kind {
	case kvd.CondNone, kvd.CondExists:
	case kvd.CondVersionEq, kvd.CondVersionNe:
		c.Version = d.uvarint()
	default:
		d.err = fmt.Errorf("unknown condition kind %d", c.Kind)
	}
	return c
}
