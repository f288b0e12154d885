package bench

import (
	"flag"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// BenchmarkThroughput measures updates per second end to end (fetch from JetStream, PUT to the
// fake, ack) through a backlog, against a fake with no budget and no added latency, at
// --concurrency 1, 8 and 32. Each repetition drains the same backlog once with the worker pool
// and once with the baseline of startBaseline, in alternating order, on the same stream and
// fake. Reported: the medians of the worker's and the baseline's updates/s and CPU time per
// update (the whole process: NATS and the fake run in it too, for both), and the median of the
// per-repetition ratios worker/baseline. Target: a ratio of 0.8 or better.
//
// Every update is to a conversation of its own unless -bench.per-conversation says otherwise:
// with k, the backlog holds n/k conversations of k updates each, in turns, so that most
// updates find the acknowledgement of their conversation's previous one recent.
func BenchmarkThroughput(b *testing.B) {
	n := pick("bench.updates", updatesFlag, 500)
	perConv := max(*perConvFlag, 1)
	for _, c := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true}, c)
			if perConv > 1 {
				r.convs = max(n/perConv, 1)
			}
			var pool, base []drain
			var speed, cpu []float64
			for i := range repetitions(b) {
				runPool := func() drain { return r.drainWith(n, func() func() { return r.startPool(0) }) }
				runBase := func() drain { return r.drainWith(n, func() func() { return r.startBaseline(c) }) }
				var p, q drain
				if i%2 == 0 {
					q, p = runBase(), runPool()
				} else {
					p, q = runPool(), runBase()
				}
				pool, base = append(pool, p), append(base, q)
				speed = append(speed, p.perSecond()/q.perSecond())
				cpu = append(cpu, p.cpuPerUpdate()/q.cpuPerUpdate())
				b.Logf("repetition %d: worker %.0f updates/s, %.3f cpu-ms/update; baseline %.0f updates/s, %.3f cpu-ms/update",
					i+1, p.perSecond(), p.cpuPerUpdate(), q.perSecond(), q.cpuPerUpdate())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(mapDrains(pool, drain.perSecond)), "updates/s")
			b.ReportMetric(median(mapDrains(base, drain.perSecond)), "baseline_updates/s")
			b.ReportMetric(median(speed), "ratio_vs_baseline")
			b.ReportMetric(median(mapDrains(pool, drain.cpuPerUpdate)), "cpu-ms/update")
			b.ReportMetric(median(mapDrains(base, drain.cpuPerUpdate)), "baseline_cpu-ms/update")
			b.ReportMetric(median(cpu), "cpu_ratio_vs_baseline")
		})
	}
}

// drainWith publishes a backlog of n updates to a fresh consumer, then starts a consumer with
// start and times it until every update was applied and acknowledged.
func (r *rig) drainWith(n int, start func() (stop func())) drain {
	r.tb.Helper()
	r.freshConsumer()
	want := r.fake.Stats().Applied + n
	r.backlog(0, n)
	runtime.GC()
	cpu0, t0 := cpuTime(), time.Now()
	stop := start()
	r.waitDrained(want, 10*time.Minute)
	d := drain{elapsed: time.Since(t0), cpu: cpuTime() - cpu0, n: n}
	stop()
	return d
}

var perConvFlag = flag.Int("bench.per-conversation", 1, "updates per conversation in BenchmarkThroughput, spread over the backlog (1: a conversation of its own each)")

func mapDrains(ds []drain, f func(drain) float64) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = f(d)
	}
	return out
}
