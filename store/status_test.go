package store

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// The statuses and codes travel as JSON between nodes and are stored
// under idempotency keys: their encoding must never change.
func TestStatuses_JSONEncodingIsStable(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{DedupNew, `"new"`},
		{DedupExisting, `"existing"`},
		{DedupMismatch, `"mismatch"`},
		{DedupReleased, `"released"`},
		{TxnPending, `"pending"`},
		{TxnCommitted, `"committed"`},
		{TxnAborted, `"aborted"`},
		{TxnAbsent, `"absent"`},
		{CodeConflict, `"conflict"`},
		{CodeCompareFailed, `"compare_failed"`},
		{CodeNotANumber, `"not_a_number"`},
		{CodeExpired, `"expired"`},
		{CodeAborted, `"aborted"`},
		{CodeIdempotencyMismatch, `"idempotency_mismatch"`},
		{CodeInvalid, `"invalid"`},
		{DedupState{Status: DedupExisting, Txn: "t"}, `{"status":"existing","txn":"t"}`},
		{TxnOutcome{Code: CodeConflict, State: TxnAborted}, `{"vote":false,"code":"conflict","state":"aborted"}`},
	} {
		b, err := json.Marshal(tc.v)
		require.NoError(t, err)
		require.Equal(t, tc.want, string(b), "encoding of %#v", tc.v)
	}
}
