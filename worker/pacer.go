package worker

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// Pacer is the one gate every request to Kustomer passes. It is a token bucket at the
// configured rate that also follows what Kustomer reports: it spreads the remaining budget of
// the current window over the time left until reset, and an org-wide 429 (or a budget that
// reads zero) pauses every caller until the window resets, so one 429 stops the whole pool.
type Pacer struct {
	lim     *rate.Limiter
	ceiling rate.Limit
	now     func() time.Time

	mu          sync.Mutex
	pausedUntil time.Time
	window      time.Time // reset of the window the lowest reading belongs to
	lowest      int       // lowest x-ratelimit-remaining seen in that window
}

// NewPacer returns a pacer allowing perMinute requests a minute; perMinute <= 0 means no limit
// of our own (Kustomer's headers still pace it).
func NewPacer(perMinute int) *Pacer {
	ceiling := rate.Inf
	if perMinute > 0 {
		ceiling = rate.Limit(float64(perMinute) / 60)
	}
	return &Pacer{lim: rate.NewLimiter(ceiling, 1), ceiling: ceiling, now: time.Now, lowest: -1}
}

// Wait blocks until the caller may send one request, or ctx ends.
func (p *Pacer) Wait(ctx context.Context) error {
	for {
		if err := p.waitPause(ctx); err != nil {
			return err
		}
		if err := p.lim.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			// The limiter refuses waits longer than ctx allows; sleep in steps instead.
			if err := sleep(ctx, time.Second); err != nil {
				return err
			}
			continue
		}
		// A pause may have begun while this caller waited for its token.
		if until := p.PausedUntil(); !until.IsZero() {
			continue
		}
		return nil
	}
}

func (p *Pacer) waitPause(ctx context.Context) error {
	for {
		until := p.PausedUntil()
		if until.IsZero() {
			return nil
		}
		if err := sleep(ctx, until.Sub(p.now())); err != nil {
			return err
		}
	}
}

// PausedUntil is when the current pause ends; zero when not paused.
func (p *Pacer) PausedUntil() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.pausedUntil.IsZero() && !p.now().Before(p.pausedUntil) {
		p.pausedUntil = time.Time{}
	}
	return p.pausedUntil
}

// PauseFor stops every caller for d (capped at kustomer.MaxWait), after an org-wide 429.
func (p *Pacer) PauseFor(d time.Duration) {
	d = min(max(d, 100*time.Millisecond), kustomer.MaxWait)
	p.mu.Lock()
	defer p.mu.Unlock()
	if until := p.now().Add(d); until.After(p.pausedUntil) {
		p.pausedUntil = until
	}
}

// Observe adapts the rate to the budget Kustomer reported on an answer. inflight is the number
// of requests sent but not yet answered, which the reported budget does not count yet.
func (p *Pacer) Observe(rl kustomer.RateLimit, inflight int) {
	if rl.Remaining < 0 || rl.Reset.IsZero() {
		return
	}
	now := p.now()
	left := rl.Reset.Sub(now)
	if left <= 0 {
		return
	}
	p.mu.Lock()
	// Answers arrive out of order: within one window keep the lowest reading. Resets read
	// as seconds-from-now wobble by up to a second, so nearby resets are one window.
	switch {
	case p.lowest < 0 || rl.Reset.Sub(p.window) > 1500*time.Millisecond:
		p.window, p.lowest = rl.Reset, rl.Remaining
	case rl.Reset.Sub(p.window) < -1500*time.Millisecond || rl.Remaining >= p.lowest:
		p.mu.Unlock()
		return // a stale answer from an older window or an earlier moment
	default:
		p.lowest = rl.Remaining
	}
	if rl.Remaining == 0 {
		until := rl.Reset
		if limit := now.Add(kustomer.MaxWait); until.After(limit) {
			until = limit
		}
		if until.After(p.pausedUntil) {
			p.pausedUntil = until
		}
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	// Requests in flight will spend part of what is left, but some of them are already
	// counted in the reading: keep at least one request for the rest of the window.
	avail := max(rl.Remaining-inflight, 1)
	target := rate.Limit(float64(avail) / left.Seconds())
	p.lim.SetLimitAt(now, min(target, p.ceiling))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
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
