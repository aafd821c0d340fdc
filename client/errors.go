package client

import (
	"encoding/json"
	"fmt"
	"net/http"

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

func sentinel(code string) error { return api.ErrOfCode(code) }

// errorFrom decodes an error answer.
func errorFrom(status int, hdr http.Header, body []byte) *Error {
	var e api.Error
	if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		e.Error.Code = api.CodeOfStatus(status)
		e.Error.Message = http.StatusText(status)
	}
	return &Error{Status: status, Code: e.Error.Code, Message: e.Error.Message, Node: hdr.Get(api.HeaderNode),
		Leader: firstNonEmpty(hdr.Get(api.HeaderLeader), e.Error.Leader)}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
