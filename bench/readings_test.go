package bench

import (
	"flag"
	"net/http"
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
// used over the elapsed time (start and end included, so below what whole windows show, for
// both runners alike), the share of its requests answered 429, and the other client's share
// refused.
func BenchmarkBudgetReadings(b *testing.B) {
	for _, c := range readingsCases {
		b.Run(c.name, func(b *testing.B) { benchReadings(b, c) })
	}
}

// readingsRun is what one drain got.
type readingsRun struct {
	elapsed                     time.Duration
	used, tooMany, otherRefused float64 // %
}

func benchReadings(b *testing.B, c readingsCase) {
	n := pick("bench.readings-updates", readingsUpdatesFlag, 100)
	cfg := c.cfg
	cfg.Budget, cfg.Window = 200, 5*time.Second
	if testing.Short() {
		cfg.Budget, cfg.Window, cfg.WindowOffset = 40, time.Second, cfg.WindowOffset/5
	}
	cfg.Latency, cfg.LatencyJitter, cfg.DiscardBodies, cfg.RandSeed = 20*time.Millisecond, 40*time.Millisecond, true, 1
	const concurrency = 16
	perMinute := int(float64(cfg.Budget) * float64(time.Minute) / float64(cfg.Window))
	runners := []struct {
		name  string
		start func(r *rig) func()
	}{
		{"worker", func(r *rig) func() { return r.startPool(perMinute) }},
		{"fixed", func(r *rig) func() { return r.startFixed(concurrency, perMinute, cfg.Window) }},
	}
	runs := map[string][]readingsRun{}
	for i := range repetitions(b) {
		for _, rn := range runners {
			run := drainReadings(b, cfg, n, concurrency, rn.start)
			runs[rn.name] = append(runs[rn.name], run)
			b.Logf("%s %s repetition %d: %.1fs, %.2f%% of what the other client left used, %.2f%% answered 429, the other client refused %.2f%%",
				c.name, rn.name, i+1, run.elapsed.Seconds(), run.used, run.tooMany, run.otherRefused)
		}
	}
	b.ReportMetric(0, "ns/op")
	for _, rn := range runners {
		rs := runs[rn.name]
		of := func(f func(readingsRun) float64) float64 {
			var xs []float64
			for _, r := range rs {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		b.ReportMetric(of(func(r readingsRun) float64 { return r.used }), rn.name+"_used_%")
		b.ReportMetric(of(func(r readingsRun) float64 { return r.tooMany }), rn.name+"_429_%")
		b.ReportMetric(of(func(r readingsRun) float64 { return r.otherRefused }), rn.name+"_other_refused_%")
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
	run.used = 100 * float64(st.ByStatus[http.StatusOK]) / left
	return run
}
