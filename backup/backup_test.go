package backup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sample writes a backup of n records, some with expiry and some larger
// than a data chunk's target, so the file has several chunks.
func sample(t *testing.T, n int) ([]byte, []Record) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{Created: time.Unix(1700000000, 0).UTC(), Epoch: 7, Groups: []GroupCut{{Group: 1, Index: 42}}})
	require.NoError(t, err)
	var recs []Record
	for i := 0; i < n; i++ {
		r := Record{Key: fmt.Sprintf("key/%05d", i), Value: bytes.Repeat([]byte{byte(i)}, i%7*97)}
		if i%3 == 0 {
			r.Expires = int64(1e18) + int64(i)
		}
		if i == n/2 {
			r.Value = bytes.Repeat([]byte("big"), 600_000) // > one chunk
		}
		recs = append(recs, r)
		require.NoError(t, w.Add(r))
	}
	s, err := w.Close()
	require.NoError(t, err)
	require.Equal(t, uint64(n), s.Keys)
	require.Len(t, s.SHA256, 64)
	return buf.Bytes(), recs
}

func TestRoundTrip(t *testing.T) {
	file, recs := sample(t, 3000)
	r, err := NewReader(bytes.NewReader(file))
	require.NoError(t, err)
	require.Equal(t, Version, r.Header().Format)
	require.Equal(t, uint64(42), r.Header().Groups[0].Index)
	for i := 0; ; i++ {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			require.Equal(t, len(recs), i)
			break
		}
		require.NoError(t, err)
		require.Equal(t, recs[i].Key, rec.Key)
		require.Equal(t, len(recs[i].Value), len(rec.Value))
		require.True(t, bytes.Equal(recs[i].Value, rec.Value))
		require.Equal(t, recs[i].Expires, rec.Expires)
	}
	s, ok := r.Summary()
	require.True(t, ok)
	require.Greater(t, s.Chunks, uint64(3))
}

func TestEmptyBackupRoundTrips(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{})
	require.NoError(t, err)
	_, err = w.Close()
	require.NoError(t, err)
	_, s, err := Verify(bytes.NewReader(buf.Bytes()))
	require.NoError(t, err)
	require.Zero(t, s.Keys)
}

// Every cut of the file short of its end is refused as truncated, and
// every flipped byte is refused: no damage passes.
func TestDamageIsRefused(t *testing.T) {
	file, _ := sample(t, 200)
	for n := 0; n < len(file); n += 1 + n/50 {
		_, _, err := Verify(bytes.NewReader(file[:n]))
		require.Error(t, err, "cut at %d", n)
		if n == 0 {
			require.ErrorIs(t, err, ErrEmpty)
		} else if n >= len(Magic) {
			require.ErrorIs(t, err, ErrTruncated, "cut at %d", n)
		}
	}
	for i := 0; i < len(file); i += 1 + i/40 {
		bad := bytes.Clone(file)
		bad[i] ^= 0x5a
		_, _, err := Verify(bytes.NewReader(bad))
		require.Error(t, err, "byte %d flipped", i)
	}
	_, _, err := Verify(bytes.NewReader(append(bytes.Clone(file), 0)))
	require.ErrorIs(t, err, ErrCorrupt, "a byte after the end")
}

func TestWrongVersionAndNotABackup(t *testing.T) {
	file, _ := sample(t, 5)
	bad := bytes.Clone(file)
	binary.BigEndian.PutUint16(bad[len(Magic):], Version+1)
	_, _, err := Verify(bytes.NewReader(bad))
	require.ErrorIs(t, err, ErrVersion)
	require.Contains(t, err.Error(), "version 2")

	_, _, err = Verify(bytes.NewReader([]byte("{\"hello\": \"world\"}\n")))
	require.ErrorIs(t, err, ErrNotBackup)
	_, _, err = Verify(bytes.NewReader(nil))
	require.ErrorIs(t, err, ErrEmpty)
}

// A damaged length field must not make the reader allocate what the
// file does not hold.
func TestHugeLengthIsNotAllocated(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(Magic)
	buf.Write([]byte{0, Version, 0, 0})
	buf.Write([]byte{ChunkHeader, 0x3f, 0xff, 0xff, 0xff, '{', '}'})
	_, _, err := Verify(&buf)
	require.ErrorIs(t, err, ErrTruncated)
}

func TestDecodeRecordsRefusesGarbage(t *testing.T) {
	p := AppendRecord(nil, Record{Key: "k", Value: []byte("v")})
	for n := 1; n < len(p); n++ {
		require.ErrorIs(t, DecodeRecords(p[:n], func(Record) error { return nil }), ErrCorrupt, "cut at %d", n)
	}
}

// A reader that knows the largest record it takes refuses a larger
// chunk as damaged, before reading it.
func TestReaderLimitRefusesLargeChunks(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{})
	require.NoError(t, err)
	require.NoError(t, w.Add(Record{Key: "big", Value: bytes.Repeat([]byte{1}, 3<<20)}))
	_, err = w.Close()
	require.NoError(t, err)
	_, _, err = VerifyLimit(bytes.NewReader(buf.Bytes()), 2<<20)
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), "at most")
	_, _, err = VerifyLimit(bytes.NewReader(buf.Bytes()), 5<<20)
	require.NoError(t, err)
}

// Records are decoded one at a time: a chunk of many tiny records costs
// its bytes, not a structure per record.
func TestReaderDecodesRecordsOneAtATime(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{})
	require.NoError(t, err)
	for i := 0; i < 200000; i++ {
		require.NoError(t, w.Add(Record{Key: "k"}))
	}
	_, err = w.Close()
	require.NoError(t, err)
	r, err := NewReader(bytes.NewReader(buf.Bytes()))
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n := 0
	for {
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		n++
	}
	runtime.ReadMemStats(&after)
	require.Equal(t, 200000, n)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(8<<20), "allocated while reading")
}
