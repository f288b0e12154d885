// Package testwait holds the waits that tests share: until a condition holds, or until a
// value arrives, each bounded by a timeout that fails the test with what it waited for.
// Tests wait on conditions this way, never on time.Sleep.
package testwait

import (
	"testing"
	"time"
)

// Polling of Until: fast at first, so that a condition met at once costs nothing, then
// slower, so that a long wait does not burn a core.
const (
	firstPoll = time.Millisecond
	maxPoll   = 20 * time.Millisecond
)

// Until returns once cond holds, checking it at once and then every few milliseconds; it
// fails the test with tb.Fatalf, naming what, if cond does not hold within timeout. cond runs
// on the calling goroutine.
func Until(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	if !Within(timeout, cond) {
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// Within reports whether cond held within timeout, polling it as Until does, for tests that
// fail in their own words or expect a condition never to hold.
func Within(timeout time.Duration, cond func() bool) bool {
	return poll(timeout, firstPoll, maxPoll, cond)
}

// WithinEvery is Within with a fixed interval between checks: for conditions costly to check
// (a request to a container), or whose moment a test measures (the end of a benchmark run,
// then seen within about every).
func WithinEvery(timeout, every time.Duration, cond func() bool) bool {
	return poll(timeout, every, every, cond)
}

// poll checks cond at once, then after first, doubling the interval up to ceiling, until cond
// holds (true) or timeout has passed (false).
func poll(timeout, first, ceiling time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	every := first
	for !cond() {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(min(every, left))
		<-t.C
		every = min(2*every, ceiling)
	}
	return true
}

// Recv returns the next value from ch, failing the test, naming what, if none arrives within
// timeout or ch is closed.
func Recv[T any](tb testing.TB, what string, timeout time.Duration, ch <-chan T) T {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			tb.Fatalf("%s: channel closed", what)
		}
		return v
	case <-t.C:
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
	var zero T
	return zero
}

// Closed returns once ch is closed (or yields a value), failing the test, naming what, if that
// does not happen within timeout.
func Closed[T any](tb testing.TB, what string, timeout time.Duration, ch <-chan T) {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
