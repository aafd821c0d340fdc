package shell

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/client"
)

// Exit codes of kvcli.
const (
	ExitOK           = 0
	ExitError        = 1
	ExitUsage        = 2
	ExitNotFound     = 3
	ExitPrecondition = 4
	ExitUnavailable  = 5
	ExitUnknown      = 6
	// ExitDenied is a request the cluster refused for its token: none or
	// an unknown, revoked or expired one (401), or one without a grant
	// for what was asked (403). Nothing was done.
	ExitDenied = 7
)

// UsageError is a command used wrongly.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

// ExitCode maps an error to kvcli's exit code.
func ExitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue), errors.Is(err, kvd.ErrInvalid), errors.Is(err, kvd.ErrTooLarge):
		return ExitUsage
	case errors.Is(err, kvd.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, kvd.ErrPreconditionFailed), errors.Is(err, kvd.ErrCompareFailed), errors.Is(err, kvd.ErrConflict),
		errors.Is(err, kvd.ErrNotANumber), errors.Is(err, kvd.ErrIdempotencyMismatch):
		return ExitPrecondition
	case errors.Is(err, kvd.ErrUnknownOutcome):
		return ExitUnknown
	case errors.Is(err, kvd.ErrUnavailable), errors.Is(err, kvd.ErrWrongGroup), errors.Is(err, kvd.ErrInsufficientStorage):
		return ExitUnavailable
	case errors.Is(err, kvd.ErrUnauthenticated), errors.Is(err, kvd.ErrForbidden):
		return ExitDenied
	}
	return ExitError
}

// Explain turns an error into one line a person can act on.
func Explain(err error) string {
	var ue *UsageError
	var ce *client.Error
	var che *changeError
	var mf *moveFailedError
	var te *transferError
	change := errors.As(err, &che)
	detail := err.Error()
	if errors.As(err, &te) {
		detail = te.err.Error() // not the file's name again
	}
	if errors.As(err, &ce) {
		detail = ce.Message
	}
	look := "kvcli cluster"
	if change {
		if che.look != "" {
			look = che.look
		}
		if che.what != "" && errors.Is(err, kvd.ErrUnknownOutcome) && !strings.Contains(detail, che.what) {
			detail = che.what + ": " + detail
		}
	}
	// The category is said in words below: drop it from the detail (a
	// node's message starts with it where the node wrapped its sentinel).
	for _, sentinel := range []error{kvd.ErrNotFound, kvd.ErrPreconditionFailed, kvd.ErrUnavailable, kvd.ErrUnknownOutcome,
		kvd.ErrConflict, kvd.ErrInvalid, kvd.ErrTooLarge, kvd.ErrCompareFailed, kvd.ErrCompacted, kvd.ErrNotANumber, kvd.ErrIdempotencyMismatch,
		kvd.ErrOverloaded, kvd.ErrInsufficientStorage, kvd.ErrForbidden, kvd.ErrUnauthenticated} {
		detail = strings.TrimSuffix(detail, ": "+sentinel.Error())
		if errors.Is(err, sentinel) {
			detail = strings.TrimPrefix(detail, sentinel.Error()+": ")
		}
	}
	if ce != nil && ce.Node != "" {
		detail += " (answered by node " + ce.Node + ")"
	}
	switch {
	case errors.As(err, &ue):
		return ue.Msg
	case te != nil:
		return te.explain(detail)
	case errors.As(err, &mf):
		return "move failed, its slots stay where they were: " + detail
	case errors.Is(err, kvd.ErrNotFound):
		return "not found: " + detail
	case change && errors.Is(err, kvd.ErrConflict):
		return "refused, nothing was changed: " + detail
	case change && errors.Is(err, kvd.ErrUnknownOutcome):
		retry := "before retrying"
		if che.ifMade != "" {
			retry += " (if it was made, " + che.ifMade + ")"
		}
		return `outcome unknown: the change may or may not have been made; look with "` + look + `" ` + retry + ": " + detail
	case errors.Is(err, kvd.ErrCompareFailed):
		var te *client.TxnError
		if errors.As(err, &te) && len(te.Failed) > 0 {
			return fmt.Sprintf("not committed: compare %v did not hold; nothing was written", te.Failed)
		}
		return "not committed: a compare did not hold; nothing was written"
	case errors.Is(err, kvd.ErrPreconditionFailed):
		return "precondition failed, nothing was written: " + detail
	case errors.Is(err, kvd.ErrConflict):
		return "conflict: another transaction holds the key; nothing was written, try again: " + detail
	case errors.Is(err, kvd.ErrUnknownOutcome):
		return "outcome unknown: the write may or may not have been applied; read the key before retrying: " + detail
	case errors.Is(err, kvd.ErrOverloaded):
		return "overloaded, nothing was applied: " + detail + "; try again in a moment"
	case errors.Is(err, kvd.ErrUnavailable):
		return "unavailable, nothing was applied: " + detail + `; try again, or check the cluster with "kvcli health"`
	case errors.Is(err, kvd.ErrInsufficientStorage):
		return "insufficient storage, nothing was applied: " + detail + `; reads still work ("kvcli status" shows the disk)`
	case errors.Is(err, kvd.ErrUnauthenticated):
		return "not authenticated, nothing was done: " + detail + "; give a valid token with --token or KVD_TOKEN"
	case errors.Is(err, kvd.ErrForbidden):
		return "forbidden, nothing was done: " + detail + "; use a token whose grants cover it"
	case errors.Is(err, kvd.ErrTooLarge):
		return "too large: " + detail
	case errors.Is(err, kvd.ErrCompacted):
		return "compacted: " + detail
	case errors.Is(err, kvd.ErrNotANumber):
		return "not a number: " + detail
	case errors.Is(err, kvd.ErrIdempotencyMismatch):
		return "idempotency key reused for a different request: " + detail
	case errors.Is(err, kvd.ErrInvalid):
		return "invalid: " + detail
	}
	return detail
}
