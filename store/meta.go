package store

import (
	"encoding/binary"
	"encoding/json"

	"github.com/kvd-project/kvd"
)

// Meta key names; part of the on-disk format.
var (
	metaApplied   = []byte("applied")
	metaTerm      = []byte("applied_term")
	metaMap       = []byte("map")
	metaStateHash = []byte("state_hash")
	metaHashCheck = []byte("hash_check")
	// metaVersionBase is what the versions of the group's changes add to
	// their entry's index (0 until a move brings in keys of higher
	// versions; see version).
	metaVersionBase = []byte("version_base")
)

// be64 encodes a meta counter.
func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// u64 decodes a meta counter (0 if it is not 8 bytes).
func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// metaU64 reads a counter of the meta bucket (0 if absent).
func metaU64(meta bucket, key []byte) (uint64, error) {
	b, err := meta.get(key)
	if err != nil || b == nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, corruptf("meta %s: %d bytes, want 8", key, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// putMeta stores a sealed meta value.
func putMeta(meta bucket, key, val []byte) error {
	sealed, _ := seal(meta.keys, meta.tag, key, val)
	return meta.b.Put(key, sealed)
}

// storedMap reads the stored cluster map (nil if none).
func storedMap(meta bucket) (*kvd.Map, error) {
	b, err := meta.get(metaMap)
	if err != nil || b == nil {
		return nil, err
	}
	m := new(kvd.Map)
	if err := json.Unmarshal(b, m); err != nil {
		return nil, corruptf("decode stored cluster map: %v", err)
	}
	return m, nil
}
