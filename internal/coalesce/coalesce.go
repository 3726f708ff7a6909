// Package coalesce turns a burst of changes into one delivery: each change
// pokes a channel of capacity one (a poke on a full channel is dropped, it
// already says "something changed"); the consumer waits out a window, takes
// the pokes made in it, then delivers once what it reads then.
package coalesce

import (
	"context"
	"time"
)

// Settle waits out window, then takes the pokes made in it (their changes
// are in the delivery that follows). It returns false if ctx ended first.
func Settle(ctx context.Context, window time.Duration, dirty <-chan struct{}) bool {
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
	}
	Drain(dirty)
	return true
}

// Drain takes a pending poke, if any.
func Drain(dirty <-chan struct{}) {
	select {
	case <-dirty:
	default:
	}
}
