package txn

import (
	"context"
	"time"

	"github.com/kvd-project/kvd/internal/backoff"
)

// The coordinator's paces between attempts.
var (
	// retryBackoff paces the commands retried until they are applied: a
	// decision, a resolution, an idempotent outcome. 10 ms, doubling, up
	// to 320 ms.
	retryBackoff = backoff.Policy{Base: 10 * time.Millisecond, Max: 320 * time.Millisecond}
	// lockWaitBackoff paces a one-phase transaction's retries while
	// another transaction's locks refuse it (for at most LockWait):
	// 5 ms, doubling, up to 80 ms.
	lockWaitBackoff = backoff.Policy{Base: 5 * time.Millisecond, Max: 80 * time.Millisecond}
)

// retrying calls try until it succeeds, returns an error that retry
// refuses, or ctx ends, waiting retryBackoff between attempts. It returns
// try's last error, or ctx's if try never ran.
func retrying(ctx context.Context, retry func(error) bool, try func() error) error {
	return retryBackoff.Retry(ctx, retry, try)
}

// always retries every error.
var always = backoff.Always
