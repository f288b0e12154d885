package pacer

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
)

// fakeClock is a Clock that moves only when the test says, firing due timers in order.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool // fired or stopped; guarded by c.mu
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// advanceTo moves the clock to t, stopping at every timer due on the way to fire it and then
// call after, so that the test sees what each timer did at its own time.
func (c *fakeClock) advanceTo(t time.Time, after func()) {
	for {
		c.mu.Lock()
		c.timers = slices.DeleteFunc(c.timers, func(ft *fakeTimer) bool { return ft.done })
		var due *fakeTimer
		for _, ft := range c.timers {
			if !ft.at.After(t) && (due == nil || ft.at.Before(due.at)) {
				due = ft
			}
		}
		if due == nil {
			if t.After(c.now) {
				c.now = t
			}
			c.mu.Unlock()
			return
		}
		if due.at.After(c.now) {
			c.now = due.at
		}
		due.done = true
		c.mu.Unlock()
		due.f()
		after()
	}
}

// turn is one Wait that returned: who, and at what time of the fake clock.
type turn struct {
	id    int
	class Priority
	at    time.Time
}

// pacerRig runs callers of Wait against a pacer on a fake clock.
type pacerRig struct {
	tb      testing.TB
	clk     *fakeClock
	p       *Pacer
	ctx     context.Context
	results chan turn
	got     []turn
	wg      sync.WaitGroup
}

func newPacerRig(tb testing.TB, perMinute int, start time.Time) *pacerRig {
	tb.Helper()
	clk := &fakeClock{now: start}
	ctx, cancel := context.WithCancel(context.Background())
	r := &pacerRig{tb: tb, clk: clk, p: New(perMinute, WithClock(clk)), ctx: ctx, results: make(chan turn, 1024)}
	tb.Cleanup(func() { cancel(); r.wg.Wait() })
	return r
}

// wait starts a caller of Wait and returns once the pacer has it in line or has served it.
func (r *pacerRig) wait(id int, class Priority) {
	r.tb.Helper()
	before := r.callers()
	r.wg.Go(func() {
		if err := r.p.Wait(r.ctx, class); err == nil {
			r.results <- turn{id: id, class: class, at: r.clk.Now()}
		}
	})
	runtime.Gosched() // mostly enough for the caller to get in line, sparing Until's first poll
	testwait.Until(r.tb, "the caller is in line", 10*time.Second, func() bool { return r.callers() > before })
	r.settle()
}

// callers is how many callers the pacer has seen: waiting or served.
func (r *pacerRig) callers() int {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.waiting() + r.p.granted
}

// settle collects the callers the pacer has served so far, each with the time it returned.
func (r *pacerRig) settle() {
	r.tb.Helper()
	r.p.mu.Lock()
	granted := r.p.granted
	r.p.mu.Unlock()
	for len(r.got) < granted {
		r.got = append(r.got, testwait.Recv(r.tb, "a served caller to return from Wait", 10*time.Second, r.results))
	}
}

// advanceTo moves the fake clock to t and collects every caller served on the way.
func (r *pacerRig) advanceTo(t time.Time) {
	r.tb.Helper()
	r.clk.advanceTo(t, r.settle)
	r.settle()
}

// turnsSince is the turns served from the i-th on.
func (r *pacerRig) turnsSince(i int) []turn { return r.got[min(i, len(r.got)):] }
