// Package damage damages files on purpose, for tests of what a replica
// does with corrupt data.
package damage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
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

// Holding returns the files under dirs whose bytes contain pattern (to
// check that a value is nowhere on disk), and how many files it read. A
// file removed while it walks is skipped.
func Holding(t testing.TB, pattern string, dirs ...string) (holding []string, read int) {
	t.Helper()
	for _, dir := range dirs {
		require.NoError(t, filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				return nil // a temporary file gone meanwhile
			}
			if err != nil {
				return err
			}
			read++
			if bytes.Contains(b, []byte(pattern)) {
				holding = append(holding, path)
			}
			return nil
		}))
	}
	return holding, read
}
