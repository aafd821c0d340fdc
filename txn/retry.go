package txn

import (
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
	// awaitBackoff paces a repeat's looks at the outcome of the first
	// attempt under its idempotency key: the first look waits nothing,
	// the next 40 ms (Delay(1)), doubling, up to 320 ms.
	awaitBackoff = backoff.Policy{Base: 20 * time.Millisecond, Max: 320 * time.Millisecond}
)
