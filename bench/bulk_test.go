package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

var (
	bulkUpdatesFlag = flag.Int("bench.bulk-updates", 10000, "updates of BenchmarkBulk in bulk mode (-short: 300)")
	bulkSingleFlag  = flag.Int("bench.bulk-single", 1000, "updates of BenchmarkBulk's single-PUT baseline, timed and extrapolated to bench.bulk-updates (-short: 30)")
	bulkBudgetFlag  = flag.Int("bench.bulk-budget", 100, "the fake's org budget per window in BenchmarkBulk (-short: 100)")
	bulkWindowFlag  = flag.Duration("bench.bulk-window", 6*time.Second, "the fake's budget window in BenchmarkBulk (-short: 1s)")
	bulkJobFlag     = flag.Duration("bench.bulk-job", 2*time.Second, "how long the fake takes per bulk job in BenchmarkBulk (-short: 200ms)")
)

// BenchmarkBulk measures bulk mode against a fake org budget of 100 requests per
// 6-second window (1,000 a minute, an Enterprise org's, scaled down) whose bulk jobs take 2 s
// each (-short: 100 per second, 200 ms). The worker is wired as `run --bulk --rate-per-minute
// 1000 --concurrency 16` wires it (both lanes, the order check, the pins), and the updates
// are published on the backfill lane, the lane that goes in bulk.
//
//   - backfill: 10,000 updates to 10,000 conversations (-short: 300). The single-PUT
//     baseline, the same pool without --bulk, is timed in the same repetition on the first
//     1,000 of them (-short: 30), since at one unit an update it needs ten minutes for all;
//     its time for the whole backlog is extrapolated at its measured rate, and its units are
//     one per update (counted on the part it ran).
//   - order_bound: 1,000 conversations × 10 updates each (-short: 30 × 10), published round
//     by round: each conversation's next update waits until its previous one is settled, so
//     a job holds at most one update of each.
//
// Reported (medians): units of the budget spent per 100 updates applied and in all, wall
// time, the speedup over single PUTs, the peak of held messages and of the heap in use.
// Targets: backfill at most 2.5 units per 100 updates (250 for 10,000) and at least 20 times
// faster than single PUTs.
func BenchmarkBulk(b *testing.B) {
	n := pick("bench.bulk-updates", bulkUpdatesFlag, 300)
	single := min(pick("bench.bulk-single", bulkSingleFlag, 30), n)
	budget := pick("bench.bulk-budget", bulkBudgetFlag, 100)
	window := pick("bench.bulk-window", bulkWindowFlag, time.Second)
	job := pick("bench.bulk-job", bulkJobFlag, 200*time.Millisecond)
	perMinute := int(float64(budget) * float64(time.Minute) / float64(window))
	fake := kustomertest.Config{Budget: budget, Window: window, BulkDuration: job, DisableLog: true}

	b.Run("backfill", func(b *testing.B) {
		r := newBulkRig(b, fake)
		var units, secs, speedup, held, heap, singleSecs []float64
		for i := range repetitions(b) {
			s := r.bulkDrain(single, 1, perMinute, false)
			d := r.bulkDrain(n, 1, perMinute, true)
			extrapolated := s.elapsed.Seconds() * float64(n) / float64(single)
			units = append(units, 100*float64(d.units)/float64(n))
			secs = append(secs, d.elapsed.Seconds())
			singleSecs = append(singleSecs, extrapolated)
			speedup = append(speedup, extrapolated/d.elapsed.Seconds())
			held, heap = append(held, float64(d.peakHeld)), append(heap, d.peakHeapMiB)
			b.Logf("repetition %d: bulk %d updates in %.1fs, %d units (%d submits, %d reads, %d single PUTs), peak %d held, %.1f MiB heap; single PUTs %d updates in %.1fs, %d units: %.0fs for %d extrapolated, %.1fx",
				i+1, n, d.elapsed.Seconds(), d.units, d.submits, d.reads, d.units-d.submits-d.reads, d.peakHeld, d.peakHeapMiB,
				single, s.elapsed.Seconds(), s.units, extrapolated, n, extrapolated/d.elapsed.Seconds())
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(median(units), "units/100updates")
		b.ReportMetric(median(units)*float64(n)/100, "units")
		b.ReportMetric(median(secs), "s")
		b.ReportMetric(median(singleSecs), "single_put_s_extrapolated")
		b.ReportMetric(median(speedup), "speedup_vs_single_put")
		b.ReportMetric(median(held), "peak_held")
		b.ReportMetric(median(heap), "peak_heap_MiB")
	})

	b.Run("order_bound", func(b *testing.B) {
		r := newBulkRig(b, fake)
		convs := max(n/10, 1)
		var units, secs, held []float64
		for i := range repetitions(b) {
			d := r.bulkDrain(convs, 10, perMinute, true)
			units = append(units, 100*float64(d.units)/float64(convs*10))
			secs = append(secs, d.elapsed.Seconds())
			held = append(held, float64(d.peakHeld))
			b.Logf("repetition %d: %d conversations × 10 updates in %.1fs, %d units (%d submits, %d reads, %d single PUTs), peak %d held",
				i+1, convs, d.elapsed.Seconds(), d.units, d.submits, d.reads, d.units-d.submits-d.reads, d.peakHeld)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(median(units), "units/100updates")
		b.ReportMetric(median(secs), "s")
		b.ReportMetric(median(held), "peak_held")
	})
}

// newBulkRig is newRig with the consumer's MaxAckPending raised as `run --bulk` raises it.
func newBulkRig(tb testing.TB, fake kustomertest.Config) *rig {
	tb.Helper()
	r := newRig(tb, fake, 16)
	r.wc = worker.Config{Concurrency: 16, Bulk: bulk.Config{Enabled: true}}.WithDefaults()
	r.top.MaxAckPending = r.wc.MaxAckPending
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, r.js, r.top); err != nil {
		tb.Fatal(err)
	}
	return r
}

// bulkRun is one drain in BenchmarkBulk.
type bulkRun struct {
	elapsed               time.Duration
	units, submits, reads int
	peakHeld              int
	peakHeapMiB           float64
}

// bulkDrain publishes rounds updates to each of convs conversations, round by round, then
// drains them with a pool in bulk mode or not, and says what it cost.
func (r *rig) bulkDrain(convs, rounds, perMinute int, bulk bool) bulkRun {
	r.tb.Helper()
	r.freshConsumer()
	n := convs * rounds
	r.rounds(convs, rounds)
	st0 := r.fake.Stats()
	runtime.GC()
	metrics := worker.NewMetrics(prometheus.NewRegistry())
	var (
		mu       sync.Mutex
		peakHeld int
		peakHeap uint64
	)
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
			runtime.ReadMemStats(&ms)
			mu.Lock()
			var g dto.Metric
			if metrics.Held.Write(&g) == nil {
				peakHeld = max(peakHeld, int(g.GetGauge().GetValue()))
			}
			peakHeap = max(peakHeap, ms.HeapInuse)
			mu.Unlock()
		}
	})
	t0 := time.Now()
	stop := r.startBulkPool(perMinute, bulk, metrics)
	r.waitDrained(st0.Applied+n, 30*time.Minute)
	elapsed := time.Since(t0)
	stop()
	stopSampling()
	wg.Wait()
	st := r.fake.Stats()
	return bulkRun{elapsed: elapsed, units: st.Units - st0.Units, submits: st.BulkSubmits - st0.BulkSubmits,
		reads: st.BulkReads - st0.BulkReads, peakHeld: peakHeld, peakHeapMiB: float64(peakHeap) / (1 << 20)}
}

// startBulkPool runs a pool as `run` wires it (startWired), in bulk mode when bulk, with the
// bulk bucket, its metrics in metrics.
func (r *rig) startBulkPool(perMinute int, bulk bool, metrics *worker.Metrics) (stop func()) {
	r.tb.Helper()
	_, stop = r.startWired(r.js, perMinute, func(p *worker.Pool, client *kustomer.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		store, err := queue.BindBulk(ctx, r.js, r.top, false)
		if err != nil {
			r.tb.Fatal(err)
		}
		p.BulkClient, p.BulkJobs, p.Metrics = client, store, metrics
		p.Config.Bulk.Enabled = bulk
	})
	return stop
}

// rounds publishes rounds updates to each of convs conversations, round by round, and waits
// until the work stream holds them.
func (r *rig) rounds(convs, rounds int) {
	r.tb.Helper()
	before := r.streamMsgs()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	for k := range rounds {
		for c := range convs {
			msg := fmt.Appendf(nil, `{"id":%q,"body":{"status":"open","priority":%d,"custom":{"roundNum":%d}}}`, convID(c), c%5+1, k)
			for {
				_, err := js.PublishAsync(r.top.BackfillSubject, msg)
				if err == nil {
					break
				}
				if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
					r.tb.Fatal(err)
				}
				<-js.PublishAsyncComplete() // a slow machine: let the acknowledgements catch up
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatal("publishing did not complete within 5 minutes")
	}
	if got := r.streamMsgs(); got != before+uint64(convs*rounds) {
		r.tb.Fatalf("work stream holds %d messages; want %d", got, before+uint64(convs*rounds))
	}
}
