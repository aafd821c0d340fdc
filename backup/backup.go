// Package backup reads and writes kvd's backup files: the keys of a whole
// cluster at one consistent cut, with their values and absolute expiry
// deadlines, in a versioned format with a checksum per chunk and one for
// the whole file.
//
// A file is the magic "KVDBACKUP", a big-endian uint16 format version and
// a uint16 of flags (0), then chunks. Every chunk is a type byte, a
// big-endian uint32 payload length, the payload, and the CRC-32C
// (Castagnoli) of the type, length and payload. The first chunk is the
// header ('H', JSON: Header), then data chunks ('D': records), then the
// end chunk ('E', JSON: Summary), whose SHA-256 covers every byte of the
// file before it. A record is the key's length (uvarint), the key, the
// value's length (uvarint), the value, and the expiry deadline in Unix
// nanoseconds (varint, 0: never).
//
// A Reader refuses a file that is not a backup, of another format
// version, damaged anywhere (a chunk's CRC or the whole file's SHA-256)
// or cut short (no end chunk); Verify reads a whole file that way before
// anything is done with it.
package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"time"
)

// Magic opens every backup file.
const Magic = "KVDBACKUP"

// Version is the format version this package writes and reads.
const Version = 1

// Chunk types.
const (
	ChunkHeader = 'H'
	ChunkData   = 'D'
	ChunkEnd    = 'E'
)

// The errors a Reader answers, wrapped with what it found.
var (
	// ErrEmpty: the file has no byte.
	ErrEmpty = errors.New("empty file: not a kvd backup")
	// ErrNotBackup: the file does not start with the magic.
	ErrNotBackup = errors.New("not a kvd backup")
	// ErrVersion: the file is a backup of a format version this package
	// does not read.
	ErrVersion = errors.New("unsupported backup format version")
	// ErrCorrupt: a checksum does not match, or a chunk does not decode.
	ErrCorrupt = errors.New("backup is corrupt")
	// ErrTruncated: the file ends before its end chunk.
	ErrTruncated = errors.New("backup is truncated")
)

// MaxChunk is the largest payload a chunk may have: a record holds one
// value whole, and values may be configured up to 1 GiB.
const MaxChunk = 1<<30 + 1<<20

// dataChunkTarget is the payload size a Writer fills a data chunk to.
const dataChunkTarget = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header describes a backup: when and where it was taken and its cut.
type Header struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	// Epoch is the cluster map's epoch at the cut.
	Epoch uint64 `json:"epoch,omitempty"`
	// Groups is the cut: for every group, the index of its log the
	// backup holds the state of.
	Groups []GroupCut `json:"groups,omitempty"`
	// Node is the node that took the backup.
	Node string `json:"node,omitempty"`
}

// GroupCut is where a backup cut one group's log.
type GroupCut struct {
	Group uint64 `json:"group"`
	Index uint64 `json:"index"`
}

// Summary ends a backup: its counts and the SHA-256 of every byte before
// the end chunk.
type Summary struct {
	Keys   uint64 `json:"keys"`
	Bytes  uint64 `json:"bytes"`
	Chunks uint64 `json:"chunks"`
	SHA256 string `json:"sha256"`
}

// Record is one key of a backup.
type Record struct {
	Key   string
	Value []byte
	// Expires is when the key expires, in Unix nanoseconds (0: never).
	Expires int64
}

// AppendRecord appends r's encoding to b.
func AppendRecord(b []byte, r Record) []byte {
	b = binary.AppendUvarint(b, uint64(len(r.Key)))
	b = append(b, r.Key...)
	b = binary.AppendUvarint(b, uint64(len(r.Value)))
	b = append(b, r.Value...)
	return binary.AppendVarint(b, r.Expires)
}

// DecodeRecords calls fn with every record of a data chunk's payload, in
// order; a record's Value aliases p.
func DecodeRecords(p []byte, fn func(Record) error) error {
	for len(p) > 0 {
		r, n, err := decodeRecord(p)
		if err != nil {
			return err
		}
		p = p[n:]
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// decodeRecord decodes the record at the start of p and answers its
// length; its Value aliases p.
func decodeRecord(p []byte) (r Record, size int, err error) {
	n, m := binary.Uvarint(p)
	if m <= 0 || n > uint64(len(p)-m) {
		return r, 0, fmt.Errorf("%w: bad record key", ErrCorrupt)
	}
	r.Key, size = string(p[m:m+int(n)]), m+int(n)
	n, m = binary.Uvarint(p[size:])
	if m <= 0 || n > uint64(len(p)-size-m) {
		return r, 0, fmt.Errorf("%w: bad record value (key %q)", ErrCorrupt, r.Key)
	}
	r.Value, size = p[size+m:size+m+int(n)], size+m+int(n)
	e, m := binary.Varint(p[size:])
	if m <= 0 {
		return r, 0, fmt.Errorf("%w: bad record expiry (key %q)", ErrCorrupt, r.Key)
	}
	r.Expires = e
	return r, size + m, nil
}

// WriteChunk writes one chunk.
func WriteChunk(w io.Writer, typ byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	crc := crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, payload)
	var tail [4]byte
	binary.BigEndian.PutUint32(tail[:], crc)
	for _, b := range [][]byte{hdr[:], payload, tail[:]} {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("write backup chunk: %w", err)
		}
	}
	return nil
}

// ReadChunk reads one chunk of at most MaxChunk bytes, checking its CRC.
// It answers io.EOF when r ends before the chunk's first byte, and
// ErrTruncated when it ends inside it. buf is reused for the payload when
// it is large enough.
func ReadChunk(r io.Reader, buf []byte) (typ byte, payload []byte, err error) {
	return readChunk(r, buf, MaxChunk)
}

func readChunk(r io.Reader, buf []byte, maxChunk int) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		return 0, nil, readErr(err, "chunk header")
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(maxChunk) {
		return 0, nil, fmt.Errorf("%w: a chunk of %d bytes (this reader takes at most %d)", ErrCorrupt, n, maxChunk)
	}
	if int(n) <= cap(buf) {
		payload = buf[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			return 0, nil, readErr(err, "chunk payload")
		}
	} else {
		// Grow as bytes arrive: a damaged length must not allocate
		// what the file does not hold.
		var b bytes.Buffer
		if m, err := b.ReadFrom(io.LimitReader(r, int64(n))); err != nil {
			return 0, nil, readErr(err, "chunk payload")
		} else if m < int64(n) {
			return 0, nil, fmt.Errorf("%w: a chunk of %d bytes holds %d", ErrTruncated, n, m)
		}
		payload = b.Bytes()
	}
	var tail [4]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		return 0, nil, readErr(err, "chunk checksum")
	}
	crc := crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, payload)
	if got := binary.BigEndian.Uint32(tail[:]); got != crc {
		return 0, nil, fmt.Errorf("%w: chunk checksum %08x, computed %08x", ErrCorrupt, got, crc)
	}
	return hdr[0], payload, nil
}

// readErr names a short read as truncation.
func readErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: ends inside a %s", ErrTruncated, what)
	}
	return fmt.Errorf("read backup %s: %w", what, err)
}

// Writer writes a backup file.
type Writer struct {
	w     io.Writer
	sum   hash.Hash
	buf   []byte
	stats Summary
	err   error
}

// NewWriter starts a backup on w with header h (its Format is set).
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	bw := &Writer{sum: sha256.New()}
	bw.w = io.MultiWriter(w, bw.sum)
	pre := make([]byte, 0, len(Magic)+4)
	pre = append(pre, Magic...)
	pre = binary.BigEndian.AppendUint16(pre, Version)
	pre = binary.BigEndian.AppendUint16(pre, 0)
	if _, err := bw.w.Write(pre); err != nil {
		return nil, fmt.Errorf("write backup magic: %w", err)
	}
	h.Format = Version
	doc, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode backup header: %w", err)
	}
	if err := bw.chunk(ChunkHeader, doc); err != nil {
		return nil, err
	}
	return bw, nil
}

func (w *Writer) chunk(typ byte, p []byte) error {
	if w.err != nil {
		return w.err
	}
	w.err = WriteChunk(w.w, typ, p)
	w.stats.Chunks++
	return w.err
}

// Add writes a record (buffered into chunks of about 1 MiB).
func (w *Writer) Add(r Record) error {
	w.buf = AppendRecord(w.buf, r)
	w.stats.Keys++
	w.stats.Bytes += uint64(len(r.Key) + len(r.Value))
	if len(w.buf) >= dataChunkTarget {
		return w.flush()
	}
	return w.err
}

func (w *Writer) flush() error {
	if len(w.buf) == 0 {
		return w.err
	}
	err := w.chunk(ChunkData, w.buf)
	w.buf = w.buf[:0]
	return err
}

// Close writes what is buffered and the end chunk, and answers the
// summary. It does not close the underlying writer.
func (w *Writer) Close() (Summary, error) {
	if err := w.flush(); err != nil {
		return Summary{}, err
	}
	w.stats.Chunks++ // the end chunk itself
	s := w.stats
	s.SHA256 = hex.EncodeToString(w.sum.Sum(nil))
	doc, err := json.Marshal(s)
	if err != nil {
		return Summary{}, fmt.Errorf("encode backup summary: %w", err)
	}
	w.stats.Chunks--
	if err := w.chunk(ChunkEnd, doc); err != nil {
		return Summary{}, err
	}
	return s, nil
}

// Reader reads a backup file, checking it as it goes.
type Reader struct {
	r      io.Reader
	sum    hash.Hash
	header Header
	stats  Summary
	end    *Summary
	// data is what is left to decode of the current data chunk, whose
	// payload buf holds.
	data     []byte
	buf      []byte
	maxChunk int
}

// NewReader reads the start of a backup: its magic, version and header.
func NewReader(r io.Reader) (*Reader, error) { return NewReaderLimit(r, MaxChunk) }

// NewReaderLimit is NewReader for a reader that refuses chunks larger
// than maxChunk bytes (as damaged): a reader that knows the largest
// record it could take bounds the memory a hostile file makes it use.
// Writers fill chunks to about 1 MiB plus one record.
func NewReaderLimit(r io.Reader, maxChunk int) (*Reader, error) {
	br := &Reader{sum: sha256.New(), maxChunk: min(maxChunk, MaxChunk)}
	br.r = io.TeeReader(bufio.NewReaderSize(r, 256<<10), br.sum)
	pre := make([]byte, len(Magic)+4)
	n, err := io.ReadFull(br.r, pre)
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return nil, ErrEmpty
	case n >= len(Magic) && string(pre[:len(Magic)]) != Magic, n < len(Magic) && string(pre[:n]) != Magic[:n]:
		return nil, ErrNotBackup
	case err != nil:
		return nil, readErr(err, "file header")
	}
	if v := binary.BigEndian.Uint16(pre[len(Magic):]); v != Version {
		return nil, fmt.Errorf("%w %d: this kvd reads version %d", ErrVersion, v, Version)
	}
	if f := binary.BigEndian.Uint16(pre[len(Magic)+2:]); f != 0 {
		return nil, fmt.Errorf("%w: flags %#x (this kvd knows none)", ErrVersion, f)
	}
	typ, p, err := readChunk(br.r, nil, br.maxChunk)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: no header", ErrTruncated)
	}
	if err != nil {
		return nil, err
	}
	if typ != ChunkHeader {
		return nil, fmt.Errorf("%w: first chunk is %q, not a header", ErrCorrupt, typ)
	}
	if err := json.Unmarshal(p, &br.header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if br.header.Format != Version {
		return nil, fmt.Errorf("%w %d: this kvd reads version %d", ErrVersion, br.header.Format, Version)
	}
	br.stats.Chunks = 1
	return br, nil
}

// Header returns the backup's header.
func (r *Reader) Header() Header { return r.header }

// Next returns the next record; its Value is valid until the following
// call. After the last record it checks the end chunk and answers io.EOF.
func (r *Reader) Next() (Record, error) {
	for len(r.data) == 0 {
		if r.end != nil {
			return Record{}, io.EOF
		}
		if err := r.readChunk(); err != nil {
			return Record{}, err
		}
	}
	rec, n, err := decodeRecord(r.data)
	if err != nil {
		return Record{}, err
	}
	r.data = r.data[n:]
	r.stats.Keys++
	r.stats.Bytes += uint64(len(rec.Key) + len(rec.Value))
	return rec, nil
}

func (r *Reader) readChunk() error {
	before := r.sum.Sum(nil) // the end chunk's digest covers what precedes it
	typ, p, err := readChunk(r.r, r.buf, r.maxChunk)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: no end chunk after %d keys", ErrTruncated, r.stats.Keys)
	}
	if err != nil {
		return err
	}
	r.stats.Chunks++
	switch typ {
	case ChunkData:
		if len(p) == 0 {
			return fmt.Errorf("%w: an empty data chunk", ErrCorrupt)
		}
		r.buf, r.data = p, p
		return nil
	case ChunkEnd:
		var s Summary
		if err := json.Unmarshal(p, &s); err != nil {
			return fmt.Errorf("%w: end chunk: %v", ErrCorrupt, err)
		}
		if got := hex.EncodeToString(before); s.SHA256 != got {
			return fmt.Errorf("%w: file checksum %s, computed %s", ErrCorrupt, s.SHA256, got)
		}
		if s.Keys != r.stats.Keys || s.Bytes != r.stats.Bytes || s.Chunks != r.stats.Chunks {
			return fmt.Errorf("%w: the end chunk counts %d keys in %d chunks, the file holds %d in %d", ErrCorrupt, s.Keys, s.Chunks, r.stats.Keys, r.stats.Chunks)
		}
		var extra [1]byte
		if n, _ := io.ReadFull(r.r, extra[:]); n > 0 {
			return fmt.Errorf("%w: bytes after the end chunk", ErrCorrupt)
		}
		r.end = &s
		return nil
	}
	return fmt.Errorf("%w: unknown chunk type %q", ErrCorrupt, typ)
}

// Summary returns the end chunk, once Next has answered io.EOF.
func (r *Reader) Summary() (Summary, bool) {
	if r.end == nil {
		return Summary{}, false
	}
	return *r.end, true
}

// Verify reads a whole backup and checks every checksum and count.
func Verify(rd io.Reader) (Header, Summary, error) { return VerifyLimit(rd, MaxChunk) }

// VerifyLimit is Verify with chunks of at most maxChunk bytes (see
// NewReaderLimit).
func VerifyLimit(rd io.Reader, maxChunk int) (Header, Summary, error) {
	r, err := NewReaderLimit(rd, maxChunk)
	if err != nil {
		return Header{}, Summary{}, err
	}
	for {
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return r.header, Summary{}, err
		}
	}
	s, _ := r.Summary()
	return r.header, s, nil
}
