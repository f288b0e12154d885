package bench

import (
	"flag"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

var readingsUpdatesFlag = flag.Int("bench.readings-updates", 1200, "updates of BenchmarkBudgetReadings, every case (-short: 100)")

// readingsCase is one reading of Kustomer's budget, as the fake's options model it.
type readingsCase struct {
	name string
	cfg  kustomertest.Config // the reading: the budget, window, latency and other clients are set for all
}

var fixedStart = kustomertest.Config{WindowStart: kustomertest.WindowFromStart, WindowOffset: 370 * time.Millisecond}

var readingsCases = []readingsCase{
	{"epoch_down_fixed_steady30", with(fixedStart, func(c *kustomertest.Config) {
		c.ResetRoundDown = true
		c.Others = []kustomertest.OtherClient{{Share: 0.3}}
	})},
	{"delta_up_retry_after_fixed_steady30", with(fixedStart, func(c *kustomertest.Config) {
		c.ResetDelta, c.RetryAfter = true, true
		c.Others = []kustomertest.OtherClient{{Share: 0.3}}
	})},
	{"epoch_up_first_request_bursts30", kustomertest.Config{Others: []kustomertest.OtherClient{{Share: 0.3, Pattern: kustomertest.OtherBursts}}}},
	{"delta_down_clock_alone", kustomertest.Config{ResetDelta: true, ResetRoundDown: true, WindowStart: kustomertest.WindowOnClock}},
	{"no_reset_fixed_steady30", with(fixedStart, func(c *kustomertest.Config) {
		c.ResetAbsent = true
		c.Others = []kustomertest.OtherClient{{Share: 0.3}}
	})},
}

func with(c kustomertest.Config, f func(*kustomertest.Config)) kustomertest.Config {
	f(&c)
	return c
}

// BenchmarkBudgetReadings runs a representative subset of the pacer's simulated matrix
// (worker/pacer, TestPacerMatrix) in real time: a budget of 200 per 5 s (-short: 40 per
// second), answers after 20 to 60 ms, and the worker (--rate-per-minute at the budget,
// --concurrency 16) draining 1,200 updates (-short: 100) under four readings of the budget:
// the reset in epoch seconds rounded down and in seconds from now rounded up with Retry-After,
// on windows fixed to the fake's start, with another client of the org spending 30 %
// steadily from the fake's start (the failure first reported); the reset in epoch seconds
// rounded up on windows from the first request, the other client spending 30 % in bursts;
// the reset in seconds from now rounded down on wall-clock windows, alone; and no reset at
// all (limit and remaining sent) on windows fixed to the fake's start, the other client
// spending 30 % steadily. The other
// clients live inside the fake (kustomertest.Config.Others). In the same repetition the fixed
// limiter of BenchmarkBudget drains the same backlog against the same reading.
//
// Reported per runner (medians): the share of what the other client left that the runner
// used from its second window to the last whole one (see usedFromTheSecondWindow: the window
// it starts in and the one it runs out of work in are left out, as the targets and the
// simulated matrix leave them out), the worst of those windows, the same share over the
// elapsed time (start and end included, so below what whole windows show, for both runners
// alike), the share of its requests answered 429, and the other client's share refused.
func BenchmarkBudgetReadings(b *testing.B) {
	for _, c := range readingsCases {
		b.Run(c.name, func(b *testing.B) { benchReadings(b, c) })
	}
}

// readingsConcurrency is the worker's --concurrency in the real-time readings: 1.5 x the
// budget's rate x the longest latency, and more.
const readingsConcurrency = 16

// realTimeBudget is reading with the budget, window, latency and seed the real-time readings
// run at: 200 per 5 s (-short: 40 per second), answers after 20 to 60 ms; and the
// --rate-per-minute of that budget.
func realTimeBudget(reading kustomertest.Config) (kustomertest.Config, int) {
	cfg := reading
	cfg.Budget, cfg.Window = 200, 5*time.Second
	if testing.Short() {
		cfg.Budget, cfg.Window, cfg.WindowOffset = 40, time.Second, cfg.WindowOffset/5
	}
	cfg.Latency, cfg.LatencyJitter, cfg.DiscardBodies, cfg.RandSeed = 20*time.Millisecond, 40*time.Millisecond, true, 1
	return cfg, int(float64(cfg.Budget) * float64(time.Minute) / float64(cfg.Window))
}

// budgetRunner is one way of draining a backlog against a budget, started on a rig.
type budgetRunner struct {
	name  string
	start func(r *rig) func()
}

// readingsRun is what one drain got.
type readingsRun struct {
	elapsed                            time.Duration
	used                               float64 // % of what the other client left, from the second window to the last whole one
	worst                              float64 // % of what the other client left, in the worst of those windows
	windows                            int     // how many windows "used" covers
	elapsedUsed, tooMany, otherRefused float64 // %
	trace                              string  // every window: units used of those left, and 429s: "140/140", "131/140 2x429 1 of theirs"
}

func benchReadings(b *testing.B, c readingsCase) {
	n := pick("bench.readings-updates", readingsUpdatesFlag, 100)
	cfg, perMinute := realTimeBudget(c.cfg)
	const concurrency = readingsConcurrency
	runners := []budgetRunner{
		{"worker", func(r *rig) func() { return r.startPool(perMinute) }},
		{"fixed", func(r *rig) func() { return r.startFixed(concurrency, perMinute, cfg.Window) }},
	}
	runBudgetRunners(b, runners, func(start func(*rig) func()) readingsRun {
		return drainReadings(b, cfg, n, concurrency, start)
	}, func(runner string, rep int, run readingsRun) {
		b.Logf("%s %s repetition %d: %.1fs, %.2f%% of what the other client left used over windows 2-%d (worst window %.2f%%), %.2f%% over the elapsed time, %.2f%% answered 429, the other client refused %.2f%%",
			c.name, runner, rep, run.elapsed.Seconds(), run.used, run.windows+1, run.worst, run.elapsedUsed, run.tooMany, run.otherRefused)
		b.Logf("%s %s repetition %d, window by window: %s", c.name, runner, rep, run.trace)
	}, []figure[readingsRun]{
		{"used_%", func(r readingsRun) float64 { return r.used }},
		{"worst_window_%", func(r readingsRun) float64 { return r.worst }},
		{"used_elapsed_%", func(r readingsRun) float64 { return r.elapsedUsed }},
		{"429_%", func(r readingsRun) float64 { return r.tooMany }},
		{"other_refused_%", func(r readingsRun) float64 { return r.otherRefused }},
	})
}

// runBudgetRunners drains with each runner once per repetition, in the runners' order,
// logging each run with logRun (its repetition counted from 1), and reports each runner's
// figures as medians over its runs, named after the runner.
func runBudgetRunners[T any](b *testing.B, runners []budgetRunner, drain func(start func(*rig) func()) T, logRun func(runner string, rep int, run T), figures []figure[T]) {
	runs := map[string][]T{}
	for i := range repetitions(b) {
		for _, rn := range runners {
			run := drain(rn.start)
			runs[rn.name] = append(runs[rn.name], run)
			logRun(rn.name, i+1, run)
		}
	}
	b.ReportMetric(0, "ns/op")
	for _, rn := range runners {
		reportMedians(b, rn.name+"_", runs[rn.name], figures)
	}
}

// figure is one figure of a repetition of type T, reported as name.
type figure[T any] struct {
	name string
	of   func(T) float64
}

// reportMedians reports each figure's median over runs, its name after prefix.
func reportMedians[T any](b *testing.B, prefix string, runs []T, figures []figure[T]) {
	for _, f := range figures {
		xs := make([]float64, len(runs))
		for i, r := range runs {
			xs[i] = f.of(r)
		}
		b.ReportMetric(median(xs), prefix+f.name)
	}
}

// drainReadings runs one runner through a backlog of n against a fresh NATS server and a
// fake of cfg.
func drainReadings(b *testing.B, cfg kustomertest.Config, n, concurrency int, start func(*rig) func()) readingsRun {
	r := newRig(b, cfg, concurrency)
	r.backlog(0, n)
	before := r.fake.Stats().Others
	t0 := time.Now()
	stop := start(r)
	r.waitDrained(n, time.Duration(10*float64(n)/float64(cfg.Budget))*cfg.Window+time.Minute)
	el := time.Since(t0)
	st := r.fake.Stats()
	ws := r.fake.Windows()
	stop()
	others, refused := st.Others.Requests-before.Requests, st.Others.Refused-before.Refused
	run := readingsRun{elapsed: el}
	if sent := st.ByStatus[http.StatusOK] + st.ByStatus[http.StatusTooManyRequests]; sent > 0 {
		run.tooMany = 100 * float64(st.ByStatus[http.StatusTooManyRequests]) / float64(sent)
	}
	if others > 0 {
		run.otherRefused = 100 * float64(refused) / float64(others)
	}
	left := float64(cfg.Budget)*el.Seconds()/cfg.Window.Seconds() - float64(others-refused)
	run.elapsedUsed = 100 * float64(st.ByStatus[http.StatusOK]) / left
	var first, last time.Time
	for _, q := range r.fake.Requests() {
		if q.Kind == kustomertest.KindUpdate {
			if first.IsZero() {
				first = q.Time
			}
			last = q.Time
		}
	}
	run.used, run.worst, run.windows = usedFromTheSecondWindow(ws, first, last, cfg.Budget, cfg.Window)
	var trace []string
	for _, w := range ws {
		if w.End.Before(first) || w.Start.After(last) {
			continue
		}
		trace = append(trace, traced(w, fmt.Sprintf("%d/%d", w.Units, cfg.Budget-w.Others)))
	}
	run.trace = strings.Join(trace, ", ")
	return run
}

// traced is a window's entry in a run's trace: what the runner used of what was left (used),
// then the 429s it met and the other client's refusals, if any.
func traced(w kustomertest.Window, used string) string {
	if w.Refused > 0 {
		used += fmt.Sprintf(" %dx429", w.Refused)
	}
	if w.OthersRefused > 0 {
		used += fmt.Sprintf(" %d of theirs", w.OthersRefused)
	}
	return used
}

// usedFromTheSecondWindow is the share (in %) of what the org's other clients left that the
// requests over HTTP used, from the window after the one that holds first to the last window
// that ends before the one that holds last (the runner's first and last requests), as the
// fake counted its windows: over that span, time with no window open counted as budget lost
// (windows that begin with a request), and in the worst window of it; and how many windows
// it holds. The window the runner starts in and the one it runs out of work in are left
// out: the targets exempt the first, and the backlog ends in the second. NaN when no window
// is whole.
func usedFromTheSecondWindow(ws []kustomertest.Window, first, last time.Time, budget int, window time.Duration) (used, worst float64, n int) {
	i0, i1 := windowHolding(ws, first), windowHolding(ws, last)
	if i0 < 0 || i1 < 0 || i1-i0 < 2 {
		return math.NaN(), math.NaN(), 0
	}
	span := ws[i0+1 : i1]
	var mine, theirs int
	worst = math.Inf(1)
	for _, w := range span {
		mine, theirs = mine+w.Units, theirs+w.Others
		worst = min(worst, 100*float64(w.Units)/float64(budget-w.Others))
	}
	windows := float64(ws[i1].Start.Sub(span[0].Start)) / float64(window)
	return 100 * float64(mine) / (float64(budget)*windows - float64(theirs)), worst, len(span)
}

// windowHolding is the index of the window of ws that t falls in; -1 if none.
func windowHolding(ws []kustomertest.Window, t time.Time) int {
	return slices.IndexFunc(ws, func(w kustomertest.Window) bool { return !t.Before(w.Start) && t.Before(w.End) })
}

// The real-time figures of the readings come from usedFromTheSecondWindow: it must leave out
// the window the runner starts in and the one it ends in, charge time with no window open,
// and take out what the other clients got.
func TestUsedFromTheSecondWindow(t *testing.T) {
	base := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return base.Add(time.Duration(s * float64(time.Second))) }
	win := func(from float64, units, others int) kustomertest.Window {
		return kustomertest.Window{Start: at(from), End: at(from + 1), Units: units, Others: others}
	}
	ws := []kustomertest.Window{
		win(0, 2, 3),   // the runner starts in it: left out
		win(1, 7, 3),   // 7 of 7
		win(2.5, 6, 2), // 6 of 8, after half a window with none open
		win(3.5, 1, 0), // the runner ends in it: left out
	}
	used, worst, n := usedFromTheSecondWindow(ws, at(0.4), at(3.6), 10, time.Second)
	if n != 2 || used != 100*13/(10*2.5-5) || worst != 75 {
		t.Errorf("used %.2f%%, worst window %.2f%%, over %d windows; want 13 of 20 = 65%%, 75%%, 2", used, worst, n)
	}
	if used, _, n := usedFromTheSecondWindow(ws, at(2.6), at(3.6), 10, time.Second); !math.IsNaN(used) || n != 0 {
		t.Errorf("a run over two windows: used %.2f%% over %d windows; want NaN over 0", used, n)
	}
}
