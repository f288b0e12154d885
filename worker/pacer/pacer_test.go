package pacer

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// t0 is a quarter past a whole second, so that a reset rounded up to whole seconds is later
// than the window's real end.
var t0 = time.Date(2026, 11, 25, 12, 0, 0, 250_000_000, time.UTC)

// at is the time s seconds after 12:00:00.
func at(s float64) time.Time {
	return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).Add(time.Duration(s * float64(time.Second)))
}

func reading(limit, remaining int, reset time.Time) kustomer.RateLimit {
	return kustomer.RateLimit{Limit: limit, Remaining: remaining, Reset: reset}
}

func fixedPacer(perMinute int, now time.Time) *Pacer {
	return New(perMinute, WithClock(&fakeClock{now: now}))
}

func TestPacerFollowsTheReportedBudget(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	read := func(remaining int, resetIn time.Duration) kustomer.RateLimit {
		return reading(1000, remaining, now.Add(resetIn))
	}

	t.Run("keeps the configured rate while the window has plenty left", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(read(900, 60*time.Second), 4)
		if got := p.lim.Limit(); got != 10 {
			t.Errorf("rate %v/s; want the configured 10/s", got)
		}
	})

	t.Run("spreads what is left over the time until the earliest end it cannot rule out", func(t *testing.T) {
		p := fixedPacer(600, now)
		// Of the 4 in flight, half are taken as counted in the reading already.
		p.Observe(read(102, 21*time.Second), 4)
		if got := p.lim.Limit(); got != 5 {
			t.Errorf("rate %v/s; want (102-2)/20s = 5/s (the window may end a second before the rounded reset)", got)
		}
	})

	t.Run("ignores a late answer that read more budget than an earlier one", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(read(102, 21*time.Second), 4)
		p.Observe(read(300, 21*time.Second), 0)
		if got := p.lim.Limit(); got != 5 {
			t.Errorf("rate %v/s after a stale reading; want 5/s", got)
		}
	})

	t.Run("takes a new window's reading", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(read(10, 5*time.Second), 0)
		p.Observe(read(999, 65*time.Second), 0)
		if got := p.lim.Limit(); got != 10 {
			t.Errorf("rate %v/s in a fresh window; want 10/s", got)
		}
	})

	t.Run("pauses everyone until the window can have ended when the budget reads zero", func(t *testing.T) {
		p := fixedPacer(600, now)
		p.Observe(read(0, 7*time.Second), 0)
		if got, want := p.PausedUntil(), now.Add(6*time.Second); !got.Equal(want) {
			t.Errorf("paused until %v; want a second before the reported reset, %v", got, want)
		}
		if got := p.lim.Limit(); got != rate.Every(probeStep) {
			t.Errorf("rate %v/s after the pause; want one probe per %s", got, probeStep)
		}
	})

	t.Run("probes in short steps once the window may have ended", func(t *testing.T) {
		p := fixedPacer(600, now)
		if d := p.OrgThrottled(read(0, 400*time.Millisecond)); d != probeStep {
			t.Errorf("pause %s after a 429 within a second of the reset; want %s", d, probeStep)
		}
		p.Observe(read(599, 10*time.Second), 0)
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
		r := newPacerRig(t, 600, t0)
		blank := kustomer.RateLimit{Remaining: -1, Limit: -1}
		r.wait(0, Live)
		r.p.Observe(blank, 0)
		if a, b := r.p.OrgThrottled(blank), r.p.OrgThrottled(blank); a != 250*time.Millisecond || b != 250*time.Millisecond {
			t.Errorf("pauses %s then %s for two requests sent before the pause; want 250ms, then what is left of it", a, b)
		}
		r.advanceTo(t0.Add(250 * time.Millisecond))
		r.wait(1, Live)
		r.p.Observe(blank, 0)
		if d := r.p.OrgThrottled(blank); d != 500*time.Millisecond {
			t.Errorf("pause %s for a 429 to a request sent after the pause; want 500ms", d)
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

// near reports whether a is within a microsecond of b: the limiter rounds to nanoseconds.
func near(a, b time.Time) bool { return a.Sub(b).Abs() <= time.Microsecond }

func TestPacerResumesOnTimeAfterASpentWindow(t *testing.T) {
	r := newPacerRig(t, 3600, t0) // 60 a second
	for i := range 16 {
		r.wait(i, Live)
	}
	r.advanceTo(at(0.30))
	if n := len(r.got); n != 4 {
		t.Fatalf("%d turns in the first 50ms at 60/s; want 4 (at 0, 16.7, 33.3 and 50 ms)", n)
	}

	// The window is spent. Its reset reads 12:00:02, so it ends after 12:00:01.
	r.clk.advanceTo(at(0.31), func() {})
	r.p.Observe(reading(600, 0, at(2)), 3)
	if got := r.p.PausedUntil(); !got.Equal(at(1)) {
		t.Fatalf("paused until %v; want the earliest end of the window, %v", got, at(1))
	}
	r.advanceTo(at(1).Add(-time.Nanosecond))
	if n := len(r.got); n != 4 {
		t.Fatalf("%d turns before the window can have ended; want still 4", n)
	}
	r.advanceTo(at(1))
	if got := r.turnsSince(4); len(got) != 1 || !got[0].at.Equal(at(1)) {
		t.Fatalf("turns at the window's earliest end: %v; want exactly one probe at %v, no debt from the 12 callers that waited", got, at(1))
	}
	r.advanceTo(at(1.05))
	if n := len(r.got); n != 5 {
		t.Fatalf("%d turns 50ms into probing; want 5 (one probe a %s)", n, probeStep)
	}

	// The probe is answered from the next window: the rest go at 60 a second at once.
	r.p.Observe(reading(600, 599, at(12)), 0)
	r.advanceTo(at(2))
	rest := r.turnsSince(5)
	if len(rest) != 11 {
		t.Fatalf("%d more turns; want the 11 callers left", len(rest))
	}
	// Half a token had come at the probe pace: the other half takes 1/120 s at 60/s.
	if want := at(1.05).Add(time.Second / 120); !near(rest[0].at, want) {
		t.Errorf("first turn after the reading at %v; want %v", rest[0].at, want)
	}
	for i := 1; i < len(rest); i++ {
		if gap := rest[i].at.Sub(rest[i-1].at); (gap - time.Second/60).Abs() > time.Microsecond {
			t.Errorf("turn %d came %s after the one before; want 1/60 s", i+5, gap)
		}
	}
}

func TestPacerEndsAPauseOnAReadingFromTheNextWindow(t *testing.T) {
	r := newPacerRig(t, 3600, t0)
	r.wait(0, Live)
	r.p.Observe(reading(600, 0, at(2)), 0)
	for i := 1; i <= 3; i++ {
		r.wait(i, Live)
	}
	r.advanceTo(at(0.6))
	if n := len(r.got); n != 1 {
		t.Fatalf("%d turns during the pause; want only the one before it", n)
	}
	r.p.Observe(reading(600, 590, at(11)), 0)
	if got := r.p.PausedUntil(); !got.IsZero() {
		t.Errorf("still paused until %v after a reading from the next window", got)
	}
	r.settle()
	if got := r.turnsSince(1); len(got) != 1 || !got[0].at.Equal(at(0.6)) {
		t.Fatalf("turns on the reading: %v; want one at once, at %v", got, at(0.6))
	}
	r.advanceTo(at(0.65))
	if n := len(r.got); n != 4 {
		t.Errorf("%d turns 50ms after the pause ended; want all 4 at 60/s", n)
	}
}

func TestPacerFollowsARateChangedMidWindow(t *testing.T) {
	t.Run("lowered: the next turn comes at the new pace, not the old", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0)
		for i := range 3 {
			r.wait(i, Live)
		}
		if n := len(r.got); n != 1 {
			t.Fatalf("%d turns at once; want 1", n)
		}
		// 5 left for the 1.75s until the earliest end (12:00:02): 5 / 1.75s.
		r.p.Observe(reading(600, 5, at(3)), 0)
		r.advanceTo(at(1))
		want := t0.Add(350 * time.Millisecond)
		if got := r.turnsSince(1); len(got) != 2 || !near(got[0].at, want) {
			t.Fatalf("turns after the rate was lowered: %v; want the next at %v", got, want)
		}
	})

	t.Run("raised: waiting callers take the new pace at once", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0)
		for i := range 4 {
			r.wait(i, Live)
		}
		r.p.Observe(reading(600, 2, at(2.25)), 0) // 2 for 1s: one turn every 500ms
		r.advanceTo(at(0.35))
		if n := len(r.got); n != 1 {
			t.Fatalf("%d turns 100ms after the rate was lowered to 2/s; want 1", n)
		}
		r.p.Observe(reading(6000, 6000, at(12)), 0) // the next window: back to 60/s
		r.advanceTo(at(0.5))
		got := r.turnsSince(1)
		// 0.2 tokens came at 2/s; the other 0.8 take 0.8/60 s.
		if want := at(0.35).Add(time.Second * 8 / 600); len(got) != 3 || !near(got[0].at, want) {
			t.Fatalf("turns after the rate was raised: %v; want 3, the first at %v", got, want)
		}
	})
}

func TestPacerServesClassesInOrder(t *testing.T) {
	t.Run("live, then bulk reads, then backfill, oldest first within a class", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0)
		r.p.OrgThrottled(kustomer.RateLimit{Limit: -1, Remaining: -1, RetryAfter: time.Second})
		classes := []Priority{Backfill, BulkRead, Live, Backfill, Live, BulkRead}
		for i, c := range classes {
			r.wait(i, c)
		}
		r.advanceTo(t0.Add(2 * time.Second))
		var order []int
		for _, g := range r.got {
			order = append(order, g.id)
		}
		if want := []int{2, 4, 1, 5, 0, 3}; !equalInts(order, want) {
			t.Errorf("served %v; want %v", order, want)
		}
	})

	t.Run("a backfill request waits at most the aging bound", func(t *testing.T) {
		r := newPacerRig(t, 60, t0) // one a second
		r.wait(0, Live)             // takes the first token
		r.wait(1, Backfill)
		for i := 2; i < 40; i++ {
			r.wait(i, Live)
		}
		r.advanceTo(t0.Add(agingBound + 2*time.Second))
		for _, g := range r.got {
			if g.id == 1 {
				if g.at.After(t0.Add(agingBound)) {
					t.Errorf("backfill request served at %v; want by %v", g.at, t0.Add(agingBound))
				}
				return
			}
		}
		t.Errorf("backfill request not served in %s while live ones kept coming", agingBound+2*time.Second)
	})
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPacerLearnsWhereTheWindowEnds(t *testing.T) {
	// A window that really ends at 12:00:01.2 reads reset 12:00:02.
	setup := func(t *testing.T) *pacerRig {
		r := newPacerRig(t, 3600, t0)
		r.p.Observe(reading(600, 0, at(2)), 0)
		for i := range 4 {
			r.wait(i, Live)
		}
		r.advanceTo(at(1))                     // probe at 1.0
		r.p.Observe(reading(600, 0, at(2)), 0) // answered 429 at once: minimum latency 0
		r.advanceTo(at(1.2))                   // probes at 1.1, 1.2
		r.p.Observe(reading(600, 0, at(2)), 1) // 1.1: still the old window
		r.p.Observe(reading(600, 599, at(12)), 0)
		return r
	}

	t.Run("from the first answer of the next window", func(t *testing.T) {
		r := setup(t)
		r.advanceTo(at(10.5))
		r.p.Observe(reading(600, 0, at(12)), 0)
		if got := r.p.PausedUntil(); !got.Equal(at(11.2)) {
			t.Errorf("paused until %v after the next window was spent; want its learned end %v, not the earliest %v", got, at(11.2), at(11))
		}
	})

	t.Run("and spreads the budget to that end, not a second early", func(t *testing.T) {
		r := setup(t)
		// Alone: what the window lost since its first reading went to the pacer's own turns.
		for i := 10; i < 600; i++ {
			r.wait(i, Live)
		}
		r.advanceTo(at(10.2))
		r.p.mu.Lock()
		left := 599 - (r.p.granted - 3) // the turns after the one the first reading answered
		r.p.mu.Unlock()
		r.p.Observe(reading(600, left, at(12)), 0)
		if got := r.p.lim.Limit(); got != rate.Limit(left) {
			t.Errorf("rate %v/s with %d left at 10.2s; want %d/s to the learned end 11.2s", got, left, left)
		}
	})

	t.Run("and goes on at the window's pace once that end has passed", func(t *testing.T) {
		r := setup(t)
		r.advanceTo(at(10.2))
		r.p.Observe(reading(600, 1, at(12)), 0) // one left for the last second: 1/s
		for i := 10; i < 15; i++ {
			r.wait(i, Live)
		}
		r.advanceTo(at(11.3))
		got := r.turnsSince(4)
		// The last of the window goes within a learnGap of its end, so that the turns
		// either side of it tell where the next window began.
		if len(got) != 5 || got[1].at.Before(at(11.2).Add(-learnGap)) || got[1].at.After(at(11.2)) || !near(got[2].at, at(11.2)) {
			t.Fatalf("turns: %v; want one at once, the next within %v before the learned end %v, and one at that end", got, learnGap, at(11.2))
		}
		for i := 3; i < len(got); i++ {
			if gap := got[i].at.Sub(got[i-1].at); (gap - time.Second/60).Abs() > time.Microsecond {
				t.Errorf("turn %d came %s after the one before; want 1/60 s, the pace of 600 a 10s window", i, gap)
			}
		}
	})

	t.Run("and is not slowed past that end by a late reading of the window", func(t *testing.T) {
		r := setup(t)
		r.advanceTo(at(11.25))
		r.p.Observe(reading(600, 5, at(12)), 4) // not (5-4) over a probe step
		if got := r.p.lim.Limit(); got != 60 {
			t.Errorf("rate %v/s on a reading of the window after its learned end; want the window's pace, 60/s", got)
		}
	})

	t.Run("and forgets it when refused after that end", func(t *testing.T) {
		r := setup(t)
		r.advanceTo(at(10.5))
		r.p.Observe(reading(600, 0, at(12)), 0)
		r.wait(10, Live)
		r.advanceTo(at(11.25)) // a turn at 11.2
		r.p.Observe(reading(600, 0, at(12)), 0)
		if d := r.p.OrgThrottled(reading(600, 0, at(12))); d != probeStep {
			t.Errorf("OrgThrottled = %s after a refusal past the learned end; want a probe step", d)
		}
		if got := r.p.lim.Limit(); got != rate.Every(probeStep) {
			t.Errorf("rate %v/s; want one probe per %s", got, probeStep)
		}
	})
}

func TestPacerWaitEndsWithItsContext(t *testing.T) {
	p := New(600)
	p.OrgThrottled(kustomer.RateLimit{Remaining: -1, Limit: -1, RetryAfter: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Wait(ctx, Live)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait during a pause = %v; want the context's error", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Wait took %s after its context ended", el)
	}
}

func TestPacerGivesATurnBackWhenItsCallerLeaves(t *testing.T) {
	r := newPacerRig(t, 60, t0)
	r.wait(0, Live)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.p.Wait(ctx, Live) }()
	testwait.Until(t, "the second caller is in line", 10*time.Second, func() bool { return r.callers() == 2 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v; want context.Canceled", err)
	}
	r.wait(2, Live)
	r.advanceTo(t0.Add(time.Second))
	if got := r.turnsSince(1); len(got) != 1 || !got[0].at.Equal(t0.Add(time.Second)) {
		t.Errorf("turns: %v; want the third caller served at %v, one second after the first", got, t0.Add(time.Second))
	}
}

func TestPacerMakesUpForAMomentWithNoCallerWaiting(t *testing.T) {
	t.Run("what came due while no one waited goes at once, the rest at the pace", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0) // 60 a second
		r.wait(0, Live)
		r.advanceTo(t0.Add(100 * time.Millisecond)) // six turns came due, no one waiting
		for i := 1; i <= 10; i++ {
			r.wait(i, Live)
		}
		got := r.turnsSince(1)
		if len(got) != 6 {
			t.Fatalf("%d turns at once after 100ms with no caller; want the 6 that came due", len(got))
		}
		r.advanceTo(t0.Add(200 * time.Millisecond))
		if want := t0.Add(100*time.Millisecond + time.Second/60); !near(r.got[7].at, want) {
			t.Errorf("the next turn at %v; want %v, at the pace", r.got[7].at, want)
		}
	})

	t.Run("but at most a quarter of a second's worth", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0)
		r.wait(0, Live)
		r.advanceTo(t0.Add(5 * time.Second))
		for i := 1; i <= 30; i++ {
			r.wait(i, Live)
		}
		if got := len(r.turnsSince(1)); got != 15 {
			t.Errorf("%d turns at once after 5s with no caller; want 15, a quarter of a second at 60/s", got)
		}
	})

	t.Run("and none after a pause: it starts again with one turn", func(t *testing.T) {
		r := newPacerRig(t, 3600, t0)
		r.wait(0, Live)
		r.p.OrgThrottled(kustomer.RateLimit{Limit: -1, Remaining: -1, RetryAfter: time.Second})
		for i := 1; i <= 10; i++ {
			r.wait(i, Live)
		}
		r.advanceTo(t0.Add(time.Second))
		if got := r.turnsSince(1); len(got) != 1 || !got[0].at.Equal(t0.Add(time.Second)) {
			t.Fatalf("turns when the pause ended: %v; want one, at %v", got, t0.Add(time.Second))
		}
		r.advanceTo(t0.Add(1100 * time.Millisecond))
		// The 429 said nothing of the window: it cut the pace by a tenth, to 54/s.
		if got := len(r.turnsSince(1)); got != 6 {
			t.Errorf("%d turns in the 100ms after the pause; want 6 at 54/s", got)
		}
	})
}

func TestPacerEstimatesTheBudget(t *testing.T) {
	t.Run("before a reading, nothing is known", func(t *testing.T) {
		if e := fixedPacer(600, t0).Estimate(); e.Limit != -1 || e.Left != -1 || e.OwnShare != -1 {
			t.Errorf("estimate %+v; want limit, left and own share -1", e)
		}
	})

	// With a steady client at 30 %: its rate and the pacer's share. With a reset the pacer
	// spends the rest of each window (about 0.7 of what is spent); without one it leaves
	// the client its pace and a twentieth, 27.4 of the 40 a second (0.69).
	for _, reading := range []resetReading{epochUp, resetAbsent} {
		t.Run(reading.String(), func(t *testing.T) {
			c := simConfig{
				org:       orgWindow{budget: 200, length: 5 * time.Second, reset: reading},
				perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
				other: 12, otherLead: 3 * time.Second, windows: 4,
			}
			org := c.org
			s := &simulation{cfg: c, org: &org, other: newOther(t0, c), sides: []*side{{r: newPacerRig(t, c.perMinute, t0)}}}
			for now := t0; now.Before(t0.Add(20 * time.Second)); now = now.Add(time.Millisecond) {
				s.step(now)
			}
			e := s.sides[0].r.p.Estimate()
			if e.Limit != 200 || e.Left < 0 || e.Left > 200 {
				t.Errorf("limit %d, left %d; want 200 and what is left of it", e.Limit, e.Left)
			}
			if e.OthersPerSecond < 11 || e.OthersPerSecond > 13 {
				t.Errorf("others' rate %.1f/s; want about 12/s", e.OthersPerSecond)
			}
			if e.OwnShare < 0.65 || e.OwnShare > 0.72 {
				t.Errorf("own share %.2f; want about 0.7", e.OwnShare)
			}
		})
	}
}

// A timer fires a little after its time on a real clock. A reading that the pacer takes in
// between, one that changes its pace, must not take the turn that came due.
func TestPacerKeepsATurnThatCameDueBeforeAReading(t *testing.T) {
	turns := func(t *testing.T, offset time.Duration) int {
		r := newPacerRig(t, 2400, t0) // 40 a second
		for i := range 16 {
			r.wait(i, Live)
		}
		end := t0.Add(5 * time.Second)
		for readings := 1; ; readings++ {
			r.p.mu.Lock()
			at, armed := r.p.timerAt, r.p.timer != nil
			r.p.mu.Unlock()
			if !armed || at.After(end) {
				break
			}
			// A reading comes offset from the next turn's time, before its timer fires:
			// a unit less for each turn so far, and for every fourth reading a unit less
			// for the org's other clients (10 a second), so that each reading changes the
			// pace a little.
			r.clk.mu.Lock()
			r.clk.now = at.Add(offset)
			r.clk.mu.Unlock()
			served := len(r.got)
			r.p.Observe(kustomer.RateLimit{Limit: 1000, Remaining: 1000 - served - readings/4}, 1)
			r.settle()
			for len(r.got) == served {
				r.p.mu.Lock()
				next, armed := r.p.timerAt, r.p.timer != nil
				r.p.mu.Unlock()
				if !armed {
					t.Fatalf("after %d turns: callers wait and no turn is planned", served)
				}
				if now := r.clk.Now(); next.Before(now) {
					next = now
				}
				r.advanceTo(next)
			}
			for r.callers() < len(r.got)+16 {
				r.wait(r.callers(), Live)
			}
		}
		return len(r.got)
	}
	before := turns(t, -2*time.Millisecond)
	late := turns(t, 2*time.Millisecond)
	t.Logf("turns in 5s: %d with each reading 2ms before the turn's time, %d with it 2ms after", before, late)
	if late < before-1 {
		t.Errorf("%d turns in 5s with each reading 2ms after the turn came due and before its timer fired; want %d, as with the readings 2ms before it", late, before)
	}
}
