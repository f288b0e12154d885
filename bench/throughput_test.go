package bench

import (
	"flag"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// BenchmarkThroughput measures updates per second end to end (fetch from JetStream, PUT to the
// fake, ack) through a backlog, against a fake with no budget and no added latency, in every
// cell of: the bare live subject or <live subject>.<id>; 1 or 4 updates per conversation (with
// 4, the backlog holds n/4 conversations of 4 updates each, in turns); --concurrency 8 and 32.
// Each repetition drains the same backlog once with the daemon's pool (startPool: built by
// worker.NewPool, as `kustomer-worker run` builds it, every default on) and once with the plain
// loop of startBaseline, in alternating order, on the same stream and fake; with
// -bench.stripped also with the pool without lanes, order check and standby (startStripped),
// and with -bench.held=N also with the daemon's pool holding N messages at most (startWindow).
// Each runner has a NATS connection of its own whose requests that wait for an answer are
// counted (roundTrips). Reported, medians: updates/s, CPU time per update (the whole process:
// NATS and the fake run in it too, for all), round trips per update, and the per-repetition
// ratios pool/baseline. Targets: a ratio of 0.8 or better, CPU at most 1.5 times the
// baseline's, at most 1.5 round trips per update beyond the baseline's.
func BenchmarkThroughput(b *testing.B) {
	n := pick("bench.updates", updatesFlag, 500)
	for _, subject := range []string{"bare", "conversation"} {
		for _, perConv := range []int{1, 4} {
			for _, c := range []int{8, 32} {
				b.Run(fmt.Sprintf("subject=%s/per-conversation=%d/concurrency=%d", subject, perConv, c), func(b *testing.B) {
					r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true}, c)
					r.bySubject = subject == "conversation"
					if perConv > 1 {
						r.convs = max(n/perConv, 1)
					}
					throughputCell(b, r, n, c)
				})
			}
		}
	}
}

// runner is one way of draining the backlog, on a counted connection of its own.
type runner struct {
	name  string
	rt    *roundTrips
	start func(js jetstream.JetStream) (stop func())
	js    jetstream.JetStream
	runs  []drain
}

// throughputCell runs the repetitions of one cell and reports them.
func throughputCell(b *testing.B, r *rig, n, c int) {
	runners := []*runner{
		{name: "worker", start: func(js jetstream.JetStream) func() { return r.startDaemon(js, 0, nil) }},
		{name: "baseline", start: func(js jetstream.JetStream) func() { return r.startBaseline(js, c) }},
	}
	if *heldFlag > 0 {
		runners = append(runners, &runner{name: fmt.Sprintf("held%d", *heldFlag), start: func(js jetstream.JetStream) func() {
			return r.startWindow(js, *heldFlag)
		}})
	}
	if *strippedFlag {
		runners = append(runners, &runner{name: "stripped", start: r.startStripped})
	}
	for _, run := range runners {
		run.rt = &roundTrips{byKind: make(map[string]int)}
		_, run.js = r.countedConn(run.rt)
	}
	pool, base := runners[0], runners[1]
	var speed, cpu, extra []float64
	for i := range repetitions(b) {
		for k := range runners {
			run := runners[(k+i)%len(runners)] // alternating who goes first
			d := r.drainWith(n, run.rt, func() func() { return run.start(run.js) })
			run.runs = append(run.runs, d)
			b.Logf("repetition %d, %s: %.0f updates/s, %.3f cpu-ms/update, %.3f round trips/update (%s)",
				i+1, run.name, d.perSecond(), d.cpuPerUpdate(), d.roundTripsPerUpdate(), perUpdate(d.trips, d.n))
		}
		p, q := pool.runs[i], base.runs[i]
		speed = append(speed, p.perSecond()/q.perSecond())
		cpu = append(cpu, p.cpuPerUpdate()/q.cpuPerUpdate())
		extra = append(extra, p.roundTripsPerUpdate()-q.roundTripsPerUpdate())
	}
	b.ReportMetric(0, "ns/op")
	for _, run := range runners {
		prefix := ""
		if run != pool {
			prefix = run.name + "_"
		}
		b.ReportMetric(median(mapDrains(run.runs, drain.perSecond)), prefix+"updates/s")
		b.ReportMetric(median(mapDrains(run.runs, drain.cpuPerUpdate)), prefix+"cpu-ms/update")
		b.ReportMetric(median(mapDrains(run.runs, drain.roundTripsPerUpdate)), prefix+"round-trips/update")
	}
	b.ReportMetric(median(speed), "ratio_vs_baseline")
	b.ReportMetric(median(cpu), "cpu_ratio_vs_baseline")
	b.ReportMetric(median(extra), "extra_round-trips/update")
}

// drainWith publishes a backlog of n updates to fresh consumers, then starts a consumer with
// start and times it until every update was applied and acknowledged; rt counts the round
// trips of the consumer's connection meanwhile.
func (r *rig) drainWith(n int, rt *roundTrips, start func() (stop func())) drain {
	r.tb.Helper()
	r.freshConsumer()
	want := r.fake.Stats().Applied + n
	r.backlog(0, n)
	runtime.GC()
	if rt != nil {
		rt.take()
	}
	cpu0, t0 := cpuTime(), time.Now()
	stop := start()
	r.waitDrained(want, 10*time.Minute)
	d := drain{elapsed: time.Since(t0), cpu: cpuTime() - cpu0, n: n}
	if rt != nil {
		d.trips = rt.take()
	}
	stop()
	return d
}

var (
	strippedFlag = flag.Bool("bench.stripped", false, "BenchmarkThroughput: also drain each backlog with the pool without lanes, order check and standby")
	heldFlag     = flag.Int("bench.held", 0, "BenchmarkThroughput: also drain each backlog with the daemon's pool at this --max-ack-pending, on the same consumers (0: not)")
)

// startWindow is startDaemon with the pool's MaxAckPending set to held, on consumers whose own
// stays as the rig declared it: a pool that holds fewer than its consumer lets go behaves as
// one whose consumer matches it, as it never pulls more than it has room for.
func (r *rig) startWindow(js jetstream.JetStream, held int) (stop func()) {
	r.tb.Helper()
	wc := r.wc
	r.wc.MaxAckPending = held
	defer func() { r.wc = wc }()
	return r.startDaemon(js, 0, nil)
}

func mapDrains(ds []drain, f func(drain) float64) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = f(d)
	}
	return out
}
