package testwait_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a testing.TB that records a Fatalf instead of ending the goroutine.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestUntil(t *testing.T) {
	t.Parallel()
	t.Run("returns once the condition holds", func(t *testing.T) {
		t.Parallel()
		var n atomic.Int32
		go func() {
			for range 3 {
				n.Add(1)
			}
		}()
		testwait.Until(t, "three increments", 5*time.Second, func() bool { return n.Load() == 3 })
	})
	t.Run("fails naming what it waited for", func(t *testing.T) {
		t.Parallel()
		r := &recorder{TB: t}
		testwait.Until(r, "the impossible", 30*time.Millisecond, func() bool { return false })
		if r.failed != "timed out after 30ms waiting for the impossible" {
			t.Errorf("failure = %q", r.failed)
		}
	})
}

func TestWithinEvery(t *testing.T) {
	t.Parallel()
	t.Run("checks at once, then once per interval", func(t *testing.T) {
		t.Parallel()
		checks := 0
		if testwait.WithinEvery(100*time.Millisecond, 40*time.Millisecond, func() bool { checks++; return false }) {
			t.Fatal("WithinEvery = true for a condition that never holds")
		}
		if checks < 2 || checks > 4 { // at 0, 40, 80 and the deadline at 100 ms
			t.Errorf("checked %d times in 100 ms at 40 ms intervals; want 2 to 4", checks)
		}
	})
	t.Run("returns at once when the condition holds", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		if !testwait.WithinEvery(time.Minute, time.Minute, func() bool { return true }) || time.Since(start) > 10*time.Second {
			t.Errorf("WithinEvery took %s for a condition that holds", time.Since(start))
		}
	})
}

func TestRecv(t *testing.T) {
	t.Parallel()
	t.Run("returns the value sent", func(t *testing.T) {
		t.Parallel()
		ch := make(chan int, 1)
		ch <- 7
		if got := testwait.Recv(t, "a number", time.Second, ch); got != 7 {
			t.Errorf("Recv = %d", got)
		}
	})
	t.Run("fails when nothing arrives", func(t *testing.T) {
		t.Parallel()
		r := &recorder{TB: t}
		testwait.Recv(r, "a number", 10*time.Millisecond, make(chan int))
		if r.failed != "timed out after 10ms waiting for a number" {
			t.Errorf("failure = %q", r.failed)
		}
	})
	t.Run("Closed returns when the channel is closed", func(t *testing.T) {
		t.Parallel()
		done := make(chan struct{})
		close(done)
		testwait.Closed(t, "done", time.Second, done)
	})
}
