// Package backoff paces the attempts of an operation that is tried
// again: exponential waits from a base up to a cap, cut short when the
// context ends. It has no jitter: the waits are the same on every run.
package backoff

import (
	"context"
	"time"
)

// Policy is an exponential backoff: the wait after attempt n (counting
// from 0) is Base doubled n times, but never more than Max. The zero
// Policy does not wait.
type Policy struct {
	// Base is the wait after the first attempt.
	Base time.Duration
	// Max caps every wait; it should be Base times a power of two, so
	// that the waits double all the way up to it.
	Max time.Duration
}

// Delay returns the wait after attempt n (0 for the first attempt).
func (p Policy) Delay(n int) time.Duration {
	d := p.Base
	for i := 0; i < n && d < p.Max; i++ {
		if d > p.Max/2 {
			return p.Max // doubling would pass Max, or overflow
		}
		d *= 2
	}
	return min(d, p.Max)
}

// Wait waits Delay(n). It returns nil once the wait is over, or ctx's
// error if ctx ends first.
func (p Policy) Wait(ctx context.Context, n int) error {
	t := time.NewTimer(p.Delay(n))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Retry calls try until it succeeds, returns an error that retryable
// refuses, or ctx ends, waiting Delay between attempts. It returns nil on
// success, else try's last error, or ctx's error if try never ran
// because ctx had already ended.
func (p Policy) Retry(ctx context.Context, retryable func(error) bool, try func() error) error {
	var lastErr error
	for n := 0; ctx.Err() == nil; n++ {
		err := try()
		if err == nil {
			return nil
		}
		lastErr = err
		if !retryable(err) {
			return err
		}
		_ = p.Wait(ctx, n) // an end of ctx stops the loop
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return lastErr
}

// Always is the retryable of Retry that tries again after every error.
func Always(error) bool { return true }
