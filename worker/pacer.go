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
// the current window over the time left until reset, and a spent budget (a reading of zero or
// an org-wide 429) pauses every caller until the window turns, so one 429 stops the whole pool.
//
// x-ratelimit-reset comes in whole seconds, so a window reported to end at R may really end up
// to a second earlier. Rather than lose that second in every window, a pacer whose window is
// spent resumes at the earliest moment the window can have ended and probes, one request a
// step, until a request gets through.
type Pacer struct {
	lim     *rate.Limiter
	ceiling rate.Limit
	now     func() time.Time

	mu          sync.Mutex
	pausedUntil time.Time
	window      time.Time // reset of the window the lowest reading belongs to
	lowest      int       // lowest x-ratelimit-remaining seen in that window
	blind       int       // org-wide 429s in a row that said nothing of when to retry
	changed     chan struct{}
}

const (
	// resetGranularity is how much earlier than x-ratelimit-reset a window may end.
	resetGranularity = time.Second
	// probeStep is the pace of requests while the spent window may have ended.
	probeStep = 200 * time.Millisecond
)

// NewPacer returns a pacer allowing perMinute requests a minute; perMinute <= 0 means no limit
// of our own (Kustomer's headers still pace it).
func NewPacer(perMinute int) *Pacer {
	ceiling := rate.Inf
	if perMinute > 0 {
		ceiling = rate.Limit(float64(perMinute) / 60)
	}
	return &Pacer{lim: rate.NewLimiter(ceiling, 1), ceiling: ceiling, now: time.Now, lowest: -1, changed: make(chan struct{})}
}

// Priority is the class of a request waiting for budget: the pacer serves waiting requests in
// class order, one budget for all.
type Priority int

const (
	PriorityLive     Priority = iota // live updates from event producers: first
	PriorityBulkRead                 // reads that follow bulk jobs
	PriorityBackfill                 // backfill updates: whatever the others leave
)

// Wait blocks until the caller may send one request of the given class, or ctx ends. When the
// rate goes up while callers wait, they take new places in line at the new rate instead of
// keeping the slow ones.
func (p *Pacer) Wait(ctx context.Context, _ Priority) error {
	for {
		if err := p.waitPause(ctx); err != nil {
			return err
		}
		changed := p.changedCh()
		r := p.lim.Reserve()
		d := r.Delay()
		if d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				r.Cancel()
				return context.Cause(ctx)
			case <-changed:
				t.Stop()
				r.Cancel()
				continue
			case <-t.C:
			}
		}
		// A pause may have begun while this caller waited for its turn.
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

func (p *Pacer) changedCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// signal wakes callers waiting for their turn; p.mu is held.
func (p *Pacer) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
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

// pauseUntil extends the pause to t (capped at kustomer.MaxWait from now); p.mu is held.
func (p *Pacer) pauseUntil(t time.Time) {
	if limit := p.now().Add(kustomer.MaxWait); t.After(limit) {
		t = limit
	}
	if t.After(p.pausedUntil) {
		p.pausedUntil = t
	}
}

// spent records that the window ending at reset has no budget left; p.mu is held. Requests
// resume at the earliest moment the window can have ended, one probe a step.
func (p *Pacer) spent(reset time.Time) time.Duration {
	now := p.now()
	earliest := reset.Add(-resetGranularity)
	p.lim.SetLimitAt(now, min(rate.Every(probeStep), p.ceiling))
	if now.Before(earliest) {
		p.pauseUntil(earliest)
		return earliest.Sub(now)
	}
	p.pauseUntil(now.Add(probeStep))
	return probeStep
}

// OrgThrottled pauses every caller after an org-wide 429 and says for how long: Retry-After
// when Kustomer sent it, else until the window can have turned, else a short pause that grows
// while 429s keep coming without a hint.
func (p *Pacer) OrgThrottled(rl kustomer.RateLimit) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.signal()
	now := p.now()
	switch {
	case rl.RetryAfter > 0:
		d := min(rl.RetryAfter, kustomer.MaxWait)
		p.pauseUntil(now.Add(d))
		return d
	case rl.Reset.After(now):
		return p.spent(rl.Reset)
	}
	p.blind++
	d := min(250*time.Millisecond<<min(p.blind-1, 8), kustomer.MaxWait)
	p.pauseUntil(now.Add(d))
	return d
}

// Observe adapts the rate to the budget Kustomer reported on an answer. inflight is the number
// of requests sent but not yet answered, which the reported budget may not count yet.
func (p *Pacer) Observe(rl kustomer.RateLimit, inflight int) {
	if rl.Remaining < 0 || rl.Reset.IsZero() {
		return
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	// Answers arrive out of order: within one window keep the lowest reading. Resets read
	// as seconds-from-now wobble by up to a second, so nearby resets are one window.
	switch {
	case p.lowest < 0:
		p.window, p.lowest = rl.Reset, rl.Remaining
	case rl.Reset.Sub(p.window) > 1500*time.Millisecond:
		p.window, p.lowest = rl.Reset, rl.Remaining
		if rl.Remaining > 0 {
			p.pausedUntil = time.Time{} // the spent window has turned: no need to wait it out
		}
	case rl.Reset.Sub(p.window) < -1500*time.Millisecond || rl.Remaining >= p.lowest:
		return // a stale answer from an older window or an earlier moment
	default:
		p.lowest = rl.Remaining
	}
	if rl.Remaining > 0 {
		p.blind = 0
	}
	if rl.Remaining == 0 {
		if rl.Reset.After(now) {
			p.spent(rl.Reset)
			p.signal()
		}
		return
	}
	// Spread what is left over the time until the earliest end the rounded header allows:
	// should the window last longer, the budget runs out a little early and the pacer
	// probes for the new window, which wastes less than budget left unspent at its end.
	// Requests in flight will spend part of what is left, but some of them are already
	// counted in the reading: keep at least one for the rest of the window.
	left := max(rl.Reset.Sub(now)-resetGranularity, 100*time.Millisecond)
	avail := max(rl.Remaining-inflight, 1)
	target := min(rate.Limit(float64(avail)/left.Seconds()), p.ceiling)
	old := p.lim.Limit()
	p.lim.SetLimitAt(now, target)
	if target > old*1.05 {
		p.signal()
	}
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
