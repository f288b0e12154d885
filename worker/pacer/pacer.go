// Package pacer hands out an org's Kustomer rate budget to the requests that wait for it: one
// Pacer in front of every request of a process, serving waiting requests in class order and
// following the x-ratelimit-* readings of every answer. It knows nothing of what the requests
// carry; package worker is its user.
package pacer

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// Pacer is the one gate every request to Kustomer passes. It hands out the org's rate budget
// to waiting requests in class order, at no more than the configured rate on average, and
// follows what Kustomer reports on every answer:
//
//   - It spreads what the headers say is left of the window over the time until the window's
//     end (less the half latency a request takes to reach Kustomer, once it knows the end),
//     and from then on paces for the next window, so that it neither leaves budget unspent
//     nor spends the last of it early, when another client of the org still needs some:
//     what other clients spent of the last
//     window (the budget gone, less the pacer's own turns) is their share, and the pacer
//     leaves them what they have yet to spend of it in this one, whether they spend evenly,
//     at the window's start or in bursts. Another deployment of the worker on the same org
//     is one of those clients: the share of a client seen over only a part of the last
//     window is capped by its pace in this one, so that two pacers which each leave the
//     other what it spends do not each leave the other most of the budget.
//   - When the window is spent (a reading of zero, or an org-wide 429) every caller pauses
//     until the window turns, so one 429 stops the whole pool. A reading from the next window
//     ends the pause at once.
//   - x-ratelimit-reset comes in whole seconds, rounded either way, as epoch seconds or
//     seconds from now: a window reported to end at R ends within a second of it, before or
//     after. The pacer learns where from the readings: a window began no later than the
//     first request answered from it reached Kustomer, and lasts whole seconds. Until it
//     knows, it plans for the earliest end while no other client spends, and for the
//     latest while others do (no later than a window after its first reading), so that
//     they keep their share to the real end, sending a turn every 200 ms at least from
//     the earliest end on to see where the next window begins; once the window is spent
//     it probes, one request a probe step, for the next window.
//   - A moment with no caller waiting does not lose budget for good: what came due in the
//     last quarter second goes when callers come back (never right after a pause).
//   - Without x-ratelimit-reset it cannot tell where a window ends: it paces at the
//     configured rate, less the other clients' pace read from x-ratelimit-remaining when
//     that is sent, and backs off on 429s (blind.go).
//
// Nothing made before a pause or a change of rate holds up what comes after it: there is at
// most one reservation at the rate limiter, for the next request to go, and it is taken back
// whenever the plan changes. All times come from one [Clock].
type Pacer struct {
	clock   Clock
	ceiling rate.Limit // the configured rate; rate.Inf without one

	mu sync.Mutex // guards every field below

	// Handing out turns.
	lim     *rate.Limiter
	queues  [numPriorities][]*waiter // waiting callers of each class, oldest first
	seq     uint64                   // arrival number of the last waiter
	next    *rate.Reservation        // the token for the next turn; nil when none is held
	spare   int                      // turns handed out whose caller had gone: given to the next
	timer   Timer                    // wakes dispatch when the next turn is due
	timerAt time.Time
	granted int // turns handed out so far

	// The budget as Kustomer reports it.
	win         window
	pausedUntil time.Time
	paused      bool          // a pause was set and dispatch has not yet seen it end
	resumedAt   time.Time     // when dispatch last saw a pause end
	looseStart  bool          // lastStart came right after a pause: the window may have begun during it
	probing     bool          // until a reading from the next window: one request a probeStep
	switchAt    time.Time     // the learned end of the window: from then on, the pace of a new one
	floorAt     time.Time     // from then on a turn a learnGap at least: near a window's end, to see where the next begins
	learnedEnd  time.Time     // when the current window ends, for a send, as learned when it began
	step        time.Duration // the shortest step yet between two windows; 0 before a turn
	lastStart   time.Time     // when the current window began, at the latest, if learned
	resetBefore time.Time     // the lowest reset read for the window before the current one, if sampled
	learned     bool          // learnedEnd holds; else the end is taken as the earliest possible
	latestEnd   time.Time     // when the current window ends at the latest, from its first reading; zero if unknown
	blind       int           // org-wide 429s in a row that said nothing of when to retry

	// The org's other clients: how fast they spend the budget, in units a second, as the
	// readings of the current window show it, and as the last window's showed it; and how
	// much they spent of the last window, if the pacer saw one turn.
	// The pace kept while no reading tells where the window ends.
	blindPace blindState

	foreign, foreignBefore float64
	theirsLast             float64
	theirsKnown            bool
	theirsGuessed          bool    // theirsLast was extrapolated from a part of a window
	mineLast               float64 // what the pacer's own requests spent of the last window

	// Matching answers to the requests they answer, roughly.
	sent      []sentTurn  // the turns of the requests not yet answered, oldest first
	recent    []time.Time // when the last recentKeep requests got their turn, oldest first
	latencies []time.Duration
	last      sentTurn // turn of the request the last answer is taken to answer
}

// sentTurn is one turn handed out: when, and how many turns had been handed out with it.
type sentTurn struct {
	at time.Time
	n  int
}

// window is the current budget window as the readings show it.
type window struct {
	reset  time.Time     // lowest x-ratelimit-reset read for it; zero before the first reading
	lowest int           // lowest x-ratelimit-remaining read for it
	limit  int           // x-ratelimit-limit
	length time.Duration // how long a window lasts, in whole seconds, as read at its first reading
	began  time.Time     // when its first reading came
	read   int           // how many readings came for it

	// The first reading of the window and the turn it answered: what the org has spent
	// since, less the pacer's own turns since, is what other clients spent.
	first     int
	firstTurn sentTurn
	// What other clients spent of it before its first reading, and in all so far. The first
	// window's spending before its first reading is unknown (it may be the pacer's own,
	// before it started): only a window seen to begin counts it.
	before, theirs float64
	seenBegin      bool
}

// waiter is one caller of Wait.
type waiter struct {
	class   Priority
	since   time.Time
	seq     uint64
	ready   chan struct{} // closed when the caller's turn has come
	granted bool
}

// Priority is the class of a request waiting for budget: the pacer serves waiting requests in
// class order, one budget for all. A request that has waited agingBound is served as if it
// were live, so no class is starved for good.
type Priority int

const (
	Live     Priority = iota // live updates from event producers: first
	BulkRead                 // reads that follow bulk jobs
	Backfill                 // backfill updates: whatever the others leave

	numPriorities = 3
)

const (
	// sampledReadings is how many readings of a window, over a second at least, make its
	// lowest reset a fair reading of its end.
	sampledReadings = 10
	// resetGranularity is how much earlier than x-ratelimit-reset a window may end.
	resetGranularity = time.Second
	// probeStep is the pace of requests while a spent window may have turned.
	probeStep = 100 * time.Millisecond
	// agingBound is how long a request of a lower class waits at most before it is served
	// in arrival order with the live ones.
	agingBound = 10 * time.Second
	// learnGap is the largest gap between two turns around a window's turn that still
	// tells where the window ended.
	learnGap = 250 * time.Millisecond
	// learnPace is the pace of turns close enough to learn from: one every four fifths of
	// a learnGap.
	learnPace = rate.Limit(float64(time.Second) / float64(learnGap*4/5))
	// theirsMargin is the share above what other clients spent of the last window that the
	// pacer leaves them of the current one.
	theirsMargin = 0
	// theirsNoise is the share of the budget that other clients must have spent of the last
	// window for the pacer to leave them some of the current one: answers are matched to
	// turns roughly, and with high latency a pacer alone sees a few requests not its own.
	theirsNoise = 0.02
	// foreignPrior is how long the readings of a window must span before the estimate of
	// what other clients spend leans more on them than on the last window's.
	foreignPrior = time.Second
	// sendGrace is how long after its turn a request may take to count as in flight.
	sendGrace = 20 * time.Millisecond
	// catchUp is how long a time with no caller waiting the pacer makes up for afterwards.
	catchUp = 250 * time.Millisecond
	// blindPauseMin is the pause after an org-wide 429 that says nothing of when to retry;
	// it doubles with each such 429 in a row, at most blindPauseDoublings times, and never
	// exceeds kustomer.MaxWait.
	blindPauseMin       = 250 * time.Millisecond
	blindPauseDoublings = 8
	// recentKeep is how many turns, and latencies, the pacer remembers.
	recentKeep  = 256
	latencyKeep = 64
)

// Clock is the pacer's source of time, so that tests can drive it.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed, unless stopped.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call of Clock.AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether it did.
	Stop() bool
}

// SystemClock is the wall clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time { return time.Now() }

func (SystemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Option configures a Pacer.
type Option func(*Pacer)

// WithClock makes the pacer take every time from c. Default SystemClock.
func WithClock(c Clock) Option { return func(p *Pacer) { p.clock = c } }

// NewPacer returns a pacer allowing perMinute requests a minute; perMinute <= 0 means no limit
// of our own (Kustomer's headers still pace it).
func New(perMinute int, opts ...Option) *Pacer {
	ceiling := rate.Inf
	if perMinute > 0 {
		ceiling = rate.Limit(float64(perMinute) / 60)
	}
	p := &Pacer{clock: SystemClock{}, ceiling: ceiling}
	for _, o := range opts {
		o(p)
	}
	// One token to begin with, as after a pause.
	p.lim = rate.NewLimiter(ceiling, burstFor(ceiling))
	p.lim.AllowN(p.clock.Now(), p.lim.Burst()-1)
	return p
}

// Wait blocks until the caller may send one request of the given class, or ctx ends. Waiting
// callers are served in class order, oldest first within a class; a caller that has waited
// agingBound goes with the live ones.
func (p *Pacer) Wait(ctx context.Context, class Priority) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	class = min(max(class, Live), Backfill)
	p.mu.Lock()
	now := p.clock.Now()
	p.seq++
	w := &waiter{class: class, since: now, seq: p.seq, ready: make(chan struct{})}
	p.queues[class] = append(p.queues[class], w)
	p.dispatch(now)
	p.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now = p.clock.Now()
	if w.granted {
		// The turn came as the caller left: the next caller takes it.
		p.spare++
		p.unsend()
	} else {
		p.queues[class] = slices.DeleteFunc(p.queues[class], func(o *waiter) bool { return o == w })
	}
	p.dispatch(now)
	return context.Cause(ctx)
}

// waiting is how many callers wait; p.mu is held.
func (p *Pacer) waiting() int {
	n := 0
	for _, q := range p.queues {
		n += len(q)
	}
	return n
}

// dispatch hands out every turn that is due at now and arms the timer for the next one;
// p.mu is held. It is called after every change of the plan.
func (p *Pacer) dispatch(now time.Time) {
	if !p.switchAt.IsZero() && !now.Before(p.switchAt) {
		p.switchAt = time.Time{}
		p.setRate(now, p.crossingRate())
	}
	if !p.floorAt.IsZero() && !now.Before(p.floorAt) {
		p.floorAt = time.Time{}
		if p.lim.Limit() < learnPace {
			p.setRate(now, learnPace)
		}
	}
	if p.paused && !now.Before(p.pausedUntil) {
		p.paused = false
		p.resumedAt = now
		p.drain(now)
	}
	for p.waiting() > 0 {
		if now.Before(p.pausedUntil) {
			p.cancelNext(now)
			p.wakeAt(now, p.pausedUntil)
			return
		}
		if p.spare > 0 {
			p.spare--
			p.grant(now)
			continue
		}
		if p.next == nil {
			p.next = p.lim.ReserveN(now, 1)
		}
		if d := p.next.DelayFrom(now); d > 0 {
			at := now.Add(d)
			if !p.switchAt.IsZero() && p.switchAt.Before(at) {
				at = p.switchAt
			}
			if !p.floorAt.IsZero() && p.floorAt.Before(at) {
				at = p.floorAt
			}
			p.wakeAt(now, at)
			return
		}
		p.next = nil
		p.grant(now)
	}
	p.cancelNext(now)
	p.stopTimer()
}

// cancelNext gives back the token held for the next turn; p.mu is held. The token is the only
// reservation at the limiter, so all of it comes back.
func (p *Pacer) cancelNext(now time.Time) {
	if p.next != nil {
		p.next.CancelAt(now)
		p.next = nil
	}
}

// grant gives the turn to the first waiter in class order; p.mu is held.
func (p *Pacer) grant(now time.Time) {
	best, bestRank := -1, Priority(0)
	for c, q := range p.queues {
		if len(q) == 0 {
			continue
		}
		rank := Priority(c)
		if now.Sub(q[0].since) >= agingBound {
			rank = Live
		}
		if best < 0 || rank < bestRank || rank == bestRank && q[0].seq < p.queues[best][0].seq {
			best, bestRank = c, rank
		}
	}
	w := p.queues[best][0]
	p.queues[best] = p.queues[best][1:]
	w.granted = true
	close(w.ready)
	p.granted++
	p.sent = append(p.sent, sentTurn{at: now, n: p.granted})
	p.recent = append(p.recent, now)
	if len(p.recent) > recentKeep {
		p.recent = slices.Delete(p.recent, 0, len(p.recent)-recentKeep)
	}
}

// unsend forgets the last turn handed out: its caller did not use it; p.mu is held.
func (p *Pacer) unsend() {
	if n := len(p.sent); n > 0 {
		p.sent = p.sent[:n-1]
	}
}

// wakeAt arms the timer to dispatch at t; p.mu is held.
func (p *Pacer) wakeAt(now, t time.Time) {
	if p.timer != nil && p.timerAt.Equal(t) {
		return
	}
	p.stopTimer()
	p.timerAt = t
	var timer Timer
	timer = p.clock.AfterFunc(t.Sub(now), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.timer != timer {
			return // stopped after it fired
		}
		p.timer = nil
		p.dispatch(p.clock.Now())
	})
	p.timer = timer
}

// stopTimer; p.mu is held.
func (p *Pacer) stopTimer() {
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
}

// setRate changes the pace of turns from now on; p.mu is held. A token held at the old pace
// is given back, so the next turn comes at the new one, unless its time has come: the timer
// that hands it out fires a little late on a real clock, and the limiter takes back no token
// whose time has passed, so a reading in between would lose that turn for good.
func (p *Pacer) setRate(now time.Time, r rate.Limit) {
	r = min(r, p.ceiling, p.blindCap(now))
	if r == p.lim.Limit() {
		return
	}
	if p.next == nil || p.next.DelayFrom(now) > 0 {
		p.cancelNext(now)
	}
	p.lim.SetLimitAt(now, r)
	b := burstFor(r)
	if p.probing {
		b = 1
	}
	p.lim.SetBurstAt(now, b)
}

// burstFor is how many turns may go at once at rate r: those that came due in the last
// catchUp while no caller was waiting, so that a moment with no caller ready does not lose
// budget for good. Over any time t the pacer still hands out at most r*t + burstFor(r) turns.
func burstFor(r rate.Limit) int {
	if r == rate.Inf {
		return 1
	}
	return max(int(float64(r)*catchUp.Seconds()), 1)
}

// drain gives up the turns saved for catching up; p.mu is held. After a pause the pacer
// starts again with one turn, not a burst.
func (p *Pacer) drain(now time.Time) {
	b := p.lim.Burst()
	p.lim.SetBurstAt(now, 1)
	p.lim.SetBurstAt(now, b)
}

// Estimate is what the pacer makes of the org's budget, for an operator to read.
//
// Without x-ratelimit-reset (limit and remaining sent) there is no window to speak of: Left is
// the least reading since what is left last refilled, and OthersPerSecond and OwnShare come
// from the drops of x-ratelimit-remaining over the last seconds (fading over ten), once they
// span 200 ms. With no rate-limit header at all nothing is known: -1, 0 and -1.
type Estimate struct {
	Limit int // x-ratelimit-limit at the last reading; -1 before one
	Left  int // the least x-ratelimit-remaining read of the current window; -1 before a reading
	// OthersPerSecond is how fast the org's other clients spend the budget, in units a
	// second: what they spent of the last window over its length, or before the pacer has
	// seen one turn, their pace in the current window.
	OthersPerSecond float64
	// OwnShare is the part of the last window's spent budget that the pacer's own requests
	// spent, 0 to 1; -1 before the pacer has seen a window turn.
	OwnShare float64
}

// Estimate returns the pacer's current reading of the org's budget.
func (p *Pacer) Estimate() Estimate {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := Estimate{Limit: -1, Left: -1, OthersPerSecond: p.foreign, OwnShare: -1}
	if p.win.reset.IsZero() {
		p.blindPace.estimate(&e)
		return e
	}
	e.Limit, e.Left = p.win.limit, p.win.lowest
	if p.theirsKnown && p.win.length > 0 {
		e.OthersPerSecond = p.theirsLast / p.win.length.Seconds()
		if spent := p.theirsLast + p.mineLast; spent > 0 {
			e.OwnShare = p.mineLast / spent
		}
	}
	return e
}

// PausedUntil is when the current pause ends; zero when not paused.
func (p *Pacer) PausedUntil() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.clock.Now().Before(p.pausedUntil) {
		return time.Time{}
	}
	return p.pausedUntil
}

// pause stops every turn until t (at most kustomer.MaxWait from now); p.mu is held.
func (p *Pacer) pause(now, t time.Time) {
	if limit := now.Add(kustomer.MaxWait); t.After(limit) {
		t = limit
	}
	if t.After(p.pausedUntil) {
		p.pausedUntil = t
	}
	p.paused = true
	p.spare = 0
	p.cancelNext(now)
}

// end is when, at the latest, a request must go to land in the current window; p.mu is held.
// Before the pacer has seen a window turn, it is the earliest end the rounded reset allows.
func (p *Pacer) end() time.Time {
	if p.learned {
		return p.learnedEnd
	}
	return p.win.reset.Add(-resetGranularity)
}

// lastEnd is when the current window may end at the latest: until then the org's other
// clients keep their share; p.mu is held. Before the pacer has seen a window turn, it is the
// latest end the reset allows, rounded either way.
func (p *Pacer) lastEnd() time.Time {
	if p.learned {
		return p.learnedEnd
	}
	last := p.win.reset.Add(resetGranularity)
	if !p.latestEnd.IsZero() && p.latestEnd.Before(last) {
		last = p.latestEnd
		if earliest := p.win.reset.Add(-resetGranularity); last.Before(earliest) {
			last = earliest
		}
	}
	return last
}

// Observe adapts the pace to the budget Kustomer reported on an answer. inflight is the number
// of other requests sent but not yet answered, which the reported budget may not count yet.
// Call it once for every answer, before OrgThrottled.
func (p *Pacer) Observe(rl kustomer.RateLimit, inflight int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	defer p.dispatch(now)
	p.answered(now, inflight)
	if rl.Reset.IsZero() && p.win.reset.IsZero() {
		p.observeBlind(now, rl, inflight)
		if !now.Before(p.pausedUntil) {
			// Nothing tells where the window ends: the configured pace, less what the
			// other clients spend and what 429s cut.
			p.setRate(now, p.ceiling)
		}
	}
	p.observe(now, rl, inflight)
}

// answered matches an answer to the request it most likely answers, the oldest one not yet
// answered, and keeps how long that took; p.mu is held.
func (p *Pacer) answered(now time.Time, inflight int) {
	// Turns handed out within sendGrace may not be in flight yet, nor counted in inflight.
	fresh := len(p.sent) - sort.Search(len(p.sent), func(k int) bool { return !p.sent[k].at.Before(now.Add(-sendGrace)) })
	if extra := len(p.sent) - fresh - (max(inflight, 0) + 1); extra > 0 {
		p.sent = slices.Delete(p.sent, 0, extra) // requests that ended without an answer
	}
	if len(p.sent) == 0 {
		return
	}
	p.last = p.sent[0]
	p.sent = p.sent[1:]
	p.latencies = append(p.latencies, now.Sub(p.last.at))
	if len(p.latencies) > latencyKeep {
		p.latencies = p.latencies[1:]
	}
}

// minLatency is the shortest recent time from a turn to its answer; p.mu is held. Answers
// matched in turn order never make it shorter than the true shortest.
func (p *Pacer) minLatency() time.Duration {
	if len(p.latencies) == 0 {
		return 0
	}
	return max(slices.Min(p.latencies), 0)
}

// observe takes one reading into the plan; p.mu is held.
func (p *Pacer) observe(now time.Time, rl kustomer.RateLimit, inflight int) {
	if rl.Remaining < 0 || rl.Reset.IsZero() {
		return
	}
	if rl.Remaining > 0 {
		p.blind = 0
	}
	switch d := rl.Reset.Sub(p.win.reset); {
	case p.win.reset.IsZero():
		p.win = window{reset: rl.Reset, lowest: rl.Remaining, limit: rl.Limit, length: wholeSeconds(rl.Reset.Sub(now)),
			began: now, read: 1, first: rl.Remaining, firstTurn: p.last}
	case d >= 1500*time.Millisecond || d >= 500*time.Millisecond && rl.Remaining > p.win.lowest+readingNoise(inflight, rl.Limit):
		// A reset read as seconds from now wobbles by up to a second, and answers come
		// out of order, each a little above the lowest: a turn shows a reset well later,
		// or a later one and much more left.
		p.turned(now, rl)
	case d <= -500*time.Millisecond && !p.wobbled(now, d, rl, inflight):
		return // an answer from a window that has ended
	default:
		// Answers arrive out of order: within one window keep the lowest reading, and the
		// lowest reset (read as seconds from now, it wobbles by up to a second).
		p.win.read++
		if rl.Reset.Before(p.win.reset) {
			p.win.reset = rl.Reset
			p.resetLowered()
		}
		if rl.Remaining >= p.win.lowest && rl.Remaining > 0 {
			return
		}
		p.win.lowest = rl.Remaining
		p.estimateForeign(now)
	}
	if rl.Remaining == 0 {
		p.spent(now)
		return
	}
	p.spread(now, inflight)
}

// wobbled reports whether a reading whose reset is d below the window's lowest yet is of this
// window all the same; p.mu is held. Read as seconds from now rounded down, the reset of a
// window's first request is its whole length, and those of the requests just after it a
// second less: taken for answers from the window before, they left the window's length
// unlearned for a second (a second too long: 96.5 % of a 5 s window used). A reading is of
// a window the pacer saw begin if its reset is less than a second and a half below and at
// least a second ahead, it leaves about as much as the lowest yet, and it answers a request
// whose turn came after the turn of the request the window's first reading answers by more
// than the spread of recent latencies (so that it reached Kustomer later). A reset less than
// a second ahead is of a window ending: read as seconds from now when the answer is written,
// a request served just before the end reads 0.
func (p *Pacer) wobbled(now time.Time, d time.Duration, rl kustomer.RateLimit, inflight int) bool {
	if !p.win.seenBegin || d <= -1500*time.Millisecond || rl.Reset.Sub(now) < time.Second || rl.Remaining < p.win.lowest-(inflight+1) {
		return false
	}
	if p.win.firstTurn.n == 0 || p.last.n <= p.win.firstTurn.n || len(p.latencies) == 0 {
		return false
	}
	return p.last.at.Sub(p.win.firstTurn.at) > slices.Max(p.latencies)-p.minLatency()
}

// turned takes the first reading from a new window; p.mu is held. The new window began no
// later than the turn of the request this reading answers, which was at most the answer's
// time less the shortest latency: windows being whole seconds, that tells where it ends,
// more closely than its rounded reset does. (A window need not begin where the one before
// ended: it begins with the first request after that.)
func (p *Pacer) turned(now time.Time, rl kustomer.RateLimit) {
	// The step between two windows' resets is never much shorter than a window, and as
	// long as one unless the second began after a gap or the reset wobbles: windows all
	// last as long, so the shortest step yet is a fair guess. Two starts the pacer saw
	// closely are a better one: they are whole windows apart.
	step := wholeSeconds(rl.Reset.Sub(p.win.reset))
	if d := rl.Reset.Sub(p.win.reset).Round(time.Second); d >= time.Second && p.win.sampled(now) {
		step = min(step, d)
	}
	if p.step == 0 || step < p.step {
		p.step = step
	}
	start, learned := p.windowStart(now)
	// A start seen right after a pause is no later than the window's, but may be well
	// after it: the window can have turned during the pause (a Retry-After rounded up
	// outlasts the window). Two starts are whole windows apart only if neither is.
	loose := !p.resumedAt.IsZero() && start.Sub(p.resumedAt) < 2*learnGap
	if learned && !p.lastStart.IsZero() && !loose && !p.looseStart {
		if d := start.Sub(p.lastStart).Round(time.Second); d >= time.Second && d < p.step {
			p.step = d
		}
	}
	p.looseStart = loose
	p.lastStart = time.Time{}
	length := min(wholeSeconds(rl.Reset.Add(resetGranularity).Sub(now)), p.step)
	p.learned = learned
	// Whether or not the pacer sent closely enough to tell where the window began, it
	// began before the request this reading answers reached Kustomer, at least half the
	// shortest latency ago: it ends no later than a window after that. After a gap in
	// the pacer's turns (it left the last of a window to the other clients) that bound is
	// still well before the latest end its reset allows.
	p.latestEnd = now.Add(-p.minLatency() / 2).Add(length)
	if learned {
		p.lastStart = start
		// The window ends within a rounding of its reset, whichever way it was rounded.
		p.learnedEnd = start.Add(length)
		if earliest := rl.Reset.Add(-resetGranularity); p.learnedEnd.Before(earliest) {
			p.learnedEnd = earliest
		}
		if latest := rl.Reset.Add(resetGranularity); p.learnedEnd.After(latest) {
			p.learnedEnd = latest
		}
	}
	p.resetBefore = time.Time{}
	if p.win.sampled(now) {
		p.resetBefore = p.win.reset
	}
	p.learnTheirs(now, length)
	p.win = window{reset: rl.Reset, lowest: rl.Remaining, limit: rl.Limit, length: length,
		began: now, read: 1, first: rl.Remaining, firstTurn: p.last}
	p.win.before = max(float64(rl.Limit-rl.Remaining-1-p.mineSince(p.last.at)), 0)
	p.win.seenBegin = true
	p.win.theirs = p.win.before
	p.foreignBefore = p.foreign
	p.pausedUntil = time.Time{} // the spent window has turned: no need to wait it out
	p.probing = false
}

// sampled reports whether the window's readings came often enough over long enough for the
// lowest reset to be within a rounding of its end read the lowest way, whichever way the
// reset is written; p.mu is held.
func (w window) sampled(now time.Time) bool {
	return w.read >= sampledReadings && now.Sub(w.began) >= time.Second
}

// resetLowered takes a lower reset read for the current window; p.mu is held. Read as
// seconds from now, resets wobble by up to a second, but the lowest of two windows read
// alike are whole windows apart: a shorter step than the shortest yet brings the learned end
// closer.
func (p *Pacer) resetLowered() {
	if p.resetBefore.IsZero() {
		return
	}
	d := p.win.reset.Sub(p.resetBefore).Round(time.Second)
	if d < time.Second || d >= p.step {
		return
	}
	p.step = d
	if p.learned && p.lastStart.Add(d).Before(p.learnedEnd) {
		p.learnedEnd = p.lastStart.Add(d)
		if earliest := p.win.reset.Add(-resetGranularity); p.learnedEnd.Before(earliest) {
			p.learnedEnd = earliest
		}
		p.win.length = min(p.win.length, d)
	}
}

// windowStart is when, at the latest, the window a reading at now comes from began, and
// whether the pacer sent closely enough around then to tell; p.mu is held. The window began
// before the request the reading answers reached Kustomer, about half its latency after its
// turn, and that turn was no later than the shortest latency ago.
func (p *Pacer) windowStart(now time.Time) (time.Time, bool) {
	latest := now.Add(-p.minLatency())
	// recent[i-1] is the last turn at or before latest.
	i := sort.Search(len(p.recent), func(k int) bool { return p.recent[k].After(latest) })
	if i < 2 {
		return time.Time{}, false
	}
	if p.recent[i-1].Sub(p.recent[i-2]) > learnGap {
		if !p.resumedAtEnd(p.recent[i-2], p.recent[i-1]) {
			return time.Time{}, false
		}
		if p.resumedAt.Sub(p.learnedEnd) >= sendGrace {
			// The pause outlasted the learned end (a Retry-After rounded up): the
			// window began at that end, on a clock of the server's, or with the
			// first request after it, which came no later than the first turn.
			return p.learnedEnd, true
		}
	}
	return p.recent[i-1].Add(p.minLatency() / 2), true
}

// resumedAtEnd reports whether the turns before and after came either side of the end of a
// pause that waited out a spent window to its learned end or past it, the second right
// after the pause; p.mu is held. The window the second went in began then: at the learned
// end, or with the first request after it. (The gap between the two turns is the pause,
// not a gap in which the window could have begun unseen: without this the window after
// each pause went unlearned and was spread to the latest end its reset allows, a second
// late.)
func (p *Pacer) resumedAtEnd(before, after time.Time) bool {
	return p.learned && !p.resumedAt.IsZero() && before.Before(p.resumedAt) && !after.Before(p.resumedAt) &&
		after.Sub(p.resumedAt) <= learnGap && !p.resumedAt.Before(p.learnedEnd) && p.resumedAt.Sub(p.learnedEnd) <= kustomer.MaxWait
}

// wholeSeconds is d rounded up to whole seconds.
func wholeSeconds(d time.Duration) time.Duration {
	return max((d+time.Second-1)/time.Second*time.Second, time.Second)
}

// spread paces what is left of the window over the time until its end; p.mu is held.
// Requests in flight will spend part of what is left, but some of them are already counted
// in the reading: keep at least one for the rest of the window.
func (p *Pacer) spread(now time.Time, inflight int) {
	if p.probing {
		return
	}
	end := p.end()
	if p.foreign > 0 {
		// Other clients spend too: until the latest end, they keep their share.
		end = p.lastEnd()
	}
	// A request reaches Kustomer about half a latency after its turn: the pacer spends what
	// is left by then, alone or once it has learned where the window ends. (With other
	// clients and an end not learned, leaving them their share to the latest end, it keeps
	// to the end itself.) A request sent later lands in the next window: from then on, the
	// pace of a new one.
	reach := time.Duration(0)
	if p.alone() || p.learned {
		reach = p.minLatency() / 2
	}
	p.switchAt = time.Time{}
	switch last := end.Add(-reach); {
	case p.learned && last.After(now):
		p.switchAt = last
	case p.learned:
		// Past the learned end, and no reading from the next window yet: the learned end
		// can be a little early, and the next window has its own budget. Go on at a
		// window's pace (a turn a learnGap at least, as below); a refusal ends that.
		p.setRate(now, p.crossingRate())
		return
	}
	// What is left is spread over a probeStep at least, so that a reading taken late in a
	// window does not send it all at once. Where the window's end is learned, the floor is
	// the shortest latency instead (sendGrace to probeStep): a reading comes about that often
	// near the end, and with a ceiling at the budget's pace the units of the window's last
	// 100 ms, spread over 100 ms, were left unsent (alone, 20-60 ms: 197-199 of 200 a window).
	floor := probeStep
	if p.learned {
		floor = min(max(p.minLatency(), sendGrace), probeStep)
	}
	left := max(end.Sub(now)-reach, floor)
	avail := max(float64(p.win.lowest)-p.uncounted(now, inflight)-p.reserve(left), 1)
	r := rate.Limit(avail / left.Seconds())
	// From near the window's end on it sends a turn a learnGap at least, so that the turns
	// either side of the end tell where the next window begins.
	var from time.Time
	switch {
	case p.learned:
		// From a learnGap before the learned end, until the next window's first reading
		// (crossingRate): the next window stays learned. (At a pace near a turn a
		// learnGap, a small budget or a small share of it, the gap across the end was a
		// little wider at every other turn: the next window went unlearned, was spent by
		// the earliest end its reset allows, and every probe after that met a 429 until
		// the window ended.)
		from = p.switchAt.Add(-learnGap)
	case p.foreign > 0:
		// Leaving the rest of a window to the other clients, the pacer would send
		// nothing around its turn: the next window would go unlearned and be spread to
		// the latest end its reset allows. From the earliest end on.
		from = p.end()
	}
	p.floorAt = time.Time{}
	if !from.IsZero() {
		if now.Before(from) {
			p.floorAt = from
		} else {
			r = max(r, learnPace)
		}
	}
	p.setRate(now, r)
}

// uncounted is how many of the pacer's own requests in flight the lowest reading is taken
// not to count yet; p.mu is held. Those that got their turn within the shortest latency
// went after the request it answers; of the others in flight, sent before them, about half
// did (answers come back out of order).
func (p *Pacer) uncounted(now time.Time, inflight int) float64 {
	latest := now.Add(-p.minLatency())
	sure := min(len(p.recent)-sort.Search(len(p.recent), func(k int) bool { return p.recent[k].After(latest) }), inflight)
	return float64(inflight+sure) / 2
}

// estimateForeign updates how fast the org's other clients spend the budget from the lowest
// reading of the window; p.mu is held. Between the window's first reading and this one the
// org spent first-lowest units, the pacer's own turns between the two requests they answer
// being some of them. Answers are matched to turns roughly, so over a short time the count is
// noisy: until foreignPrior has passed it leans on the last window's figure.
func (p *Pacer) estimateForeign(now time.Time) {
	// The reading counts the turns until its request's, which went no later than the
	// shortest latency ago, and some of those after it: answers come back out of order.
	// Count the turns until the request the answer is matched to, and half of those
	// after it, as the pacer's (counting them all made the estimate err low by the
	// requests in flight: at 100-300 ms a steady client at 60 % was taken for 48 % over the
	// part of a window seen, and refused at the window's end).
	dt := now.Add(-p.minLatency()).Sub(p.win.firstTurn.at).Seconds()
	if dt <= 0 || p.win.firstTurn.n == 0 {
		return
	}
	mine := p.granted - p.win.firstTurn.n
	theirs := float64(p.win.first - p.win.lowest - mine)
	p.win.theirs = max(p.win.theirs, p.win.before+theirs)
	prior := foreignPrior.Seconds()
	p.foreign = max((theirs+p.foreignBefore*prior)/(dt+prior), 0)
}

// reserve is what the pacer leaves the org's other clients of the current window, left being
// the time until its end; p.mu is held. Once the pacer has seen a window turn, it is what
// they spent of the last window and have yet to spend of this one, and a little more:
// whether they spend evenly, all at the start or in bursts, their share is theirs (of a
// window it saw only a part of, no more than their pace so far over the time left). Before,
// they are taken to spend evenly, at the pace seen so far.
func (p *Pacer) reserve(left time.Duration) float64 {
	if !p.theirsKnown {
		// At the pace seen so far, but no more than twice what they have spent of the
		// window yet: a client that spent its share at the window's start is not
		// taken to go on at that pace.
		return min(p.foreign*left.Seconds(), 2*p.win.theirs)
	}
	if p.alone() {
		return 0
	}
	share := max(p.theirsLast*(1+theirsMargin)+1-p.win.theirs, 0)
	if p.theirsGuessed {
		// Extrapolated from the part of the last window the pacer saw: a client that
		// came during it is taken to have spent at its pace over the whole, and one
		// that spends what it is left (another deployment of the worker) spent only
		// what this pacer left it. Leave them no more than their pace in this window
		// over the time left: two pacers that do so together spend what is left by the
		// end, however they split it, and the next window, seen whole, sets the share.
		share = min(share, p.foreign*left.Seconds())
	}
	return share
}

// alone reports whether the org's other clients spent nothing of the last window the pacer
// saw turn, or too little to tell from the noise of matching answers to turns (theirsNoise of
// the budget), and nothing yet of this one; p.mu is held.
func (p *Pacer) alone() bool {
	return p.theirsKnown && p.theirsLast < max(1, theirsNoise*float64(p.win.limit)) && p.foreign == 0
}

// learnTheirs takes what the org's other clients spent of the window that has just ended
// as their share of the next ones; p.mu is held. Of a window the pacer joined midway it saw
// only a part: what they spent in that part counts for the whole window, at the same pace,
// if the part was a quarter of it at least.
func (p *Pacer) learnTheirs(now time.Time, length time.Duration) {
	p.mineLast = max(float64(p.win.limit-p.win.lowest)-p.win.theirs, 0)
	if p.win.seenBegin {
		p.theirsLast, p.theirsKnown, p.theirsGuessed = p.win.theirs, true, false
		return
	}
	seen := now.Sub(p.win.firstTurn.at)
	if p.win.firstTurn.n == 0 || seen < length/4 {
		return
	}
	p.theirsLast = min(p.win.theirs*max(length.Seconds()/seen.Seconds(), 1), float64(p.win.limit))
	p.theirsKnown, p.theirsGuessed = true, true
}

// mineSince is how many of the pacer's turns came after t that a window beginning then may
// count before its first reading, the turn at t aside; p.mu is held. It counts them only
// when the pacer knows where the window began.
func (p *Pacer) mineSince(t time.Time) int {
	if !p.learned {
		return 0
	}
	from := p.lastStart.Add(-p.minLatency() / 2)
	i := sort.Search(len(p.recent), func(k int) bool { return !p.recent[k].Before(from) })
	j := sort.Search(len(p.recent), func(k int) bool { return !p.recent[k].Before(t) })
	return max(j-i, 0)
}

// windowRate is the pace at which a window's budget, less what the org's other clients
// spent of the last one, lasts the window; p.mu is held.
func (p *Pacer) windowRate() rate.Limit {
	budget := float64(max(p.win.limit, 1))
	if p.theirsKnown && !p.alone() {
		budget = max(budget-p.theirsLast-1, 1)
	}
	return rate.Limit(budget / p.win.length.Seconds())
}

// crossingRate is the pace from a learned end until the next window's first reading: a
// window's, and a turn a learnGap at least (see spread); p.mu is held.
func (p *Pacer) crossingRate() rate.Limit { return max(p.windowRate(), learnPace) }

// readingNoise is how far a reading of what is left may stray from the lowest of its window
// without telling anything: the requests in flight, or a tenth of the limit.
func readingNoise(inflight, limit int) int { return max(inflight+1, limit/10) }

// spent stops every turn until the current window ends; p.mu is held. It returns how long
// the pause lasts.
func (p *Pacer) spent(now time.Time) time.Duration {
	p.switchAt, p.floorAt = time.Time{}, time.Time{}
	end := p.end()
	switch {
	case now.Before(end):
		p.pause(now, end)
		if p.learned {
			// Resume at the pace that spends one window's budget over the window; the
			// first readings from it adjust that.
			p.probing = false
			p.setRate(now, p.windowRate())
		} else {
			p.probing = true
			p.setRate(now, rate.Every(probeStep))
		}
		return end.Sub(now)
	case p.learned && p.last.at.Before(end):
		// The answer to a request sent before the end: by now the window has turned.
		p.setRate(now, p.windowRate())
		return 0
	}
	// Past the end, and the window has not turned (or the pacer cannot know): probe for
	// the next window, one request a step.
	p.learned = false
	p.probing = true
	p.setRate(now, rate.Every(probeStep))
	return probeStep
}

// OrgThrottled pauses every caller after an org-wide 429 and says for how long: Retry-After
// when Kustomer sent it, else until the window can have turned, else a short pause that grows
// while 429s keep coming without a hint.
func (p *Pacer) OrgThrottled(rl kustomer.RateLimit) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	defer p.dispatch(now)
	switch {
	case rl.RetryAfter > 0:
		d := min(rl.RetryAfter, kustomer.MaxWait)
		p.cutBlind(now, d)
		p.pause(now, now.Add(d))
		p.blindPace.pauseEnd = p.pausedUntil
		return d
	case rl.Reset.After(now.Add(-resetGranularity)):
		// The window may have a second to run past a reset rounded down.
		rl.Remaining = 0
		before := p.lim.Limit()
		p.observe(now, rl, 0)
		switch {
		case now.Before(p.pausedUntil):
			return p.pausedUntil.Sub(now)
		case p.probing || p.lim.Limit() < before:
			return probeStep
		}
		return 0
	}
	if now.Before(p.pausedUntil) {
		return p.pausedUntil.Sub(now) // it went before the pause began
	}
	if p.last.at.Before(p.blindPace.pauseEnd) {
		return 0 // it went before the last pause began: no news
	}
	first := p.blindPace.firstPause()
	if p.blind > 0 && now.Sub(p.blindPace.pauseEnd) > first<<min(p.blind-1, blindPauseDoublings) {
		p.blind = 0 // not in a row: requests went through since the last pause
	}
	p.cutBlind(now, 0)
	p.blind++
	d := min(first<<min(p.blind-1, blindPauseDoublings), kustomer.MaxWait)
	p.pause(now, now.Add(d))
	p.blindPace.pauseEnd = p.pausedUntil
	return d
}
