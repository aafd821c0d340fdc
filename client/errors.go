package client

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Error is an error answer from a node. It matches the kvd sentinel error
// of its code under errors.Is.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code is the contract's error code, e.g. "precondition_failed".
	Code string
	// Message is the node's explanation.
	Message string
	// Node is the id of the node that answered.
	Node string
	// Leader is the leader the node named, if any.
	Leader string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Node != "" {
		return fmt.Sprintf("%s (node %s): %s", e.Code, e.Node, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the sentinel error of the code.
func (e *Error) Unwrap() error { return sentinel(e.Code) }

func sentinel(code string) error {
	switch code {
	case api.CodeInvalidRequest, api.CodeMethodNotAllowed:
		return kvd.ErrInvalid
	case api.CodeNotFound:
		return kvd.ErrNotFound
	case api.CodeTooLarge:
		return kvd.ErrTooLarge
	case api.CodePreconditionFailed:
		return kvd.ErrPreconditionFailed
	case api.CodeCompareFailed:
		return kvd.ErrCompareFailed
	case api.CodeConflict:
		return kvd.ErrConflict
	case api.CodeNotANumber:
		return kvd.ErrNotANumber
	case api.CodeCompacted:
		return kvd.ErrCompacted
	case api.CodeWrongGroup:
		return kvd.ErrWrongGroup
	case api.CodeIdempotencyMismatch:
		return kvd.ErrIdempotencyMismatch
	case api.CodeUnavailable:
		return kvd.ErrUnavailable
	case api.CodeUnknownOutcome:
		return kvd.ErrUnknownOutcome
	case api.CodeOverloaded:
		return kvd.ErrOverloaded
	case api.CodeInsufficientStorage:
		return kvd.ErrInsufficientStorage
	case api.CodeForbidden:
		return kvd.ErrForbidden
	case api.CodeHeadersTooLarge:
		return kvd.ErrTooLarge
	case api.CodeNotImplemented:
		return kvd.ErrInvalid
	}
	return nil
}

// errorFrom decodes an error answer.
func errorFrom(status int, hdr http.Header, body []byte) *Error {
	var e api.Error
	if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		e.Error.Code = codeOfStatus(status)
		e.Error.Message = http.StatusText(status)
	}
	return &Error{Status: status, Code: e.Error.Code, Message: e.Error.Message, Node: hdr.Get(api.HeaderNode),
		Leader: firstNonEmpty(hdr.Get(api.HeaderLeader), e.Error.Leader)}
}

func codeOfStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return api.CodeInvalidRequest
	case http.StatusNotFound:
		return api.CodeNotFound
	case http.StatusRequestEntityTooLarge:
		return api.CodeTooLarge
	case http.StatusPreconditionFailed:
		return api.CodePreconditionFailed
	case http.StatusMisdirectedRequest:
		return api.CodeWrongGroup
	case http.StatusServiceUnavailable:
		return api.CodeUnavailable
	case http.StatusGatewayTimeout:
		return api.CodeUnknownOutcome
	case http.StatusTooManyRequests:
		return api.CodeOverloaded
	case http.StatusInsufficientStorage:
		return api.CodeInsufficientStorage
	case http.StatusForbidden:
		return api.CodeForbidden
	}
	return api.CodeInternal
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
