// Package ctxtime holds the waits that watch a context, for the packages whose loops pause.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits d or until ctx ends; it returns ctx's cause if ctx ended first (or had ended).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
