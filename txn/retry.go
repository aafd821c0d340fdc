package txn

import (
	"context"
	"time"
)

// retrying calls try until it succeeds, returns an error that retry
// refuses, or ctx ends, backing off between attempts. It returns try's
// last error, or ctx's if try never ran.
func retrying(ctx context.Context, retry func(error) bool, try func() error) error {
	var lastErr error
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := try()
		if err == nil {
			return nil
		}
		lastErr = err
		if !retry(err) {
			return err
		}
		select {
		case <-time.After(time.Duration(10<<min(attempt, 5)) * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return lastErr
}

// always retries every error.
func always(error) bool { return true }
