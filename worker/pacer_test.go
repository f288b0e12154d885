package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

func fixedPacer(perMinute int, now time.Time) *Pacer {
	p := NewPacer(perMinute)
	p.now = func() time.Time { return now }
	return p
}

func TestPacerFollowsTheReportedBudget(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	reading := func(remaining int, resetIn time.Duration) kustomer.RateLimit {
		return kustomer.RateLimit{Limit: 1000, Remaining: remaining, Reset: now.Add(resetIn)}
	}

	t.Run("keeps the configured rate while the window has plenty left", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(reading(900, 60*time.Second), 4)
		if got := p.lim.Limit(); got != 10 {
			t.Errorf("rate %v/s; want the configured 10/s", got)
		}
	})

	t.Run("spreads what is left over the time until reset when it runs low", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(reading(104, 21*time.Second), 4)
		if got := p.lim.Limit(); got != 5 {
			t.Errorf("rate %v/s; want (104-4)/20s = 5/s (the window may end a second before the rounded reset)", got)
		}
	})

	t.Run("ignores a late answer that read more budget than an earlier one", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(reading(104, 21*time.Second), 4)
		p.Observe(reading(300, 21*time.Second), 0)
		if got := p.lim.Limit(); got != 5 {
			t.Errorf("rate %v/s after a stale reading; want 5/s", got)
		}
	})

	t.Run("takes a new window's reading", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(reading(10, 5*time.Second), 0)
		p.Observe(reading(999, 65*time.Second), 0)
		if got := p.lim.Limit(); got != 10 {
			t.Errorf("rate %v/s in a fresh window; want 10/s", got)
		}
	})

	t.Run("pauses everyone until the window can have ended when the budget reads zero", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(reading(0, 7*time.Second), 0)
		if got, want := p.PausedUntil(), now.Add(6*time.Second); !got.Equal(want) {
			t.Errorf("paused until %v; want a second before the reported reset, %v", got, want)
		}
		if got := p.lim.Limit(); got != 5 {
			t.Errorf("rate %v/s after the pause; want one probe per 200ms", got)
		}
	})

	t.Run("probes in short steps once the window may have ended", func(t *testing.T) {
		p := fixedPacer(600, now)
		if d := p.OrgThrottled(reading(0, 400*time.Millisecond)); d != probeStep {
			t.Errorf("pause %s after a 429 within a second of the reset; want %s", d, probeStep)
		}
		p.Observe(reading(599, 10*time.Second), 0)
		if got := p.lim.Limit(); got != 10 {
			t.Errorf("rate %v/s once a probe got through to the next window; want 10/s", got)
		}
	})

	t.Run("honours Retry-After on an org-wide 429", func(t *testing.T) {
		p := fixedPacer(600, now)
		if d := p.OrgThrottled(kustomer.RateLimit{Remaining: -1, Limit: -1, RetryAfter: 3 * time.Second}); d != 3*time.Second {
			t.Errorf("pause %s; want Retry-After's 3s", d)
		}
	})

	t.Run("backs off 429s that say nothing of when to retry", func(t *testing.T) {
		p := fixedPacer(600, now)
		blank := kustomer.RateLimit{Remaining: -1, Limit: -1}
		if a, b := p.OrgThrottled(blank), p.OrgThrottled(blank); a != 250*time.Millisecond || b != 500*time.Millisecond {
			t.Errorf("pauses %s then %s; want 250ms then 500ms", a, b)
		}
	})

	t.Run("caps a pause at 60 seconds", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.OrgThrottled(kustomer.RateLimit{Remaining: -1, Limit: -1, RetryAfter: 10 * time.Minute})
		if got := p.PausedUntil(); !got.Equal(now.Add(kustomer.MaxWait)) {
			t.Errorf("paused until %v; want %v", got, now.Add(kustomer.MaxWait))
		}
	})

	t.Run("without headers keeps the configured rate", func(t *testing.T) {
		p := fixedPacer(0, now)
		p.Observe(kustomer.RateLimit{Limit: -1, Remaining: -1}, 0)
		if got := p.lim.Limit(); got != rate.Inf {
			t.Errorf("rate %v; want no limit", got)
		}
	})
}

func TestPacerWaitEndsWithItsContext(t *testing.T) {
	p := NewPacer(600)
	p.OrgThrottled(kustomer.RateLimit{Remaining: -1, Limit: -1, RetryAfter: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Wait(ctx, PriorityLive)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait during a pause = %v; want the context's error", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Wait took %s after its context ended", el)
	}
}
