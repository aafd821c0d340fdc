package shell

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
)

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
		{&client.Error{Code: "unauthenticated"}, ExitDenied},
		{fmt.Errorf("fetch cluster map: %w", &client.Error{Code: "forbidden"}), ExitDenied},
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
