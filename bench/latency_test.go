package bench

import (
	"context"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// latencyGap is the pause before each timed message: longer than the 60 ms between two
// requests at the run command's default --rate-per-minute of 1000, so every message finds the
// worker idle with a token to spend.
const latencyGap = 70 * time.Millisecond

// BenchmarkLatency measures the time from publishing an update (synchronously, to the work
// stream) to its PUT arriving at the fake, on an idle worker with the run command's defaults
// (--concurrency 8, --rate-per-minute 1000). Each repetition times 200 messages (-short: 20),
// one at a time, each after the previous one was acknowledged and a pause of latencyGap, with
// the worker pool and then with the baseline consumer of startBaseline (in alternating
// order). Reported: p50 and p99 over every sample of all repetitions, for both. Target: p99
// under 10 ms.
func BenchmarkLatency(b *testing.B) {
	samples := pick("bench.samples", samplesFlag, 20)
	r := newRig(b, kustomertest.Config{Budget: -1, DiscardBodies: true}, 8)
	var pool, base []float64
	next := 0 // conversations used so far: each message goes to a new one
	for i := range repetitions(b) {
		runPool := func() []float64 { return r.latencies(samples, &next, func() func() { return r.startPool(1000) }) }
		runBase := func() []float64 {
			return r.latencies(samples, &next, func() func() { return r.startBaseline(r.js, 8) })
		}
		var p, q []float64
		if i%2 == 0 {
			p, q = runPool(), runBase()
		} else {
			q, p = runBase(), runPool()
		}
		b.Logf("repetition %d: worker p50 %.2f ms, p99 %.2f ms; baseline p50 %.2f ms, p99 %.2f ms",
			i+1, percentile(p, 50), percentile(p, 99), percentile(q, 50), percentile(q, 99))
		pool, base = append(pool, p...), append(base, q...)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(percentile(pool, 50), "p50_ms")
	b.ReportMetric(percentile(pool, 99), "p99_ms")
	b.ReportMetric(percentile(base, 50), "baseline_p50_ms")
	b.ReportMetric(percentile(base, 99), "baseline_p99_ms")
}

// latencies starts a consumer with start on a fresh consumer, warms it up with one message,
// then times n messages to conversations *next onwards, one at a time, and returns the
// latencies in milliseconds.
func (r *rig) latencies(n int, next *int, start func() (stop func())) []float64 {
	r.tb.Helper()
	r.freshConsumer()
	stop := start()
	defer stop()
	one := func() time.Duration {
		i := *next
		*next++
		want := r.fake.Stats().Applied + 1
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		t0 := time.Now()
		if _, err := r.js.Publish(ctx, r.top.Subject, update(i)); err != nil {
			r.tb.Fatal(err)
		}
		r.waitDrained(want, time.Minute)
		reqs := r.fake.RequestsFor(convID(i))
		if len(reqs) != 1 {
			r.tb.Fatalf("the fake got %d requests for conversation %d; want 1", len(reqs), i)
		}
		return reqs[0].Time.Sub(t0)
	}
	one() // connects to the fake and lets the first pull request settle
	out := make([]float64, 0, n)
	for range n {
		time.Sleep(latencyGap) // idle time, not synchronization
		out = append(out, ms(one()))
	}
	return out
}
