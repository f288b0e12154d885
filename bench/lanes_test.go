package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

var (
	lanesBackfillFlag = flag.Int("bench.lanes-backfill", 5000, "backfill updates of BenchmarkLanes (-short: 120)")
	lanesBudgetFlag   = flag.Int("bench.lanes-budget", 600, "the fake's org budget per window in BenchmarkLanes (-short: 60)")
	lanesWindowFlag   = flag.Duration("bench.lanes-window", 10*time.Second, "the fake's budget window in BenchmarkLanes (-short: 1s)")
	liveEveryFlag     = flag.Duration("bench.live-every", time.Second, "time between two live updates in BenchmarkLanes (-short: 250ms)")
)

// lanesConcurrency is the worker's --concurrency in BenchmarkLanes: enough to cover the fake's
// 50 to 150 ms answers at the budget's pace.
const lanesConcurrency = 16

// BenchmarkLanes measures what the two lanes do for live updates during a backfill. A
// backfill of 5,000 updates (-short: 120) saturates the fake's budget of 600 requests per
// 10 s (-short: 60 per second; the example is 60 per 10 s, which takes ten times as
// long for the same figures), with --rate-per-minute at the budget, --concurrency 16 and
// answers after 50 to 150 ms, while a live update arrives every second (-short: 250 ms)
// until nine tenths of the backfill are applied. Every live update is of a conversation
// whose backfill update is still pending, so that every cross-lane order check finds one
// and the live update waits for it to be applied first.
//
// Two runs per repetition, each on a fresh NATS server and fake, in alternating order:
//   - lanes: the pool wired as the run command wires it (both lanes, the order check on a
//     connection of its own so that its requests can be counted), the backfill published to
//     kustomer.conversations.backfill.<id> and live updates to kustomer.conversations.update.<id>;
//   - one lane, the baseline: the pool on the live lane only, everything published to
//     kustomer.conversations.update.<id>, as before lanes: a live update waits behind the
//     backlog.
//
// Reported (medians over the repetitions; percentiles over every live update of all of
// them): live latency p50 and p99 from publish to the live PUT arriving at the fake, for
// both; backfill updates per second, for both, and the share of the backfill's throughput
// lost with lanes; the order check per message, by the lane whose message asked: its time
// (p50, p99) and NATS requests, and how often it found an older update. Checked: every
// conversation ends at its live update (applied after its backfill update), and each update
// is applied once. Target (issue 13): live p99 under 2 s.
func BenchmarkLanes(b *testing.B) {
	n := pick("bench.lanes-backfill", lanesBackfillFlag, 120)
	budget := pick("bench.lanes-budget", lanesBudgetFlag, 60)
	window := pick("bench.lanes-window", lanesWindowFlag, time.Second)
	every := pick("bench.live-every", liveEveryFlag, 250*time.Millisecond)
	var lanes, base []lanesRun
	var liveLat, baseLat []float64
	checks := map[queue.Lane]*checkStats{queue.LaneLive: {}, queue.LaneBackfill: {}}
	for i := range repetitions(b) {
		withLanes := func() lanesRun { return runLanes(b, n, budget, window, every, true) }
		oneLane := func() lanesRun { return runLanes(b, n, budget, window, every, false) }
		var l, o lanesRun
		if i%2 == 0 {
			l, o = withLanes(), oneLane()
		} else {
			o, l = oneLane(), withLanes()
		}
		b.Logf("repetition %d: lanes: %d live, p50 %.0f ms, p99 %.0f ms, backfill %.1f/s; one lane: %d live, p50 %.0f ms, p99 %.0f ms, backfill %.1f/s",
			i+1, len(l.live), percentile(l.live, 50), percentile(l.live, 99), l.backfillPerSec,
			len(o.live), percentile(o.live, 50), percentile(o.live, 99), o.backfillPerSec)
		for lane, c := range l.checks {
			b.Logf("repetition %d: checks of %s messages against the other lane: %d, found older %d, p50 %.0f µs, p99 %.0f µs, %.2f requests each",
				i+1, lane, len(c.micros), c.found, percentile(c.micros, 50), percentile(c.micros, 99), c.requestsPer())
			checks[lane].add(c)
		}
		lanes, base = append(lanes, l), append(base, o)
		liveLat, baseLat = append(liveLat, l.live...), append(baseLat, o.live...)
	}
	perSec := func(rs []lanesRun) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = r.backfillPerSec
		}
		return median(xs)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(budget)/window.Seconds(), "budget_per_s")
	b.ReportMetric(percentile(liveLat, 50), "live_p50_ms")
	b.ReportMetric(percentile(liveLat, 99), "live_p99_ms")
	b.ReportMetric(percentile(baseLat, 50), "one_lane_live_p50_ms")
	b.ReportMetric(percentile(baseLat, 99), "one_lane_live_p99_ms")
	lp, bp := perSec(lanes), perSec(base)
	b.ReportMetric(lp, "backfill_per_s")
	b.ReportMetric(bp, "one_lane_backfill_per_s")
	b.ReportMetric(100*(1-lp/bp), "backfill_lost_%")
	for _, lane := range queue.Lanes() {
		c := checks[lane]
		b.ReportMetric(percentile(c.micros, 50), string(lane)+"_check_p50_us")
		b.ReportMetric(percentile(c.micros, 99), string(lane)+"_check_p99_us")
		b.ReportMetric(c.requestsPer(), string(lane)+"_check_requests")
		b.ReportMetric(100*float64(c.found)/float64(max(len(c.micros), 1)), string(lane)+"_check_found_%")
	}
}

// lanesRun is what one run of BenchmarkLanes got.
type lanesRun struct {
	live           []float64 // ms from publish to the live PUT, one per live update
	backfillPerSec float64   // backfill updates applied per second, first request to last
	checks         map[queue.Lane]*checkStats
}

// runLanes runs one backfill with live updates arriving, with both lanes or (withLanes
// false) everything in the live lane, on a fresh NATS server and fake.
func runLanes(b *testing.B, n, budget int, window, every time.Duration, withLanes bool) lanesRun {
	r := newRig(b, kustomertest.Config{Budget: budget, Window: window, Latency: 50 * time.Millisecond, LatencyJitter: 100 * time.Millisecond}, lanesConcurrency)
	backfill := queue.LaneBackfill
	if !withLanes {
		backfill = queue.LaneLive
	}
	r.backlogIn(backfill, 0, n)
	perMinute := int(float64(budget) * float64(time.Minute) / float64(window))
	var checks *timedCheck
	var stop func()
	if withLanes {
		checks = newTimedCheck(r)
		stop = r.startLanes(perMinute, checks)
	} else {
		stop = r.startPool(perMinute)
	}

	// Live updates, each of a conversation whose backfill update is still pending: the
	// backfill is applied roughly from the first conversation on, so they are taken from the
	// last one down.
	type sent struct {
		conv int
		at   time.Time
	}
	var live []sent
	tick := time.NewTicker(every)
	for k := 0; r.fake.Stats().Applied < n*9/10; k++ {
		<-tick.C
		conv := n - 1 - k
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t0 := time.Now()
		_, err := r.js.Publish(ctx, r.top.ConversationSubject(queue.LaneLive, convID(conv)),
			fmt.Appendf(nil, `{"id":%q,"body":{"name":"live-%d"}}`, convID(conv), k))
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		live = append(live, sent{conv, t0})
	}
	tick.Stop()
	r.waitDrained(n+len(live), time.Duration(10*float64(n)/float64(budget))*window+time.Minute)
	stop()

	var run lanesRun
	if checks != nil {
		run.checks = checks.stats()
	}
	var first, last time.Time
	applied := 0
	for _, q := range r.fake.Requests() {
		if q.Status/100 != 2 || bytes.Contains(q.Body, []byte(`"live-`)) {
			continue
		}
		applied++
		if first.IsZero() {
			first = q.Time
		}
		last = q.Time
	}
	if applied != n {
		b.Errorf("%d backfill updates applied; want %d, each once", applied, n)
	}
	run.backfillPerSec = float64(n-1) / last.Sub(first).Seconds()
	stale := 0
	for _, s := range live {
		var reqs []kustomertest.Request
		for _, q := range r.fake.RequestsFor(convID(s.conv)) {
			if q.Status/100 == 2 {
				reqs = append(reqs, q)
			}
		}
		if len(reqs) != 2 || !bytes.Contains(reqs[1].Body, []byte(`"live-`)) {
			stale++
			continue
		}
		run.live = append(run.live, ms(reqs[1].Time.Sub(s.at)))
	}
	if stale > 0 {
		b.Errorf("lanes %v: %d of %d live updates were not applied once, after their conversation's backfill update", withLanes, stale, len(live))
	}
	return run
}

// backlogIn publishes updates first to first+n-1 to lane l's <subject>.<id> and waits until
// the work stream holds them.
func (r *rig) backlogIn(l queue.Lane, first, n int) {
	r.tb.Helper()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	for i := first; i < first+n; i++ {
		// A machine busy with other work can take a moment to confirm 4,096 messages.
		if _, err := js.PublishAsync(r.top.ConversationSubject(l, convID(i)), update(i), jetstream.WithStallWait(time.Minute)); err != nil {
			r.tb.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatalf("publishing a backlog of %d did not complete within 5 minutes", n)
	}
	if got := r.streamMsgs(); got != uint64(n) {
		r.tb.Fatalf("work stream holds %d messages after publishing %d; want %d", got, n, n)
	}
}

// startLanes is startPool with the order check order.
func (r *rig) startLanes(ratePerMinute int, order worker.OlderFinder) (stop func()) {
	r.tb.Helper()
	return r.startDaemon(r.js, ratePerMinute, order)
}

// timedCheck is the real order check, timed: one queue.OrderCheck per lane checked, each on
// a NATS connection of its own, so that the requests of one check are the messages its
// connection sent meanwhile (the pool checks one lane's messages at a time, from that lane's
// fetch loop).
type timedCheck struct {
	oc map[queue.Lane]*queue.OrderCheck // by the lane checked: the other one than the message's
	nc map[queue.Lane]*nats.Conn

	mu sync.Mutex
	by map[queue.Lane]*checkStats // by the lane of the message that asked; guarded by mu
}

func newTimedCheck(r *rig) *timedCheck {
	r.tb.Helper()
	t := &timedCheck{oc: map[queue.Lane]*queue.OrderCheck{}, nc: map[queue.Lane]*nats.Conn{},
		by: map[queue.Lane]*checkStats{queue.LaneLive: {}, queue.LaneBackfill: {}}}
	for _, l := range queue.Lanes() {
		nc, js := queuetest.Connect(r.tb, r.url)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		oc, err := queue.NewOrderCheck(ctx, js, r.top)
		cancel()
		if err != nil {
			r.tb.Fatal(err)
		}
		t.oc[l], t.nc[l] = oc, nc
	}
	return t
}

func (t *timedCheck) OlderPending(ctx context.Context, lane queue.Lane, id string, before uint64) ([]*queue.DirectMsg, error) {
	nc := t.nc[lane]
	sent := nc.Stats().OutMsgs
	t0 := time.Now()
	older, err := t.oc[lane].OlderPending(ctx, lane, id, before)
	el := time.Since(t0)
	reqs := nc.Stats().OutMsgs - sent
	t.mu.Lock()
	c := t.by[lane.Other()]
	c.micros = append(c.micros, float64(el)/float64(time.Microsecond))
	c.requests += int(reqs)
	if len(older) > 0 {
		c.found++
	}
	t.mu.Unlock()
	return older, err
}

// stats are the checks so far, by the lane of the message that asked.
func (t *timedCheck) stats() map[queue.Lane]*checkStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[queue.Lane]*checkStats)
	for l, c := range t.by {
		out[l] = &checkStats{micros: append([]float64(nil), c.micros...), requests: c.requests, found: c.found}
	}
	return out
}

// checkStats are order checks: each one's time, and the requests and finds of all.
type checkStats struct {
	micros   []float64
	requests int
	found    int
}

func (c *checkStats) add(o *checkStats) {
	c.micros = append(c.micros, o.micros...)
	c.requests += o.requests
	c.found += o.found
}

func (c *checkStats) requestsPer() float64 {
	return float64(c.requests) / float64(max(len(c.micros), 1))
}
