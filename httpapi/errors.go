package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// statusOf maps an error to its HTTP status and error code. write tells
// whether the request could have changed state: a bare timeout on a write
// has an unknown outcome, on a read it only means unavailable.
func statusOf(err error, write bool) (int, string) {
	switch {
	case errors.Is(err, kvd.ErrInvalid):
		return http.StatusBadRequest, api.CodeInvalidRequest
	case errors.Is(err, kvd.ErrNotFound):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, kvd.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.Is(err, kvd.ErrPreconditionFailed):
		return http.StatusPreconditionFailed, api.CodePreconditionFailed
	case errors.Is(err, kvd.ErrCompareFailed):
		return http.StatusConflict, api.CodeCompareFailed
	case errors.Is(err, kvd.ErrConflict):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, kvd.ErrNotANumber):
		return http.StatusConflict, api.CodeNotANumber
	case errors.Is(err, kvd.ErrCompacted):
		return http.StatusGone, api.CodeCompacted
	case errors.Is(err, kvd.ErrWrongGroup):
		return http.StatusMisdirectedRequest, api.CodeWrongGroup
	case errors.Is(err, kvd.ErrIdempotencyMismatch):
		return http.StatusUnprocessableEntity, api.CodeIdempotencyMismatch
	case errors.Is(err, kvd.ErrUnknownOutcome):
		return http.StatusGatewayTimeout, api.CodeUnknownOutcome
	case errors.Is(err, kvd.ErrUnavailable), errors.Is(err, kvd.ErrClosed):
		return http.StatusServiceUnavailable, api.CodeUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		if write {
			return http.StatusGatewayTimeout, api.CodeUnknownOutcome
		}
		return http.StatusServiceUnavailable, api.CodeUnavailable
	}
	return http.StatusInternalServerError, api.CodeInternal
}

// writeError answers with the JSON error body of the contract.
func writeError(w http.ResponseWriter, err error, write bool) {
	status, code := statusOf(err, write)
	detail := api.ErrorDetail{Code: code, Message: err.Error()}
	var nl *kvd.NotLeaderError
	if errors.As(err, &nl) {
		detail.Leader = nl.Leader
		detail.Group = uint64(nl.Group)
		w.Header().Set(api.HeaderLeader, nl.Leader)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, api.Error{Error: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encode response"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
