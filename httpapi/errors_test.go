package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

func TestStatusOf_MapsEveryContractError(t *testing.T) {
	tests := []struct {
		err    error
		write  bool
		status int
		code   string
	}{
		{kvd.ErrInvalid, false, 400, api.CodeInvalidRequest},
		{kvd.ErrNotFound, false, 404, api.CodeNotFound},
		{kvd.ErrTooLarge, true, 413, api.CodeTooLarge},
		{kvd.ErrPreconditionFailed, true, 412, api.CodePreconditionFailed},
		{kvd.ErrCompareFailed, true, 409, api.CodeCompareFailed},
		{kvd.ErrConflict, true, 409, api.CodeConflict},
		{kvd.ErrNotANumber, true, 409, api.CodeNotANumber},
		{kvd.ErrCompacted, false, 410, api.CodeCompacted},
		{kvd.ErrWrongGroup, false, 421, api.CodeWrongGroup},
		{kvd.ErrIdempotencyMismatch, true, 422, api.CodeIdempotencyMismatch},
		{kvd.ErrUnavailable, true, 503, api.CodeUnavailable},
		{&kvd.NotLeaderError{Group: 1, Leader: "n2"}, true, 503, api.CodeUnavailable},
		{kvd.ErrClosed, false, 503, api.CodeUnavailable},
		{kvd.ErrUnknownOutcome, true, 504, api.CodeUnknownOutcome},
		{context.DeadlineExceeded, true, 504, api.CodeUnknownOutcome},
		{context.DeadlineExceeded, false, 503, api.CodeUnavailable},
		{errors.New("boom"), false, 500, api.CodeInternal},
		// Wrapping keeps the mapping.
		{fmt.Errorf("put: %w", kvd.ErrPreconditionFailed), true, 412, api.CodePreconditionFailed},
	}
	for _, tc := range tests {
		status, code := statusOf(tc.err, tc.write)
		require.Equal(t, tc.status, status, "%v", tc.err)
		require.Equal(t, tc.code, code, "%v", tc.err)
	}
}

func TestWriteError_NamesLeaderAndRetryAfter(t *testing.T) {
	rec := httptest.NewRecorder()
	writeError(rec, &kvd.NotLeaderError{Group: 3, Leader: "n2"}, true)
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "n2", rec.Header().Get(api.HeaderLeader))
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	require.JSONEq(t, `{"error":{"code":"unavailable","message":"group 3: not the leader, the leader is n2","leader":"n2","group":3}}`, rec.Body.String())
}

func TestParseETagAndConditions(t *testing.T) {
	for in, want := range map[string]uint64{`"5"`: 5, `5`: 5, `W/"7"`: 7, ` "9" `: 9} {
		v, err := parseETag(in)
		require.NoError(t, err, in)
		require.Equal(t, want, v, in)
	}
	for _, bad := range []string{`"x"`, `"1", "2"`, ``, `-1`} {
		_, err := parseETag(bad)
		require.ErrorIs(t, err, kvd.ErrInvalid, bad)
	}
	cases := []struct {
		im, inm string
		want    kvd.Cond
		bad     bool
	}{
		{"", "", kvd.Cond{}, false},
		{`"4"`, "", kvd.Cond{Kind: kvd.CondVersionEq, Version: 4}, false},
		{"*", "", kvd.Cond{Kind: kvd.CondExists}, false},
		{"", "*", kvd.Cond{Kind: kvd.CondVersionEq, Version: 0}, false},
		{"", `"4"`, kvd.Cond{Kind: kvd.CondVersionNe, Version: 4}, false},
		{`"4"`, "*", kvd.Cond{}, true},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodPut, "/v1/kv/k", nil)
		if tc.im != "" {
			r.Header.Set("If-Match", tc.im)
		}
		if tc.inm != "" {
			r.Header.Set("If-None-Match", tc.inm)
		}
		c, err := condOf(r)
		if tc.bad {
			require.ErrorIs(t, err, kvd.ErrInvalid)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tc.want, c)
	}
}

// The hand-written PUT answer is byte for byte what encoding/json writes.
func TestWriteVersion_MatchesWriteJSON(t *testing.T) {
	for _, v := range []uint64{0, 5, 1 << 40, ^uint64(0)} {
		a, b := httptest.NewRecorder(), httptest.NewRecorder()
		writeVersion(a, v)
		writeJSON(b, http.StatusOK, api.PutResponse{Version: v})
		require.Equal(t, b.Body.String(), a.Body.String())
		require.Equal(t, b.Header(), a.Header())
		require.Equal(t, http.StatusOK, a.Code)
	}
}

// A body shorter than its Content-Length (a client that hung up half way)
// is an error, never a shorter value.
func TestReadBody_ShortBodyIsAnError(t *testing.T) {
	h := &Handler{}
	r := httptest.NewRequest(http.MethodPut, "/v1/kv/k", strings.NewReader("12345"))
	r.ContentLength = 10
	_, err := h.readBody(httptest.NewRecorder(), r, 100)
	require.ErrorIs(t, err, kvd.ErrInvalid)
	require.ErrorContains(t, err, "shorter")

	r = httptest.NewRequest(http.MethodPut, "/v1/kv/k", strings.NewReader("12345"))
	body, err := h.readBody(httptest.NewRecorder(), r, 100)
	require.NoError(t, err)
	require.Equal(t, "12345", string(body))
	r = httptest.NewRequest(http.MethodPut, "/v1/kv/k", strings.NewReader("12345"))
	r.ContentLength = -1 // chunked
	body, err = h.readBody(httptest.NewRecorder(), r, 100)
	require.NoError(t, err)
	require.Equal(t, "12345", string(body))
	r = httptest.NewRequest(http.MethodPut, "/v1/kv/k", strings.NewReader(""))
	body, err = h.readBody(httptest.NewRecorder(), r, 100)
	require.NoError(t, err)
	require.Empty(t, body)
}
