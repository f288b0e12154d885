package pacer

import (
	"math"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// Readings without x-ratelimit-reset. Kustomer's documentation does not promise the reset
// header, nor any rate-limit header. Without a reset the pacer cannot tell when the window
// ends, so it cannot spread what is left over the time to the end. It paces at the
// configured rate at most, and:
//
//   - When x-ratelimit-remaining is still sent, it reads from its drops what the org's other
//     clients spend (the drop between two readings less its own turns between the requests
//     they answer), and leaves them that pace and a twentieth more: it paces at the configured
//     rate less theirs. A reading well above the last starts a new count (the window
//     refilled); one well below it is an answer from before the refill, and is left out.
//   - A 429 that answers a request sent after the last pause cuts the pace by blindCut. With
//     Retry-After, the time since the last pause plus the wait is about a window, and the cut
//     is to the share of it that went by (but never below half the pace).
//   - The pace grows back by blindGrowth of the configured rate a second while no 429 comes.
//   - A 429 with Retry-After pauses as long. One without pauses blindPauseMin, doubling while
//     such 429s come in a row. A 429 answering a request sent before a pause began neither
//     cuts nor doubles anything.
//   - While the estimate of the other clients' pace settles, until it has paced a whole window
//     (its readings spanned blindSettle before the window last refilled), a 429 read with
//     x-ratelimit-remaining cuts nothing, and the first pause
//     is a probe step: the 429 is the start's overshoot, spent at the ceiling before the
//     readings told the other clients' pace, and a cut took many windows to grow back.
//
// Leaving the other clients their pace keeps them whole only when the configured rate
// (--rate-per-minute) is the budget's: it is the operator's bound. Learning the window's end
// from the refills of x-ratelimit-remaining is not done: it mislearned windows
// (docs/BENCHMARKS.md).

const (
	// blindCut is what an org-wide 429 leaves of the pace when the readings say nothing of
	// the window.
	blindCut = 0.9
	// blindGrowth is how fast that pace grows back, as a share of the configured rate a
	// second.
	blindGrowth = 0.002
	// blindFloor is the lowest pace backing off goes to, as a share of the configured rate.
	blindFloor = 0.05
	// blindFade is how fast what the other clients spent fades from the estimate of their
	// pace; blindSpan how long the readings must span before the pacer leaves them that
	// pace; blindMargin the share above it that it leaves them; blindSettle how long they
	// must span before the last refill for a 429 to cut the pace.
	blindFade   = 10 * time.Second
	blindSpan   = 200 * time.Millisecond
	blindMargin = 0.05
	blindSettle = time.Second
)

// blindState is the pace the pacer keeps while it cannot read the window's end; p.mu guards it.
type blindState struct {
	cap      rate.Limit // the pace after the last cut; 0 before any
	since    time.Time  // when the cap was set; it grows from then
	pauseEnd time.Time  // when the pause after the last blind 429 ended

	// What the org's other clients spend, read from x-ratelimit-remaining: the limit and
	// the lowest reading since the window last refilled, the turn of the request it
	// answered and when it came; what they spent, what the pacer's own turns spent, and
	// over how long, all three fading with blindFade.
	seen    bool
	limit   int
	rem     int
	remTurn int
	remAt   time.Time
	theirs  float64
	mine    float64
	span    float64
	// When the estimate of their pace settled (the readings spanned blindSettle), and when
	// the pacer last read the window refill; zero before either.
	settled  time.Time
	refilled time.Time
}

// blindCap is the pace allowed at now while the window's end is unknown; p.mu is held: the
// configured rate less what the org's other clients spend, and less what 429s cut.
func (p *Pacer) blindCap(now time.Time) rate.Limit {
	ceiling := p.ceiling
	if !p.win.reset.IsZero() || ceiling == rate.Inf {
		return rate.Inf // no configured rate to grow back to: the pauses alone back off
	}
	c := rate.Inf
	if b := p.blindPace; b.span >= blindSpan.Seconds() {
		c = max(ceiling-rate.Limit(b.theirs/b.span*(1+blindMargin)), ceiling*blindFloor)
	}
	if p.blindPace.cap == 0 {
		return c
	}
	grown := p.blindPace.cap + rate.Limit(blindGrowth*float64(ceiling)*now.Sub(p.blindPace.since).Seconds())
	if grown >= ceiling {
		p.blindPace.cap = 0
		return c
	}
	return min(grown, c)
}

// observeBlind takes a reading without a reset into what the org's other clients spend;
// p.mu is held. Between two readings of a window the org spent the drop in what is left,
// the pacer's own turns between the requests they answer being some of it: over a window
// the turns matched roughly to answers add up, but for those at its two ends.
func (p *Pacer) observeBlind(now time.Time, rl kustomer.RateLimit, inflight int) {
	b := &p.blindPace
	if rl.Remaining < 0 || rl.Limit <= 0 {
		return
	}
	b.limit = rl.Limit
	noise := readingNoise(inflight, rl.Limit)
	if !b.seen || rl.Remaining > b.rem+noise {
		// The first reading, or the window refilled: a new count from here.
		b.recount(now, rl.Remaining, p.last.n, b.seen)
		return
	}
	if rl.Remaining >= b.rem {
		return // an answer out of order, or nothing spent
	}
	// What the others spent since the last reading: the drop less the pacer's own turns.
	mine := p.last.n - b.remTurn
	theirs := b.rem - rl.Remaining - mine
	switch {
	case theirs > noise:
		return // an answer from the window before the refill, come late
	case theirs < -(max(inflight, 0) + 1):
		// Less went than the pacer's own turns since: the window refilled unseen, its
		// rise within the noise of a refill because little of the last window had been
		// spent (as when the pacer starts near the end of a window the other clients
		// barely began). Taken for what the others spend, the difference made their
		// pace negative for seconds: the pacer spent their share. A new count from here.
		b.recount(now, rl.Remaining, p.last.n, true)
		return
	}
	dt := now.Sub(b.remAt).Seconds()
	fade := math.Exp(-dt / blindFade.Seconds())
	b.theirs = b.theirs*fade + float64(theirs)
	b.mine = b.mine*fade + float64(mine)
	b.span = b.span*fade + dt
	b.rem, b.remTurn, b.remAt = rl.Remaining, p.last.n, now
	if b.settled.IsZero() && b.span >= blindSettle.Seconds() {
		b.settled = now
	}
}

// recount starts a new count of what the others spend from a reading of remaining, answering
// the pacer's turn n, at now; refilled says that the window refilled since the last one.
func (b *blindState) recount(now time.Time, remaining, n int, refilled bool) {
	if refilled {
		b.refilled = now
	}
	b.seen, b.rem, b.remTurn, b.remAt = true, remaining, n, now
}

// cutBlind lowers the pace after an org-wide 429 read without a reset, wait being its
// Retry-After (0 without); p.mu is held. A 429 answering a request that went before the
// current pause began cuts nothing more. Retry-After tells how much of the window was left:
// when the last pause ended where a window began, the window lasted the time since plus the
// wait, and the pace that would have spent the budget over it is cut to that much.
func (p *Pacer) cutBlind(now time.Time, wait time.Duration) {
	if !p.win.reset.IsZero() || p.ceiling == rate.Inf || now.Before(p.pausedUntil) || p.last.at.Before(p.blindPace.pauseEnd) {
		return
	}
	if p.blindPace.settling() {
		return
	}
	cur := min(p.lim.Limit(), p.ceiling, p.blindCap(now))
	cut := blindCut
	if ran := now.Sub(p.blindPace.pauseEnd); wait > 0 && !p.blindPace.pauseEnd.IsZero() {
		cut = min(cut, max(ran.Seconds()/(ran+wait).Seconds(), 0.5))
	}
	p.blindPace.cap = max(cur*rate.Limit(cut), p.ceiling*blindFloor)
	p.blindPace.since = now
	p.setRate(now, p.blindPace.cap)
}

// settling reports whether x-ratelimit-remaining is read and the estimate of what the other
// clients spend has not yet paced a whole window: it settled (over blindSettle of
// readings) after the window last refilled, or has not yet.
func (b *blindState) settling() bool {
	return b.seen && (b.settled.IsZero() || !b.settled.Before(b.refilled))
}

// firstPause is the pause after the first org-wide 429 in a row that says nothing of when
// to retry: a probe step while the estimate settles (the readings will show the refill),
// else blindPauseMin.
func (b *blindState) firstPause() time.Duration {
	if b.settling() {
		return probeStep
	}
	return blindPauseMin
}

// estimate is what the readings without a reset tell an operator; p.mu is held. The budget
// left is the lowest reading since the window last refilled, and the other clients' rate and
// the pacer's share are those of the fading count, once its readings span blindSpan.
func (b *blindState) estimate(e *Estimate) {
	if !b.seen {
		return
	}
	e.Limit, e.Left = b.limit, b.rem
	if b.span < blindSpan.Seconds() {
		return
	}
	e.OthersPerSecond = max(b.theirs, 0) / b.span
	if spent := max(b.theirs, 0) + b.mine; spent > 0 {
		e.OwnShare = b.mine / spent
	}
}
