package atrest

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// StreamMagic opens a sealed stream.
const StreamMagic = "KVDENCS1"

// StreamHeaderSize is the size of a sealed stream's header: its magic,
// key id and nonce prefix.
const StreamHeaderSize = streamHeader

const (
	chunkSize    = 64 << 10
	streamHeader = len(StreamMagic) + len(KeyID{}) + 8
	chunkExtra   = 4 + tagSize
)

// IsSealedStream reports whether head, the start of a stream, opens a
// sealed stream.
func IsSealedStream(head []byte) bool { return bytes.HasPrefix(head, []byte(StreamMagic)) }

// PlainSize returns the size of the plaintext of a sealed stream of size
// bytes (-1 if no sealed stream has that size).
func PlainSize(size int64) int64 {
	body := size - int64(streamHeader)
	if body < chunkExtra {
		return -1
	}
	chunks := (body + chunkSize + chunkExtra - 1) / (chunkSize + chunkExtra)
	return body - chunks*chunkExtra
}

func chunkNonce(prefix []byte, n uint32) []byte {
	nonce := make([]byte, nonceSize)
	copy(nonce, prefix)
	binary.BigEndian.PutUint32(nonce[8:], n)
	return nonce
}

func chunkAD(ad []byte, last bool) []byte {
	out := append([]byte(nil), ad...)
	if last {
		return append(out, 1)
	}
	return append(out, 0)
}

// streamWriter seals what is written to it in chunks.
type streamWriter struct {
	w      io.Writer
	aead   cipher.AEAD
	prefix []byte
	ad     []byte
	n      uint32
	buf    []byte
	out    []byte
	err    error
	closed bool
}

// NewWriter returns a writer that seals a stream under the active key,
// bound to ad, onto w. Close writes the last chunk; it does not close w.
func (r *Keyring) NewWriter(w io.Writer, ad []byte) (io.WriteCloser, error) {
	id := r.Active()
	sw := &streamWriter{w: w, aead: r.aeads[id], prefix: make([]byte, 8), ad: ad, buf: make([]byte, 0, chunkSize)}
	if _, err := rand.Read(sw.prefix); err != nil {
		return nil, err
	}
	head := append([]byte(StreamMagic), id[:]...)
	if _, err := w.Write(append(head, sw.prefix...)); err != nil {
		return nil, err
	}
	return sw, nil
}

func (s *streamWriter) flush(last bool) error {
	if s.n == ^uint32(0) {
		return errors.New("sealed stream too long")
	}
	s.out = binary.BigEndian.AppendUint32(s.out[:0], uint32(len(s.buf)))
	s.out = s.aead.Seal(s.out, chunkNonce(s.prefix, s.n), s.buf, chunkAD(s.ad, last))
	s.n++
	s.buf = s.buf[:0]
	_, err := s.w.Write(s.out)
	return err
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed {
		return 0, errors.New("write to a closed sealed stream")
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), chunkSize-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(s.buf) == chunkSize {
			if s.err = s.flush(false); s.err != nil {
				return n, s.err
			}
		}
	}
	return n, nil
}

func (s *streamWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err != nil {
		return s.err
	}
	s.err = s.flush(true)
	return s.err
}

// StreamKey reads the header of a sealed stream and returns its key id.
func StreamKey(head []byte) (KeyID, error) {
	var id KeyID
	if len(head) < streamHeader || !IsSealedStream(head) {
		return id, ErrNotSealed
	}
	copy(id[:], head[len(StreamMagic):])
	return id, nil
}

// streamReader opens a sealed stream.
type streamReader struct {
	r      io.Reader
	aead   cipher.AEAD
	prefix []byte
	ad     []byte
	n      uint32
	plain  []byte // opened, not yet read
	buf    []byte
	last   bool
	err    error
}

// NewReader returns a reader of the plaintext of the sealed stream r,
// bound to ad. Reading fails with ErrCorrupt if the stream was damaged,
// cut short or extended; NewReader fails with ErrNotSealed or
// ErrUnknownKey.
func (r *Keyring) NewReader(src io.Reader, ad []byte) (io.Reader, error) {
	head := make([]byte, streamHeader)
	if _, err := io.ReadFull(src, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrNotSealed
		}
		return nil, err
	}
	id, err := StreamKey(head)
	if err != nil {
		return nil, err
	}
	aead, err := r.aead(id)
	if err != nil {
		return nil, err
	}
	return &streamReader{r: src, aead: aead, prefix: head[streamHeader-8:], ad: ad, buf: make([]byte, chunkSize+chunkExtra)}, nil
}

func (s *streamReader) next() error {
	var lenb [4]byte
	if _, err := io.ReadFull(s.r, lenb[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("at chunk %d: %w", s.n, ErrTruncated)
		}
		return err
	}
	n := int(binary.BigEndian.Uint32(lenb[:]))
	if n > chunkSize {
		return fmt.Errorf("sealed stream chunk %d of %d bytes: %w", s.n, n, ErrCorrupt)
	}
	ct := s.buf[:n+tagSize]
	if _, err := io.ReadFull(s.r, ct); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("in chunk %d: %w", s.n, ErrTruncated)
		}
		return err
	}
	last := n < chunkSize
	plain, err := s.aead.Open(ct[:0], chunkNonce(s.prefix, s.n), ct, chunkAD(s.ad, last))
	if err != nil {
		return fmt.Errorf("sealed stream chunk %d: %w", s.n, ErrCorrupt)
	}
	s.n++
	s.plain, s.last = plain, last
	if last {
		var one [1]byte
		if k, _ := io.ReadFull(s.r, one[:]); k > 0 {
			return fmt.Errorf("sealed stream has bytes after its last chunk: %w", ErrCorrupt)
		}
	}
	return nil
}

func (s *streamReader) Read(p []byte) (int, error) {
	for len(s.plain) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.last {
			return 0, io.EOF
		}
		if s.err = s.next(); s.err != nil {
			return 0, s.err
		}
	}
	n := copy(p, s.plain)
	s.plain = s.plain[n:]
	return n, nil
}

// CheckStream reads the sealed stream r to its end without opening it, as
// one who lacks its key can: it reports the key id, and fails with
// ErrTruncated if it was cut short (a start of a stream's header
// included), ErrCorrupt if its framing is wrong or it was extended.
// Only NewReader can tell that its chunks are intact.
func CheckStream(r io.Reader) (KeyID, error) {
	head := make([]byte, streamHeader)
	if n, err := io.ReadFull(r, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			if n >= len(StreamMagic) && IsSealedStream(head[:n]) {
				return KeyID{}, fmt.Errorf("in its header (%d bytes): %w", n, ErrTruncated)
			}
			return KeyID{}, ErrNotSealed
		}
		return KeyID{}, err
	}
	id, err := StreamKey(head)
	if err != nil {
		return id, err
	}
	var lenb [4]byte
	for n := 0; ; n++ {
		if _, err := io.ReadFull(r, lenb[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return id, fmt.Errorf("at chunk %d: %w", n, ErrTruncated)
			}
			return id, err
		}
		size := int64(binary.BigEndian.Uint32(lenb[:]))
		if size > chunkSize {
			return id, fmt.Errorf("sealed stream chunk %d of %d bytes: %w", n, size, ErrCorrupt)
		}
		if k, err := io.CopyN(io.Discard, r, size+tagSize); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return id, fmt.Errorf("in chunk %d (%d bytes of %d): %w", n, k, size+tagSize, ErrTruncated)
			}
			return id, err
		}
		if size < chunkSize {
			var one [1]byte
			if k, _ := io.ReadFull(r, one[:]); k > 0 {
				return id, fmt.Errorf("sealed stream has bytes after its last chunk: %w", ErrCorrupt)
			}
			return id, nil
		}
	}
}
