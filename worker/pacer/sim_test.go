package pacer

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// resetReading is one reading of x-ratelimit-reset that Kustomer's documentation leaves open.
type resetReading int

const (
	epochUp     resetReading = iota // UTC epoch seconds of the window's end, rounded up
	epochDown                       // the same, rounded down
	deltaUp                         // seconds from the moment the request was served, rounded up
	deltaDown                       // the same, rounded down
	resetAbsent                     // no x-ratelimit-reset; the limit and what is left are sent
	allAbsent                       // no rate-limit headers at all
)

func (r resetReading) String() string {
	return [...]string{"epoch seconds rounded up", "epoch seconds rounded down", "seconds from now rounded up",
		"seconds from now rounded down", "no reset", "no rate-limit headers"}[r]
}

// orgWindow is Kustomer's org budget as one reading models it: budget units per window of
// length, a refused request spending nothing. Windows begin with the first request after the
// one before ended, or, with a non-zero origin, at origin and every length after it.
type orgWindow struct {
	budget     int
	length     time.Duration
	origin     time.Time
	reset      resetReading
	retryAfter bool // a 429 says when to retry, in whole seconds rounded up

	end   time.Time
	used  int
	begun int // windows begun so far
}

// take is one request arriving at t: whether it was admitted, and what is left.
func (w *orgWindow) take(t time.Time) (bool, int, time.Time) {
	if w.end.IsZero() || !t.Before(w.end) {
		w.end, w.used = t.Add(w.length), 0
		if !w.origin.IsZero() {
			w.end = w.origin.Add((t.Sub(w.origin)/w.length + 1) * w.length)
		}
		w.begun++
	}
	ok := w.used < w.budget
	if ok {
		w.used++
	}
	return ok, w.budget - w.used, w.end
}

// reading is the rate-limit reading, as the client parses it, of the answer received at
// received to a request served at served, with what its take returned.
func (w *orgWindow) reading(ok bool, remaining int, end, served, received time.Time) kustomer.RateLimit {
	rl := kustomer.RateLimit{Limit: w.budget, Remaining: remaining}
	if !ok {
		rl.Remaining = 0
		if w.retryAfter {
			rl.RetryAfter = ceilSecond(end.Sub(served))
		}
	}
	switch w.reset {
	case epochUp:
		rl.Reset = end.Add(time.Second - 1).Truncate(time.Second)
	case epochDown:
		rl.Reset = end.Truncate(time.Second)
	case deltaUp:
		rl.Reset = received.Add(ceilSecond(end.Sub(served)))
	case deltaDown:
		rl.Reset = received.Add(end.Sub(served).Truncate(time.Second))
	case allAbsent:
		rl.Limit, rl.Remaining = -1, -1
	}
	return rl
}

// ceilSecond is d rounded up to whole seconds.
func ceilSecond(d time.Duration) time.Duration {
	return (d + time.Second - 1).Truncate(time.Second)
}

// simConfig is one cell of the simulation: the org's budget and how Kustomer reports it, the
// pacer's ceiling and callers, the latency, and the org's other client.
type simConfig struct {
	org        orgWindow
	perMinute  int           // the pacer's ceiling
	callers    int           // callers always waiting for a turn
	latency    time.Duration // the shortest answer: request and answer take half each
	jitter     time.Duration // answers take up to this much longer
	other      float64       // the other client's requests a second, on average; 0: alone
	otherLead  time.Duration // how long before the pacer the other client starts
	pattern    otherPattern  // how the other client spends
	otherFrom  time.Duration // when the other client starts, after the pacer; with otherLead 0
	otherUntil time.Duration // when the other client stops, after the pacer; 0: never
	windows    int           // how long the run lasts, in windows
	originLead time.Duration // with fixed windows, how long before the pacer they started
	wallClock  bool          // windows fixed to whole multiples of their length since the epoch
	fixed      bool          // a fixed limiter, not the pacer: the headers of answers go unread
}

// otherPattern is how the org's other client spends its share.
type otherPattern int

const (
	steady      otherPattern = iota // evenly
	frontLoaded                     // its whole share in the first second of each window
	bursts                          // three bursts a window at random moments, its share in all
)

func (o otherPattern) String() string { return [...]string{"steady", "front-loaded", "in bursts"}[o] }

// otherClient is the org's other client in a simulated run: when it sends.
type otherClient struct {
	pattern  otherPattern
	every    time.Duration // between two steady requests
	share    int           // requests a window, for the patterns that follow windows
	from     time.Time
	until    time.Time // zero: never stops
	rng      *rand.Rand
	planned  []time.Time // the requests of the window planned, earliest first
	next     time.Time   // the next request; zero when none is left
	lastPlan time.Time   // the start of the window planned last
}

// advance moves to the client's next request, planning the next window's when needed, given
// the org's current window.
func (c *otherClient) advance(org *orgWindow) {
	switch {
	case c.pattern == steady && c.next.IsZero():
		c.next = c.from
	case c.pattern == steady:
		c.next = c.next.Add(c.every)
	default:
		if len(c.planned) == 0 {
			c.plan(org)
		}
		c.next, c.planned = c.planned[0], c.planned[1:]
	}
	if !c.until.IsZero() && !c.next.Before(c.until) {
		c.next = time.Time{}
	}
}

// plan lays out the requests of the window after the org's current one (the first: from
// when the client starts).
func (c *otherClient) plan(org *orgWindow) {
	start := c.from
	if org.end.After(c.lastPlan) && org.end.After(start) {
		start = org.end
	}
	c.lastPlan = start
	switch c.pattern {
	case frontLoaded:
		for i := range c.share {
			c.planned = append(c.planned, start.Add(time.Duration(i)*time.Second/time.Duration(c.share)))
		}
	case bursts:
		for b := range 3 {
			at := start.Add(time.Duration(c.rng.Int64N(int64(org.length - time.Second))))
			for i := b; i < c.share; i += 3 {
				c.planned = append(c.planned, at.Add(time.Duration(i/3)*10*time.Millisecond))
			}
		}
		slices.SortFunc(c.planned, func(a, b time.Time) int { return a.Compare(b) })
	}
}

// simRun is what each of the org's windows got in a simulated run, window by window.
type simRun struct {
	mine, theirs, refusedTheirs, refusedMine []int
	sides                                    [][]int // each deployment's requests that reached the org
	// The windows in which the other client sent its first and its last request, if it
	// started or stopped during the run; -1 if not.
	otherStarted, otherStopped int
}

// count adds one to the counter of window w (from 0).
func count(xs *[]int, w int) {
	for len(*xs) <= w {
		*xs = append(*xs, 0)
	}
	(*xs)[w]++
}

// simRequest is one of the pacer's requests: it reaches the org at served and is answered
// at due.
type simRequest struct {
	served, due time.Time
	arrived     bool // it has reached the org
	ok          bool
	remaining   int
	end         time.Time // the end of the window it was served in
}

// simulation is the state of one simulated run.
type simulation struct {
	cfg   simConfig
	sides []*side // the deployments of the worker, each with a pacer of its own
	org   *orgWindow
	run   simRun
	other *otherClient
}

// side is one deployment of the worker: a pacer and the requests it sent.
type side struct {
	r        *pacerRig
	requests []*simRequest // sent, not yet answered, in the order sent
	seen     int           // turns sent so far
	id       int
	mine     []int // requests that reached the org, per window
}

// simulate runs a pacer against cfg on the fake clock, in 1 ms steps.
func simulate(t *testing.T, start time.Time, cfg simConfig) simRun {
	t.Helper()
	return simulateSides(t, start, cfg, 1)
}

// simulateSides runs n deployments, each with a pacer and cfg.callers, against cfg on the fake
// clock, in 1 ms steps. Run.mine counts them all; Run.sides each.
func simulateSides(t *testing.T, start time.Time, cfg simConfig, n int) simRun {
	t.Helper()
	org := cfg.org
	switch {
	case cfg.wallClock:
		org.origin = start.Truncate(org.length)
	case cfg.originLead > 0:
		org.origin = start.Add(-cfg.originLead)
	}
	s := &simulation{cfg: cfg, org: &org, other: newOther(start, cfg), run: simRun{otherStarted: -1, otherStopped: -1}}
	for k := range n {
		// A second deployment starts a little later, at another sub-second.
		s.sides = append(s.sides, &side{r: newPacerRig(t, cfg.perMinute, start.Add(time.Duration(k)*1370*time.Millisecond))})
	}
	end := start.Add(time.Duration(cfg.windows) * org.length)
	for now := start; now.Before(end); now = now.Add(time.Millisecond) {
		s.step(now)
	}
	w := org.begun - 1
	for _, sd := range s.sides {
		s.run.sides = append(s.run.sides, sd.mine)
	}
	for _, xs := range append([]*[]int{&s.run.mine, &s.run.theirs, &s.run.refusedTheirs, &s.run.refusedMine}, sidesOf(s.run.sides)...) {
		for len(*xs) <= w {
			*xs = append(*xs, 0)
		}
	}
	return s.run
}

func sidesOf(xs [][]int) []*[]int {
	var ps []*[]int
	for i := range xs {
		ps = append(ps, &xs[i])
	}
	return ps
}

// newOther is the other client of cfg, for a run from start.
func newOther(start time.Time, cfg simConfig) *otherClient {
	c := &otherClient{pattern: cfg.pattern, from: start.Add(cfg.otherFrom - cfg.otherLead), rng: rand.New(rand.NewPCG(1, 2))}
	if cfg.otherUntil > 0 {
		c.until = start.Add(cfg.otherUntil)
	}
	if cfg.other <= 0 {
		return c // next stays zero: it never sends
	}
	c.every = time.Duration(float64(time.Second) / cfg.other)
	c.share = int(cfg.other*cfg.org.length.Seconds() + 0.5)
	c.advance(&orgWindow{length: cfg.org.length})
	return c
}

// step moves the run to now: the pacers' turns, the requests that reach the org, the answers
// that come back, and callers enough waiting.
func (s *simulation) step(now time.Time) {
	for _, sd := range s.sides {
		if sd.r.clk.Now().After(now) {
			continue // not started yet
		}
		sd.r.advanceTo(now)
		s.send(sd)
	}
	s.arrive(now)
	for _, sd := range s.sides {
		if !sd.r.clk.Now().After(now) {
			s.answer(sd, now)
		}
	}
}

// answer gives sd's pacer the answers due by now, and keeps callers enough waiting.
func (s *simulation) answer(sd *side, now time.Time) {
	for i := 0; i < len(sd.requests); {
		q := sd.requests[i]
		if !q.arrived || q.due.After(now) {
			i++
			continue
		}
		sd.requests = append(sd.requests[:i], sd.requests[i+1:]...)
		rl := s.org.reading(q.ok, q.remaining, q.end, q.served, now)
		if !s.cfg.fixed {
			sd.r.p.Observe(rl, len(sd.requests))
		}
		if !q.ok {
			sd.r.p.OrgThrottled(s.throttled(rl, now))
		}
		s.send(sd)
		s.arrive(now)
	}
	for sd.r.waitingNow() < s.cfg.callers {
		sd.r.wait(sd.id, Live)
		sd.id++
	}
}

// throttled is the reading of a 429 as the pacer is given it: a fixed limiter only waits as
// long as the answer says, Retry-After or else the reset, or else a second.
func (s *simulation) throttled(rl kustomer.RateLimit, now time.Time) kustomer.RateLimit {
	if !s.cfg.fixed {
		return rl
	}
	wait := rl.RetryAfter
	switch {
	case wait > 0:
	case rl.Reset.After(now):
		wait = rl.Reset.Sub(now)
	default:
		wait = time.Second
	}
	return kustomer.RateLimit{Limit: -1, Remaining: -1, RetryAfter: wait}
}

// send takes the turns sd's pacer handed out so far as requests on their way.
func (s *simulation) send(sd *side) {
	sd.r.settle()
	for ; sd.seen < len(sd.r.got); sd.seen++ {
		lat := s.cfg.latency + time.Duration(sd.seen*37%101)*s.cfg.jitter/100
		turn := sd.r.got[sd.seen].at
		sd.requests = append(sd.requests, &simRequest{served: turn.Add(lat / 2), due: turn.Add(lat)})
	}
}

// arrive takes to the org, in the order they reach it, every request of the pacers' and of
// the other client's that reaches it by now.
func (s *simulation) arrive(now time.Time) {
	for {
		first, from := s.firstArrival(now)
		switch {
		case !s.other.next.IsZero() && !s.other.next.After(now) && (first == nil || s.other.next.Before(first.served)):
			ok, _, _ := s.org.take(s.other.next)
			if s.cfg.otherFrom > 0 && s.run.otherStarted < 0 {
				s.run.otherStarted = s.org.begun - 1
			}
			if s.cfg.otherUntil > 0 {
				s.run.otherStopped = s.org.begun - 1 // the last so far
			}
			count(&s.run.theirs, s.org.begun-1)
			if !ok {
				count(&s.run.refusedTheirs, s.org.begun-1)
			}
			s.other.advance(s.org)
		case first != nil:
			first.arrived = true
			first.ok, first.remaining, first.end = s.org.take(first.served)
			count(&s.run.mine, s.org.begun-1)
			count(&from.mine, s.org.begun-1)
			if !first.ok {
				count(&s.run.refusedMine, s.org.begun-1)
			}
		default:
			return
		}
	}
}

// firstArrival is the pacers' request that reaches the org first by now, and whose it is.
func (s *simulation) firstArrival(now time.Time) (*simRequest, *side) {
	var first *simRequest
	var from *side
	for _, sd := range s.sides {
		for _, q := range sd.requests {
			if !q.arrived && !q.served.After(now) && (first == nil || q.served.Before(first.served)) {
				first, from = q, sd
			}
		}
	}
	return first, from
}
