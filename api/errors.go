package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/kvd-project/kvd"
)

// Error codes of the contract. Codes lists each with its HTTP status and
// the sentinel error it stands for.
const (
	CodeInvalidRequest      = "invalid_request"
	CodeNotFound            = "not_found"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeTooLarge            = "too_large"
	CodePreconditionFailed  = "precondition_failed"
	CodeCompareFailed       = "compare_failed"
	CodeConflict            = "conflict"
	CodeNotANumber          = "not_a_number"
	CodeCompacted           = "compacted"
	CodeWrongGroup          = "wrong_group"
	CodeIdempotencyMismatch = "idempotency_mismatch"
	CodeInternal            = "internal"
	CodeUnavailable         = "unavailable"
	CodeUnknownOutcome      = "unknown_outcome"
	CodeForbidden           = "forbidden"
	CodeUnauthenticated     = "unauthenticated"
	CodeOverloaded          = "overloaded"
	CodeInsufficientStorage = "insufficient_storage"
	CodeHeadersTooLarge     = "headers_too_large"
	CodeNotImplemented      = "not_implemented"
)

// ErrorCode ties an error code of the contract to its HTTP status and to
// the sentinel error of package kvd it stands for.
type ErrorCode struct {
	// Code is the code in the JSON error body.
	Code string
	// Status is the HTTP status every answer with this code carries.
	Status int
	// Err is the sentinel error the code stands for: an error that
	// matches it under errors.Is is answered with this code, and a
	// client that receives the code returns an error matching it.
	Err error
}

// Codes is the one table of error codes: every layer that turns an error
// into a code or a status, or a code or a status back into an error,
// reads it. The order matters where one sentinel error matches another
// under errors.Is: kvd.ErrOverloaded also matches kvd.ErrUnavailable, so
// it comes first; the first entry whose error matches wins. The last
// entries name codes that no sentinel error produces, for decoding.
var Codes = []ErrorCode{
	{CodeInvalidRequest, http.StatusBadRequest, kvd.ErrInvalid},
	{CodeNotFound, http.StatusNotFound, kvd.ErrNotFound},
	{CodeTooLarge, http.StatusRequestEntityTooLarge, kvd.ErrTooLarge},
	{CodePreconditionFailed, http.StatusPreconditionFailed, kvd.ErrPreconditionFailed},
	{CodeCompareFailed, http.StatusConflict, kvd.ErrCompareFailed},
	{CodeConflict, http.StatusConflict, kvd.ErrConflict},
	{CodeNotANumber, http.StatusConflict, kvd.ErrNotANumber},
	{CodeCompacted, http.StatusGone, kvd.ErrCompacted},
	{CodeWrongGroup, http.StatusMisdirectedRequest, kvd.ErrWrongGroup},
	{CodeIdempotencyMismatch, http.StatusUnprocessableEntity, kvd.ErrIdempotencyMismatch},
	{CodeForbidden, http.StatusForbidden, kvd.ErrForbidden},
	{CodeUnauthenticated, http.StatusUnauthorized, kvd.ErrUnauthenticated},
	{CodeInsufficientStorage, http.StatusInsufficientStorage, kvd.ErrInsufficientStorage},
	{CodeUnknownOutcome, http.StatusGatewayTimeout, kvd.ErrUnknownOutcome},
	{CodeOverloaded, http.StatusTooManyRequests, kvd.ErrOverloaded},
	{CodeUnavailable, http.StatusServiceUnavailable, kvd.ErrUnavailable},
	{CodeUnavailable, http.StatusServiceUnavailable, kvd.ErrClosed},
	// Refusals the HTTP layer makes before any sentinel error exists.
	{CodeMethodNotAllowed, http.StatusMethodNotAllowed, kvd.ErrInvalid},
	{CodeHeadersTooLarge, http.StatusRequestHeaderFieldsTooLarge, kvd.ErrTooLarge},
	{CodeNotImplemented, http.StatusNotImplemented, kvd.ErrInvalid},
	{CodeInternal, http.StatusInternalServerError, nil},
}

// CodeOf returns the entry of Codes for err: the first whose error err
// matches. A context's deadline or cancellation that reached no
// sentinel error means the outcome is unknown for a write (write true:
// it may have been proposed) and only unavailable for a read. Anything
// else is internal.
func CodeOf(err error, write bool) ErrorCode {
	for _, c := range Codes {
		if c.Err != nil && errors.Is(err, c.Err) {
			return c
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if write {
			return byCode[CodeUnknownOutcome]
		}
		return byCode[CodeUnavailable]
	}
	return byCode[CodeInternal]
}

// ErrOfCode returns the sentinel error code stands for, or nil for
// internal and unknown codes.
func ErrOfCode(code string) error { return byCode[code].Err }

// CodeOfStatus returns the code an answer with HTTP status carries when
// its body names none (a proxy's answer, say): the one code of that
// status, or internal where several codes share it (409) or none has it.
func CodeOfStatus(status int) string {
	if c, ok := byStatus[status]; ok {
		return c
	}
	return CodeInternal
}

var byCode, byStatus = indexCodes()

func indexCodes() (map[string]ErrorCode, map[int]string) {
	codes := map[string]ErrorCode{}
	statuses := map[int]string{}
	shared := map[int]bool{}
	for _, c := range Codes {
		if _, ok := codes[c.Code]; !ok {
			codes[c.Code] = c
		}
		if prev, ok := statuses[c.Status]; ok && prev != c.Code {
			shared[c.Status] = true
		}
		statuses[c.Status] = c.Code
	}
	for s := range shared {
		delete(statuses, s)
	}
	return codes, statuses
}
