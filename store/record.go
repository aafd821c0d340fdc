package store

import (
	"encoding/binary"

	"github.com/kvd-project/kvd"
)

// recordFormat is the first byte of every stored value record.
const recordFormat = 0x02

// encodeRecord builds a stored value record: format byte, version,
// expiry (Unix ns, 0: never), value.
func encodeRecord(ver uint64, expires int64, val []byte) []byte {
	rec := make([]byte, recordHeader+len(val))
	rec[0] = recordFormat
	binary.BigEndian.PutUint64(rec[1:9], ver)
	binary.BigEndian.PutUint64(rec[9:17], uint64(expires))
	copy(rec[recordHeader:], val)
	return rec
}

// recordHeader is the size of a record before its value.
const recordHeader = 17

// version returns the version of a stored record, 0 for none.
func version(rec []byte) uint64 {
	if len(rec) < recordHeader {
		return 0
	}
	return binary.BigEndian.Uint64(rec[1:9])
}

// recExpires returns when a record expires (Unix ns), 0 for never.
func recExpires(rec []byte) int64 {
	if len(rec) < recordHeader {
		return 0
	}
	return int64(binary.BigEndian.Uint64(rec[9:17]))
}

// recValue returns a record's value; it aliases the record.
func recValue(rec []byte) []byte {
	if len(rec) < recordHeader {
		return nil
	}
	return rec[recordHeader:]
}

// decodeItem copies a record out of bbolt's memory.
func decodeItem(k, rec []byte) kvd.Item {
	return kvd.Item{Key: string(k), Version: version(rec), Value: append([]byte{}, recValue(rec)...)}
}
