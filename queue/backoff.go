package queue

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Tuned delays of the retry schedules in this package.
const (
	// reconnectInitial and reconnectMax bound the wait between attempts to reach NATS; nats.go
	// adds its jitter on top.
	reconnectInitial = 250 * time.Millisecond
	reconnectMax     = 10 * time.Second
	// publishRetryInitial and publishRetryMax bound the wait before a Publisher sends failed
	// publishes again: short, since a publish usually fails for a moment (a leader election).
	publishRetryInitial = 100 * time.Millisecond
	publishRetryMax     = 5 * time.Second
)

// nthDelay is the delay before attempt n (from 1) of an exponential schedule that doubles
// from initial up to ceiling, without jitter: the n-th NextBackOff of a fresh
// backoff.ExponentialBackOff. It is for callers that count attempts themselves (nats.go's
// reconnect handler, the Publisher's batches) rather than run a retry loop.
func nthDelay(initial, ceiling time.Duration, n int) time.Duration {
	b := doubling(initial, ceiling)
	d := b.NextBackOff()
	for i := 1; i < n && d < ceiling; i++ {
		d = b.NextBackOff()
	}
	return d
}

// doubling is an endless schedule that doubles from initial up to ceiling, without jitter.
func doubling(initial, ceiling time.Duration) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(ceiling),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(0),
	)
}
