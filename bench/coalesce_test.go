package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

var (
	coalesceUpdatesFlag = flag.Int("bench.coalesce-updates", 20000, "updates of the burst of BenchmarkCoalesce (-short: 400)")
	coalesceConvsFlag   = flag.Int("bench.coalesce-convs", 2000, "conversations the burst of BenchmarkCoalesce spreads over, Zipf s=1 (-short: 40)")
	coalesceArrivalFlag = flag.Int("bench.coalesce-arrival", 2000, "updates a second published in BenchmarkCoalesce; the budget is a tenth of it (-short: 1000)")
)

// BenchmarkCoalesce measures what --coalesce live saves on a replayed burst: 20,000 updates
// (-short: 400) over 2,000 conversations (-short: 40) whose popularity follows Zipf's law with
// s = 1, each a partial update of a few of name, status, priority, tags and assignedUsers,
// published at 2,000 a second (-short: 1,000) while --rate-per-minute allows a tenth of that.
// Every 50th message is a probe to a conversation of its own, whose time from publishing to
// its PUT arriving at the fake is the live latency. The same burst is drained by the pool of
// the run command (worker.NewPool) with and without --coalesce live, at --max-ack-pending
// 1000 and at its default, on fresh conversations each time.
//
// Reported per max-ack-pending: the units (requests the fake counted) with merging over
// those without (target at 1000: at most 0.4), the probes' p99 latency both ways, and the
// conversations whose final state differs from applying every update alone in order (stale,
// target 0) and the updates never acknowledged (lost, target 0: the run fails on either).
func BenchmarkCoalesce(b *testing.B) {
	n := pick("bench.coalesce-updates", coalesceUpdatesFlag, 400)
	convs := pick("bench.coalesce-convs", coalesceConvsFlag, 40)
	arrival := pick("bench.coalesce-arrival", coalesceArrivalFlag, 1000)
	burst := zipfBurst(n, convs)
	r := newRig(b, kustomertest.Config{Budget: -1}, worker.DefaultConcurrency)
	base := 0 // conversation ids used so far: each run has fresh ones
	for _, map_ := range []int{1000, 0} {
		name := fmt.Sprintf("max_ack_pending_%d", map_)
		if map_ == 0 {
			name = "max_ack_pending_default"
		}
		b.Run(name, func(b *testing.B) {
			var plain, merged []coalesceRun
			for range repetitions(b) {
				for _, on := range []bool{false, true} {
					run := r.coalesceRun(burst, convs, base, map_, on, arrival)
					base += convs + n
					if on {
						merged = append(merged, run)
					} else {
						plain = append(plain, run)
					}
					b.Logf("coalesce=%v max-ack-pending=%d: %d units for %d updates, %.1f s, probe p99 %.0f ms, stale %d, lost %d",
						on, map_, run.units, n, run.elapsed.Seconds(), run.p99, run.stale, run.lost)
					if run.stale > 0 || run.lost > 0 {
						b.Errorf("coalesce=%v: %d conversations stale, %d updates lost; want none", on, run.stale, run.lost)
					}
				}
			}
			ratio := make([]float64, len(plain))
			p99, p99Plain := make([]float64, len(plain)), make([]float64, len(plain))
			for i := range plain {
				ratio[i] = float64(merged[i].units) / float64(plain[i].units)
				p99[i], p99Plain[i] = merged[i].p99, plain[i].p99
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(ratio), "units_ratio")
			b.ReportMetric(float64(merged[0].units), "units_merged")
			b.ReportMetric(float64(plain[0].units), "units_plain")
			b.ReportMetric(median(p99), "probe_p99_ms")
			b.ReportMetric(median(p99Plain), "probe_p99_plain_ms")
		})
	}
}

// burstUpdate is one update of the burst: its conversation (an index) and body.
type burstUpdate struct {
	conv int
	body map[string]any
}

// zipfBurst makes n updates over convs conversations, conversation k (from 0) drawn with
// weight 1/(k+1), each setting one to three of the keys of a state synchronisation.
func zipfBurst(n, convs int) []burstUpdate {
	r := rand.New(rand.NewPCG(27, 1))
	cdf := make([]float64, convs)
	sum := 0.0
	for k := range convs {
		sum += 1 / float64(k+1)
		cdf[k] = sum
	}
	out := make([]burstUpdate, n)
	for i := range out {
		conv := sort.SearchFloat64s(cdf, r.Float64()*sum)
		body := map[string]any{}
		for range 1 + r.IntN(3) {
			switch r.IntN(5) {
			case 0:
				body["name"] = fmt.Sprintf("name-%d", i)
			case 1:
				body["status"] = []string{"open", "snoozed", "done"}[r.IntN(3)]
			case 2:
				body["priority"] = 1 + r.IntN(5)
			case 3:
				body["tags"] = []string{fmt.Sprintf("t%d", r.IntN(10)), fmt.Sprintf("t%d", r.IntN(10))}
			case 4:
				body["assignedUsers"] = []string{fmt.Sprintf("%024x", r.IntN(50))}
			}
		}
		out[i] = burstUpdate{conv: min(conv, convs-1), body: body}
	}
	return out
}

// coalesceRun is what one drain of the burst got.
type coalesceRun struct {
	units   int
	elapsed time.Duration
	p99     float64 // ms, of the probes
	stale   int
	lost    int
}

// coalesceRun publishes burst at arrival a second, conversations numbered from base, with
// probes to conversations above base+convs, to a pool with --max-ack-pending maxAckPending (0:
// default) and --rate-per-minute a tenth of the arrival rate, with or without --coalesce live;
// it waits until everything is acknowledged and checks every conversation's final state.
func (r *rig) coalesceRun(burst []burstUpdate, convs, base, maxAckPending int, on bool, arrival int) coalesceRun {
	r.tb.Helper()
	wc := worker.Config{Concurrency: worker.DefaultConcurrency, MaxAckPending: maxAckPending}
	if on {
		wc.Coalesce = worker.CoalesceLanes{Live: true}
	}
	r.wc = wc.WithDefaults()
	r.top.MaxAckPending = r.wc.MaxAckPending
	r.freshConsumer()
	before := r.fake.Stats()
	stop := r.startPool(arrival * 60 / 10)
	defer stop()

	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	want := map[string]map[string]any{}
	probes := map[string]time.Time{}
	start := time.Now()
	const tick = 10 * time.Millisecond
	perTick := max(arrival/100, 1)
	for i, u := range burst {
		if i > 0 && i%perTick == 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i/perTick) * tick))) // the arrival pace
		}
		id := convID(base + u.conv)
		body, _ := json.Marshal(u.body)
		if _, err := js.PublishAsync(r.top.Subject, fmt.Appendf(nil, `{"id":%q,"body":%s}`, id, body), jetstream.WithStallWait(time.Minute)); err != nil {
			r.tb.Fatal(err)
		}
		state := want[id]
		if state == nil {
			state = map[string]any{}
		}
		maps.Copy(state, u.body)
		want[id] = state
		if i%50 == 0 {
			pid := convID(base + convs + i)
			probes[pid] = time.Now()
			if _, err := js.PublishAsync(r.top.Subject, fmt.Appendf(nil, `{"id":%q,"body":{"status":"open"}}`, pid)); err != nil {
				r.tb.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatal("publishing the burst did not complete within 5 minutes")
	}
	drained := testwait.WithinEvery(30*time.Minute, 20*time.Millisecond, func() bool { return r.streamMsgs() == 0 })
	run := coalesceRun{elapsed: time.Since(start), units: r.fake.Stats().Units - before.Units}
	if !drained {
		run.lost = int(r.streamMsgs())
	}
	for id, w := range want {
		c, ok := r.fake.Conversation(id)
		got := map[string]any{}
		if ok {
			got = normalize(c.Attributes)
		}
		if !reflect.DeepEqual(got, normalize(w)) {
			run.stale++
			if run.stale == 1 {
				r.tb.Logf("conversation %s ends as %v; want %v", id, got, normalize(w))
			}
		}
	}
	var lat []float64
	for pid, t0 := range probes {
		reqs := r.fake.RequestsFor(pid)
		if len(reqs) == 0 {
			run.lost++
			continue
		}
		lat = append(lat, ms(reqs[0].Time.Sub(t0)))
	}
	run.p99 = percentile(lat, 99)
	return run
}

// normalize is m as JSON would carry it (numbers float64, arrays []any), without rev.
func normalize(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	delete(out, "rev")
	return out
}
