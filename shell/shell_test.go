package shell

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
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

func TestExitCodes(t *testing.T) {
	tests := []struct {
		err  error
		code int
	}{
		{nil, ExitOK},
		{usagef("x"), ExitUsage},
		{fmt.Errorf("get: %w", kvd.ErrNotFound), ExitNotFound},
		{fmt.Errorf("put: %w", kvd.ErrPreconditionFailed), ExitPrecondition},
		{&client.TxnError{Err: &client.Error{Code: "compare_failed"}}, ExitPrecondition},
		{&client.Error{Code: "conflict"}, ExitPrecondition},
		{fmt.Errorf("x: %w", kvd.ErrUnavailable), ExitUnavailable},
		{&client.Error{Code: "unknown_outcome"}, ExitUnknown},
		{fmt.Errorf("%w: %w", kvd.ErrUnknownOutcome, &client.Error{Code: "internal"}), ExitUnknown},
		{fmt.Errorf("boom"), ExitError},
	}
	for _, tc := range tests {
		require.Equal(t, tc.code, ExitCode(tc.err), "%v", tc.err)
		if tc.err != nil {
			require.NotEmpty(t, Explain(tc.err))
		}
	}
	require.Contains(t, Explain(&client.Error{Code: "unknown_outcome", Message: "m"}), "may or may not have been applied")
}

func TestShowValue(t *testing.T) {
	require.Equal(t, "plain text", showValue([]byte("plain text")))
	require.Equal(t, "ünïcode\twith tab", showValue([]byte("ünïcode\twith tab")))
	require.Equal(t, `"\x00\x01"`, showValue([]byte{0, 1}))
	require.Equal(t, `"\xff"`, showValue([]byte{0xff}))
	require.Equal(t, "a…", cell([]byte("abc"), 2))
}
