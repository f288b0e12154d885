package pacer

import (
	"fmt"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

func TestPacerWithoutAResetBacksOffOn429s(t *testing.T) {
	blank := kustomer.RateLimit{Limit: -1, Remaining: -1}
	rateOf := func(p *Pacer) float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(p.lim.Limit())
	}

	t.Run("a 429 cuts the pace by a tenth, one in flight before the pause cuts nothing more", func(t *testing.T) {
		r := newPacerRig(t, 600, t0)
		r.wait(0, Live)
		r.p.Observe(blank, 1)
		r.p.OrgThrottled(blank)
		r.p.Observe(blank, 0)
		r.p.OrgThrottled(blank) // the other request, sent before the pause
		if got := rateOf(r.p); got != 9 {
			t.Errorf("pace %v/s after two 429s to requests sent together; want 9/s", got)
		}
	})

	t.Run("the pace grows back while no 429 comes", func(t *testing.T) {
		r := newPacerRig(t, 600, t0)
		r.wait(0, Live)
		r.p.Observe(blank, 0)
		r.p.OrgThrottled(blank)
		r.advanceTo(t0.Add(10 * time.Second))
		r.p.Observe(blank, 0)
		// 9/s, and 0.2 % of 10/s a second for 10 s.
		if got := rateOf(r.p); got < 9.19 || got > 9.21 {
			t.Errorf("pace %v/s 10 s after the 429; want 9.2/s", got)
		}
		r.advanceTo(t0.Add(2 * time.Minute))
		r.p.Observe(blank, 0)
		if got := rateOf(r.p); got != 10 {
			t.Errorf("pace %v/s two minutes after the 429; want the ceiling, 10/s", got)
		}
	})

	t.Run("Retry-After cuts the pace to the share of the window that went by", func(t *testing.T) {
		r := newPacerRig(t, 600, t0)
		r.wait(0, Live)
		r.p.Observe(blank, 0)
		ra := kustomer.RateLimit{Limit: -1, Remaining: -1, RetryAfter: time.Second}
		r.p.OrgThrottled(ra) // 10/s -> 9/s, paused until t0+1s
		r.advanceTo(t0.Add(4 * time.Second))
		r.wait(1, Live)
		r.p.Observe(blank, 0)
		// 3 s of the window went by since the pause, 1 s was left: a quarter too fast.
		r.p.OrgThrottled(ra)
		got := rateOf(r.p)
		want := (9 + 0.002*10*4) * 0.75 // grown for 4 s since the first cut
		if got < want-0.01 || got > want+0.01 {
			t.Errorf("pace %v/s; want %.2f/s, three quarters of the pace before", got, want)
		}
	})

	t.Run("a reading with a reset ends the backing off", func(t *testing.T) {
		r := newPacerRig(t, 600, t0)
		r.wait(0, Live)
		r.p.Observe(blank, 0)
		r.p.OrgThrottled(blank)
		r.advanceTo(t0.Add(time.Second))
		r.p.Observe(reading(1000, 990, t0.Add(60*time.Second)), 0)
		if got := rateOf(r.p); got != 10 {
			t.Errorf("pace %v/s with plenty left; want the ceiling, 10/s", got)
		}
	})
}

// The reading BenchmarkBudgetReadings runs in real time without a reset: 200 per 5 s fixed to
// the server's clock, the limit and what is left sent, 20-60 ms, another client spending 30 %
// steadily, the pacer at the budget's rate with 16 callers. Starting, the pacer spends at its
// ceiling until its readings tell the other client's pace, and meets a 429 at the end of the
// first window it spends; in the benchmark that is the window after the one it starts in,
// a moment before its end. That 429 cut the pace by a tenth, grown back at 0.2 % of the
// ceiling a second: the windows after it used 85-94 % of what the other client left (121-134
// of 140 in real time).
func TestPacerWithoutAResetIsNotHeldBackByItsStart(t *testing.T) {
	for _, lead := range []time.Duration{0, 500 * time.Millisecond, 4500 * time.Millisecond, 4900 * time.Millisecond} {
		t.Run(fmt.Sprintf("the other client and the windows starting %s before the pacer", lead), func(t *testing.T) {
			c := simConfig{
				org:       orgWindow{budget: 200, length: 5 * time.Second, reset: resetAbsent},
				perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
				other: 12, otherLead: lead, originLead: max(lead-370*time.Millisecond, time.Millisecond), windows: 12,
			}
			run := simulate(t, t0, c)
			for w := 1; w < len(run.mine)-1; w++ {
				admitted := run.mine[w] - run.refusedMine[w]
				left := 200 - (run.theirs[w] - run.refusedTheirs[w])
				t.Logf("window %d: %d of the %d left, %d refused; the other client refused %d", w+1, admitted, left, run.refusedMine[w], run.refusedTheirs[w])
				floor := 97
				if w == 1 {
					floor = 95 // the start's 429 and its pause, or its readings, in the window after
				}
				if run.refusedTheirs[w] > 0 || admitted*100 < left*floor {
					t.Errorf("window %d: the pacer used %d of the %d the other client left, the other client was refused %d; want at least %d %% and none refused",
						w+1, admitted, left, run.refusedTheirs[w], floor)
				}
			}
		})
	}
}

// The same reading, the pacer starting near the end of a window of which the other client
// had spent little (it started a moment before, as the benchmark's in-fake client starts
// with the fake): when that window refilled, what is left rose by less than the noise of a
// refill reading, and the next reading below the last counted the pacer's own turns since
// as the other clients' negative spend. Their pace read about 0 for seconds: the pacer spent
// their share (148 of the 140 they left, 6 429s, 8 of theirs refused), met a 429 again in
// the next window, and the cut held the windows after at 124-134 of 140, as the benchmark
// showed in real time (13/195, 148/148, 141/141, 123-135).
func TestPacerWithoutAResetSeesARefillOfAWindowBarelySpent(t *testing.T) {
	for _, lead := range []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond} {
		for _, endIn := range []time.Duration{150 * time.Millisecond, 350 * time.Millisecond, 700 * time.Millisecond} {
			t.Run(fmt.Sprintf("the other client %s before the pacer, the window ending %s after it", lead, endIn), func(t *testing.T) {
				t.Parallel()
				c := simConfig{
					org:       orgWindow{budget: 200, length: 5 * time.Second, reset: resetAbsent},
					perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
					other: 12, otherLead: lead, originLead: 5*time.Second - endIn, windows: 10,
				}
				run := simulate(t, t0, c)
				theirs, refusedTheirs, mine, refusedMine := 0, 0, 0, 0
				for w := 1; w < len(run.mine)-1; w++ {
					admitted := run.mine[w] - run.refusedMine[w]
					left := 200 - (run.theirs[w] - run.refusedTheirs[w])
					t.Logf("window %d: %d of the %d left, %d refused; the other client refused %d", w+1, admitted, left, run.refusedMine[w], run.refusedTheirs[w])
					theirs, refusedTheirs = theirs+run.theirs[w], refusedTheirs+run.refusedTheirs[w]
					mine, refusedMine = mine+run.mine[w], refusedMine+run.refusedMine[w]
					if w >= 2 && admitted*100 < left*97 {
						t.Errorf("window %d: the pacer used %d of the %d the other client left; want at least 97 %%", w+1, admitted, left)
					}
				}
				if refusedTheirs*100 > theirs {
					t.Errorf("the other client was refused %d of %d; want at most 1 %%", refusedTheirs, theirs)
				}
				if refusedMine*100 > mine {
					t.Errorf("the pacer was refused %d of %d; want at most 1 %%", refusedMine, mine)
				}
			})
		}
	}
}
