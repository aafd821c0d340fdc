package shell

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{"get a", []string{"get", "a"}, false},
		{"  put   k  v ", []string{"put", "k", "v"}, false},
		{`put "a b" 'c d'`, []string{"put", "a b", "c d"}, false},
		{`put k "say \"hi\""`, []string{"put", "k", `say "hi"`}, false},
		{`put k 'no \escapes'`, []string{"put", "k", `no \escapes`}, false},
		{`put a\ b c`, []string{"put", "a b", "c"}, false},
		{`put k ""`, []string{"put", "k", ""}, false},
		{"get a # comment", []string{"get", "a"}, false},
		{"get a#b", []string{"get", "a#b"}, false},
		{"# only a comment", nil, false},
		{`put "open`, nil, true},
		{`put 'open`, nil, true},
		{`put k \`, nil, true},
	}
	for _, tc := range tests {
		got, err := Split(tc.in)
		if tc.bad {
			require.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}
