// Package damage damages files on purpose, for tests of what a replica
// does with corrupt data.
package damage

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// Flip flips a bit in the middle of every occurrence of pattern in the
// file at path (bbolt may keep older copies of a page, so there can be
// several), and returns how many it damaged.
func Flip(t testing.TB, path, pattern string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	n := 0
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte(pattern))
		if j < 0 {
			break
		}
		b[i+j+len(pattern)/2] ^= 0x20
		n++
		i += j + len(pattern)
	}
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return n
}
