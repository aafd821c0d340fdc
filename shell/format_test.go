package shell

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestShowValue(t *testing.T) {
	require.Equal(t, "plain text", showValue([]byte("plain text")))
	require.Equal(t, "ünïcode\twith tab", showValue([]byte("ünïcode\twith tab")))
	require.Equal(t, `"\x00\x01"`, showValue([]byte{0, 1}))
	require.Equal(t, `"\xff"`, showValue([]byte{0xff}))
	require.Equal(t, "a…", cell([]byte("abc"), 2))
}
