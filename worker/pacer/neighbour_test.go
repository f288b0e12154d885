package pacer

import (
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// orgWindow is Kustomer's org budget as the fake models it: budget units per fixed window,
// the window starting with the first request after the one before ended, a refused request
// spending nothing, and x-ratelimit-reset the window's end rounded up to a whole second.
type orgWindow struct {
	budget int
	length time.Duration
	end    time.Time
	used   int
}

// take is one request arriving at t: whether it was admitted, and the reading its answer
// carries.
func (w *orgWindow) take(t time.Time) (bool, kustomer.RateLimit) {
	if w.end.IsZero() || !t.Before(w.end) {
		w.end, w.used = t.Add(w.length), 0
	}
	ok := w.used < w.budget
	if ok {
		w.used++
	}
	reset := w.end.Truncate(time.Second)
	if reset.Before(w.end) {
		reset = reset.Add(time.Second)
	}
	return ok, kustomer.RateLimit{Limit: w.budget, Remaining: w.budget - w.used, Reset: reset}
}

// answer is a request of the pacer's in flight.
type answer struct {
	due     time.Time
	ok      bool
	reading kustomer.RateLimit
}

// neighbourRun is what the org's windows got in a simulated run.
type neighbourRun struct {
	mine, theirs, refusedTheirs, refusedMine []int // per window
}

// simulateNeighbour runs a pacer at the budget's rate with ten callers always waiting, each
// answered 50 to 150 ms after its turn, against an org window of 600 a 10 s that another
// client spends otherPerSecond of, evenly (none at 0), from lead before the pacer's first turn. Everything runs on the fake clock, in 1 ms steps.
func simulateNeighbour(t *testing.T, start time.Time, otherPerSecond float64, lead time.Duration, windows int) neighbourRun {
	t.Helper()
	r := newPacerRig(t, 3600, start)
	org := &orgWindow{budget: 600, length: 10 * time.Second}
	var run neighbourRun
	count := func(xs *[]int) {
		for len(*xs) < len(run.mine) {
			*xs = append(*xs, 0)
		}
		(*xs)[len(run.mine)-1]++
	}
	arrive := func(at time.Time) (bool, kustomer.RateLimit) {
		before := org.end
		ok, rl := org.take(at)
		if !org.end.Equal(before) {
			run.mine = append(run.mine, 0)
		}
		return ok, rl
	}
	var (
		inflight []answer
		seen     int // turns taken to the org so far
		nextO    = start.Add(-lead)
		id       int
	)
	end := start.Add(time.Duration(windows) * 10 * time.Second)
	otherEvery := 2 * end.Sub(start) // alone
	if otherPerSecond > 0 {
		otherEvery = time.Duration(float64(time.Second) / otherPerSecond)
	} else {
		nextO = end
	}
	for now := start; now.Before(end); now = now.Add(time.Millisecond) {
		r.advanceTo(now)
		for ; !nextO.After(now); nextO = nextO.Add(otherEvery) {
			ok, _ := arrive(nextO)
			count(&run.theirs)
			if !ok {
				count(&run.refusedTheirs)
			}
		}
		send := func() { // the turns handed out so far go to the org
			r.settle()
			for ; seen < len(r.got); seen++ {
				ok, rl := arrive(r.got[seen].at)
				count(&run.mine)
				if !ok {
					count(&run.refusedMine)
					rl.Remaining = 0
				}
				latency := 50*time.Millisecond + time.Duration(seen*37%101)*time.Millisecond
				inflight = append(inflight, answer{due: r.got[seen].at.Add(latency), ok: ok, reading: rl})
			}
		}
		send()
		for i := 0; i < len(inflight); {
			a := inflight[i]
			if a.due.After(now) {
				i++
				continue
			}
			inflight = append(inflight[:i], inflight[i+1:]...)
			r.p.Observe(a.reading, len(inflight))
			if !a.ok {
				r.p.OrgThrottled(a.reading)
			}
			send()
		}
		for r.waitingNow() < 10 {
			r.wait(id, Live)
			id++
		}
	}
	// One count of each kind for every window, none missing at the end.
	for _, xs := range []*[]int{&run.theirs, &run.refusedTheirs, &run.refusedMine} {
		for len(*xs) < len(run.mine) {
			*xs = append(*xs, 0)
		}
	}
	return run
}

// waitingNow is how many callers wait for a turn.
func (r *pacerRig) waitingNow() int {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.waiting()
}

func TestPacerIsAGoodNeighbour(t *testing.T) {
	for _, tc := range []struct {
		name string
		lead time.Duration
	}{
		{"another client spending 30 % steadily is not refused, and the rest is used", 0},
		// The window the pacer joins is spent early; the next begins just after a whole
		// second, so its rounded reset is nearly a second late.
		{"nor when it began the window 300ms before the pacer", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) { goodNeighbour(t, simulateNeighbour(t, t0, 18, tc.lead, 4)) })
	}

	t.Run("alone, it spends the whole window", func(t *testing.T) { spendsAll(t, simulateNeighbour(t, t0, 0, 0, 4)) })

	// Each window begins a little after the one before ended; the third begins just after a
	// whole second, and the step between the resets is a second longer than a window.
	t.Run("alone, a window that begins just after a whole second is not taken for a second longer", func(t *testing.T) {
		spendsAll(t, simulateNeighbour(t, at(0.96), 0, 0, 6))
	})
}

// spendsAll checks the whole windows of a run alone.
func spendsAll(t *testing.T, run neighbourRun) {
	t.Helper()
	for w := 1; w < len(run.mine)-1; w++ {
		admitted := run.mine[w] - run.refusedMine[w]
		t.Logf("window %d: %d admitted, %d refused", w+1, admitted, run.refusedMine[w])
		if admitted < 594 || run.refusedMine[w] > 3 {
			t.Errorf("window %d: %d of 600 used, %d refused; want at least 99 %% and at most 3 refused", w+1, admitted, run.refusedMine[w])
		}
	}
}

// goodNeighbour checks the whole windows of a run shared with a client spending 30 %: the
// first is the pacer's first, where it learns, and the last is cut short.
func goodNeighbour(t *testing.T, run neighbourRun) {
	t.Helper()
	for w := 1; w < len(run.mine)-1; w++ {
		admitted := run.mine[w] - run.refusedMine[w]
		got := run.theirs[w] - run.refusedTheirs[w]
		t.Logf("window %d: the pacer %d admitted (%d refused), the other client %d of %d", w+1, admitted, run.refusedMine[w], got, run.theirs[w])
		if run.refusedTheirs[w] > run.theirs[w]/100 {
			t.Errorf("window %d: the other client was refused %d of %d requests; want at most 1 %%", w+1, run.refusedTheirs[w], run.theirs[w])
		}
		if left := 600 - got; admitted < left*95/100 {
			t.Errorf("window %d: the pacer used %d of the %d the other client left; want at least 95 %%", w+1, admitted, left)
		}
	}
}
