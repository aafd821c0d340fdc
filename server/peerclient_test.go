package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// The one mapping of node-to-node answers to errors, per kind of call: a
// read, a proposal, and a coordinator's read (every refusal but
// not-leader is to be tried again).
func TestPeerCall_RefusalsMapToSentinels(t *testing.T) {
	read := peerCall{op: "ask", node: "n2"}
	write := peerCall{op: "propose at", node: "n2", write: true}
	retry := peerCall{op: "read at", node: "n2", retryRefusals: true}
	tests := []struct {
		call   peerCall
		status int
		want   error
	}{
		{read, 400, kvd.ErrInvalid},
		{read, 404, kvd.ErrNotFound},
		{read, 421, kvd.ErrWrongGroup},
		{read, 429, kvd.ErrOverloaded},
		{read, 507, kvd.ErrInsufficientStorage},
		{read, 403, kvd.ErrUnavailable},
		{read, 410, kvd.ErrUnavailable},
		{read, 500, kvd.ErrUnavailable},
		{write, 400, kvd.ErrInvalid},
		{write, 404, kvd.ErrInvalid},
		{write, 409, kvd.ErrInvalid},
		{write, 421, kvd.ErrWrongGroup},
		{write, 429, kvd.ErrOverloaded},
		{write, 507, kvd.ErrInsufficientStorage},
		{write, 403, kvd.ErrUnavailable},
		{write, 500, kvd.ErrUnknownOutcome},
		{write, 504, kvd.ErrUnknownOutcome},
		{retry, 400, kvd.ErrUnavailable},
		{retry, 404, kvd.ErrUnavailable},
		{retry, 421, kvd.ErrUnavailable},
		{retry, 507, kvd.ErrUnavailable},
		{retry, 500, kvd.ErrUnavailable},
	}
	for _, tc := range tests {
		err := tc.call.refused(&http.Response{StatusCode: tc.status, Status: http.StatusText(tc.status)}, []byte(`{"error":{"code":"x","message":"m"}}`))
		require.ErrorIs(t, err, tc.want, "%s, status %d: %v", tc.call.op, tc.status, err)
		if tc.want == kvd.ErrUnavailable {
			require.False(t, errors.Is(err, kvd.ErrWrongGroup) || errors.Is(err, kvd.ErrInvalid), "%s, status %d: %v", tc.call.op, tc.status, err)
		}
	}
	for _, c := range []peerCall{read, write, retry} {
		err := c.refused(&http.Response{StatusCode: 503}, []byte(`{"error":{"code":"unavailable","leader":"n3"}}`))
		require.Equal(t, "n3", kvd.LeaderHint(err), "a not-leader answer names the leader, for every call")
		require.ErrorIs(t, err, kvd.ErrNotLeader)
	}
}

// A result's error travels between nodes as one of the codes every
// version reads, and decodes to its sentinel.
func TestResult_ErrorsTravelAsCodesEveryVersionReads(t *testing.T) {
	tests := []struct {
		err  error
		code string
		want error
	}{
		{fmt.Errorf("x: %w", kvd.ErrPreconditionFailed), "precondition_failed", kvd.ErrPreconditionFailed},
		{kvd.ErrConflict, "conflict", kvd.ErrConflict},
		{kvd.ErrIdempotencyMismatch, "idempotency_mismatch", kvd.ErrIdempotencyMismatch},
		{kvd.ErrWrongGroup, "wrong_group", kvd.ErrWrongGroup},
		{kvd.ErrTooLarge, "too_large", kvd.ErrTooLarge},
		{kvd.ErrInvalid, "invalid", kvd.ErrInvalid},
		{kvd.ErrNotANumber, "invalid", kvd.ErrInvalid},
		{errors.New("anything else"), "invalid", kvd.ErrInvalid},
	}
	for _, tc := range tests {
		b, err := encodeResult(store.Result{Version: 7, Err: tc.err})
		require.NoError(t, err)
		var w wireResult
		require.NoError(t, json.Unmarshal(b, &w))
		require.Equal(t, tc.code, w.Err, "%v", tc.err)
		r, err := decodeResult(b)
		require.NoError(t, err)
		require.ErrorIs(t, r.Err, tc.want, "%v", tc.err)
		require.EqualValues(t, 7, r.Version)
	}
}
