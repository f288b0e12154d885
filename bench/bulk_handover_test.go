package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

var (
	handoverUpdatesFlag = flag.Int("bench.handover-updates", 10000, "backfill updates of BenchmarkBulkHandover, one per conversation (-short: 300)")
	handoverJobFlag     = flag.Duration("bench.handover-job", 30*time.Second, "how long the fake takes per bulk job in BenchmarkBulkHandover (-short: 13s)")
	handoverAckFlag     = flag.Duration("bench.handover-ack-wait", 8*time.Second, "the consumers' AckWait in BenchmarkBulkHandover (-short: 1s)")
)

// BenchmarkBulkHandover measures bulk mode across handovers: two replicas wired as `run --bulk
// --ack-wait 8s --rate-per-minute 1000 --concurrency 16` wires them, a backfill of 10,000
// conversations (-short: 300) on the backfill lane, bulk jobs that Kustomer applies 30 s
// after their submit (-short: 13 s; either way longer than twice AckWait plus the 10 s the
// new active replica waits for the old one's messages), and the pins moving from one replica
// to the other twice while jobs are in flight, both replicas running, as when the active
// one's NATS connection drops for a moment. After the first move, a newer live update of
// every tenth conversation is published.
//
// The same drain without moves, in the same repetition, is the baseline. Reported (medians):
// conversations that end at an older update than their last (stale) or at none (lost),
// dead letters, units spent with and without handovers and their ratio, wall time of both.
// Targets: 0 stale, 0 lost, units at most 1.2 × the run without handovers.
func BenchmarkBulkHandover(b *testing.B) {
	n := pick("bench.handover-updates", handoverUpdatesFlag, 300)
	job := pick("bench.handover-job", handoverJobFlag, 13*time.Second)
	ackWait := pick("bench.handover-ack-wait", handoverAckFlag, time.Second)
	const perMinute = 1000
	r := newRig(b, kustomertest.Config{Budget: 100, Window: 6 * time.Second, BulkDuration: job, DisableLog: true}, 16)
	r.wc = worker.Config{Concurrency: 16, Bulk: bulk.Config{Enabled: true}}.WithDefaults()
	r.top.MaxAckPending, r.top.AckWait = r.wc.MaxAckPending, ackWait
	var stale, lost, dead, ratio, units, unitsBase, secs, secsBase []float64
	for i := range repetitions(b) {
		base := r.handoverDrain(fmt.Sprintf("r%d-base", i), n, 0, perMinute, job)
		moved := r.handoverDrain(fmt.Sprintf("r%d-moved", i), n, 2, perMinute, job)
		for _, d := range []handoverRun{base, moved} {
			switch {
			case d.lost+d.dead > 0:
				b.Errorf("%s: %d lost, %d dead letters; want none", d.tag, d.lost, d.dead)
			case d.stale > 0:
				b.Errorf("%s: %d stale; want none", d.tag, d.stale)
			}
		}
		stale, lost, dead = append(stale, float64(moved.stale)), append(lost, float64(moved.lost)), append(dead, float64(moved.dead))
		units, unitsBase = append(units, float64(moved.units)), append(unitsBase, float64(base.units))
		ratio = append(ratio, float64(moved.units)/float64(max(base.units, 1)))
		secs, secsBase = append(secs, moved.elapsed.Seconds()), append(secsBase, base.elapsed.Seconds())
		b.Logf("repetition %d: %d updates; without handovers %d units in %.1fs; with %d handovers %d units in %.1fs (%.2fx units), %d stale, %d lost, %d dead letters",
			i+1, n+n/10, base.units, base.elapsed.Seconds(), moved.moves, moved.units, moved.elapsed.Seconds(), ratio[len(ratio)-1], moved.stale, moved.lost, moved.dead)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(stale), "stale")
	b.ReportMetric(median(lost), "lost")
	b.ReportMetric(median(dead), "dead_letters")
	b.ReportMetric(median(units), "units")
	b.ReportMetric(median(unitsBase), "units_without_handover")
	b.ReportMetric(median(ratio), "units_ratio")
	b.ReportMetric(median(secs), "s")
	b.ReportMetric(median(secsBase), "s_without_handover")
}

// handoverRun is one drain of BenchmarkBulkHandover.
type handoverRun struct {
	tag                      string
	moves                    int
	stale, lost, dead, units int
	elapsed                  time.Duration
}

// handoverDrain publishes one backfill update to each of n conversations, runs two replicas
// on them, moves the pins moves times while the first jobs (of duration job) are in flight,
// publishes a newer live update of every tenth conversation after the first move (or at the
// same moment without moves), and checks where each conversation ends.
func (r *rig) handoverDrain(tag string, n, moves, perMinute int, job time.Duration) handoverRun {
	r.tb.Helper()
	r.freshConsumer()
	dl0 := queuetest.StreamMsgs(r.tb, r.js, r.top.DLQStream)
	st0 := r.fake.Stats()
	body := func(c int, round int) []byte {
		return fmt.Appendf(nil, `{"id":%q,"body":{"name":"%s-%d"}}`, convID(c), tag, round)
	}
	r.publishAll(n, func(c int) (string, []byte) { return r.top.BackfillSubject, body(c, 0) })
	newer := 0
	t0 := time.Now()
	reps := [2]*benchReplica{r.startReplica(perMinute), r.startReplica(perMinute)}
	defer func() {
		for _, rep := range reps {
			rep.stop()
		}
	}()
	// Mid-job, at a third of the first jobs' duration, the pins move (if moves > 0) and the
	// newer live updates follow; at two thirds the pins move again (if moves > 1), and so on.
	for m := range max(moves, 1) {
		time.Sleep(time.Until(t0.Add(job * time.Duration(m+1) / time.Duration(max(moves, 1)+1))))
		if m < moves {
			r.movePins(reps)
		}
		if m == 0 {
			r.publishAll(n, func(c int) (string, []byte) {
				if c%10 != 0 {
					return "", nil
				}
				return r.top.Subject, body(c, 1)
			})
			newer = (n + 9) / 10
		}
	}
	r.waitDrained(st0.Applied+n+newer, 30*time.Minute)
	out := handoverRun{tag: tag, moves: moves, elapsed: time.Since(t0), units: r.fake.Stats().Units - st0.Units,
		dead: int(queuetest.StreamMsgs(r.tb, r.js, r.top.DLQStream) - dl0)}
	for c := range n {
		want, old := fmt.Sprintf("%s-0", tag), ""
		if c%10 == 0 {
			want, old = fmt.Sprintf("%s-1", tag), want
		}
		conv, _ := r.fake.Conversation(convID(c))
		switch got := fmt.Sprint(conv.Attributes["name"]); got {
		case want:
		case old:
			out.stale++
		default:
			out.lost++
		}
	}
	return out
}

// publishAll publishes, for each of n conversations, the message msg gives (none where its
// subject is ""), and waits for the acknowledgements.
func (r *rig) publishAll(n int, msg func(c int) (subject string, data []byte)) {
	r.tb.Helper()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	for c := range n {
		subject, data := msg(c)
		if subject == "" {
			continue
		}
		for {
			_, err := js.PublishAsync(subject, data)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				r.tb.Fatal(err)
			}
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatal("publishing did not complete within 5 minutes")
	}
}

// benchReplica is one replica of BenchmarkBulkHandover, on a connection of its own.
type benchReplica struct {
	lanes queue.Consumers
	stop  func()
}

// startReplica runs a pool as `run --bulk` wires it (worker.NewPool, the bulk bucket, the
// pins renewed) on a NATS connection of its own, until stop.
func (r *rig) startReplica(perMinute int) *benchReplica {
	r.tb.Helper()
	_, js := queuetest.Connect(r.tb, r.url)
	lanes, stop := r.startWired(js, perMinute, func(p *worker.Pool, client *kustomer.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		store, err := queue.BindBulk(ctx, js, r.top, true)
		if err != nil {
			r.tb.Fatal(err)
		}
		p.BulkClient, p.BulkJobs = client, store
	})
	return &benchReplica{lanes: lanes, stop: sync.OnceFunc(stop)}
}

// movePins moves the pins of both lanes at the server from the replica that holds the
// backfill lane's to the other, both running: it unpins both lanes until the other replica's
// next pull is the one the server pins.
func (r *rig) movePins(reps [2]*benchReplica) {
	r.tb.Helper()
	holder := func() int {
		pin := r.serverPin(queue.LaneBackfill)
		for i, rep := range reps {
			if pin != "" && rep.lanes.Backfill.Role().PinID == pin {
				return i
			}
		}
		return -1
	}
	var from int
	if !waitFor(time.Minute, func() bool { from = holder(); return from >= 0 }) {
		r.tb.Fatal("no replica holds the backfill lane's pin")
	}
	to := 1 - from
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for round := 1; holder() != to; round++ {
		if round > 50 {
			r.tb.Fatal("the backfill lane's pin never moved to the other replica")
		}
		for _, l := range queue.Lanes() {
			if err := r.stream.UnpinConsumer(ctx, r.top.LaneConsumer(l), r.top.PriorityGroup); err != nil {
				r.tb.Fatal(err)
			}
		}
		waitFor(5*time.Second, func() bool { return holder() >= 0 })
	}
}

// serverPin is the pin id the server holds on lane l's consumer; "" when it pins no one.
func (r *rig) serverPin(l queue.Lane) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.js.Consumer(ctx, r.top.Stream, r.top.LaneConsumer(l))
	if err != nil {
		return ""
	}
	info, err := c.Info(ctx)
	if err != nil {
		return ""
	}
	for _, g := range info.PriorityGroups {
		if g.Group == r.top.PriorityGroup {
			return g.PinnedClientID
		}
	}
	return ""
}

// waitFor reports whether done turned true within d, checking every 20 ms.
func waitFor(d time.Duration, done func() bool) bool {
	return testwait.WithinEvery(d, 20*time.Millisecond, done)
}
