package server

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// A node over its mark that then goes idle comes back under it: with no
// collection since, the sample forces one rather than read the live heap
// the last one measured, which held memory since let go.
func TestMemPressure_AnIdleNodeComesBackUnderItsMark(t *testing.T) {
	runtime.GC()
	base, _, ok := readHeap()
	require.True(t, ok)
	p := &memPressure{high: base + 64<<20}
	held := make([][]byte, 128) // 128 MiB, live
	for i := range held {
		held[i] = make([]byte, 1<<20)
		held[i][0] = 1
	}
	runtime.GC()
	p.sample()
	require.True(t, p.underPressure(), "over the mark while the memory is held")
	runtime.KeepAlive(held)
	held = nil
	// No allocation of note since: the collector does not run by itself.
	p.sample()
	require.False(t, p.underPressure(), "back under the mark once the memory is let go")
}
