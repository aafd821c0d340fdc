package kvd

import (
	"hash/crc32"
	"strings"
)

// SlotCount is the number of hash slots keys are spread over.
const SlotCount = 1024

// Slot returns the hash slot of key: crc32 (IEEE) of the key modulo
// SlotCount, or, when the key has a non-empty hash tag (the text between its
// first '{' and the first '}' after it), of the tag alone. Keys that share a
// tag share a slot, and therefore a group.
func Slot(key string) int {
	h := key
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			h = key[i+1 : i+1+j]
		}
	}
	// CRC-32 (IEEE) over the string byte by byte: keys are short, and
	// converting to []byte would allocate on every routed request.
	crc := ^uint32(0)
	for i := 0; i < len(h); i++ {
		crc = crc32.IEEETable[byte(crc)^h[i]] ^ (crc >> 8)
	}
	sum := ^crc
	return int(sum % SlotCount)
}
