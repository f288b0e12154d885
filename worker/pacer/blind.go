package pacer

import (
	"time"

	"golang.org/x/time/rate"
)

// Readings without x-ratelimit-reset. Kustomer's documentation does not promise the reset
// header, nor any rate-limit header. Without a reset the pacer cannot tell when the window
// ends, so it cannot spread what is left over the time to the end, nor see what the org's
// other clients spend. It paces at the configured rate at most, and backs off on org-wide
// 429s instead:
//
//   - A 429 that answers a request sent after the last pause cuts the pace by blindCut. With
//     Retry-After, the time since the last pause plus the wait is about a window, and the cut
//     is to the share of it that went by (but never below half the pace).
//   - The pace grows back by blindGrowth of the configured rate a second while no 429 comes.
//   - A 429 with Retry-After pauses as long. One without pauses blindPauseMin, doubling while
//     such 429s come in a row. A 429 answering a request sent before a pause began neither
//     cuts nor doubles anything.
//
// This leaves the other clients only what backing off leaves them: the configured rate
// (--rate-per-minute) is the operator's bound. Learning the window from x-ratelimit-remaining
// when only the reset is absent is not done (see NOTES-issue-22.md).

const (
	// blindCut is what an org-wide 429 leaves of the pace when the readings say nothing of
	// the window.
	blindCut = 0.9
	// blindGrowth is how fast that pace grows back, as a share of the configured rate a
	// second.
	blindGrowth = 0.002
	// blindFloor is the lowest pace backing off goes to, as a share of the configured rate.
	blindFloor = 0.05
)

// blindState is the pace the pacer keeps while it cannot read the window's end; p.mu guards it.
type blindState struct {
	cap      rate.Limit // the pace after the last cut; 0 before any
	since    time.Time  // when the cap was set; it grows from then
	pauseEnd time.Time  // when the pause after the last blind 429 ended
}

// blindCap is the pace allowed at now while the window's end is unknown; p.mu is held.
func (p *Pacer) blindCap(now time.Time) rate.Limit {
	if p.blindPace.cap == 0 || !p.win.reset.IsZero() {
		return rate.Inf
	}
	ceiling := p.ceiling
	if ceiling == rate.Inf {
		return rate.Inf // no configured rate to grow back to: the pauses alone back off
	}
	grown := p.blindPace.cap + rate.Limit(blindGrowth*float64(ceiling)*now.Sub(p.blindPace.since).Seconds())
	if grown >= ceiling {
		p.blindPace.cap = 0
		return rate.Inf
	}
	return grown
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
	cur := min(p.lim.Limit(), p.ceiling, p.blindCap(now))
	cut := blindCut
	if ran := now.Sub(p.blindPace.pauseEnd); wait > 0 && !p.blindPace.pauseEnd.IsZero() {
		cut = min(cut, max(ran.Seconds()/(ran+wait).Seconds(), 0.5))
	}
	p.blindPace.cap = max(cur*rate.Limit(cut), p.ceiling*blindFloor)
	p.blindPace.since = now
	p.setRate(now, p.blindPace.cap)
}
