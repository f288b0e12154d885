package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// Sizes. Each default is the full size of the issue; under -short the small size named in the
// usage applies unless the flag is given.
var (
	updatesFlag       = flag.Int("bench.updates", 20000, "updates per repetition of BenchmarkThroughput (-short: 500)")
	budgetUpdatesFlag = flag.Int("bench.budget-updates", 3000, "updates of BenchmarkBudget, every case (-short: 100)")
	budgetFlag        = flag.Int("bench.budget", 600, "the fake's org budget per window in the budget benchmarks (-short: 60)")
	windowFlag        = flag.Duration("bench.window", 10*time.Second, "the fake's budget window in the budget benchmarks (-short: 1s)")
	smallBacklogFlag  = flag.Int("bench.small-backlog", 1000, "the small backlog of BenchmarkMemory (-short: 200)")
	largeBacklogFlag  = flag.Int("bench.large-backlog", 100000, "the large backlog of BenchmarkMemory (-short: 2000)")
	enqueueLinesFlag  = flag.Int("bench.enqueue-lines", 100000, "lines of the file BenchmarkEnqueue publishes (-short: 5000)")
	samplesFlag       = flag.Int("bench.samples", 200, "messages BenchmarkLatency times per repetition (-short: 20)")
	repsFlag          = flag.Int("bench.reps", 3, "repetitions of each experiment per benchmark iteration; run with -benchtime=1x (-short: 1)")
)

// repetitions is how many times a benchmark repeats its experiment: -bench.reps per iteration.
// The testing package first calls every benchmark with b.N = 1 and, with -benchtime=Nx for N > 1,
// calls it again with b.N = N: -benchtime=1x with -bench.reps avoids that extra run.
func repetitions(b *testing.B) int { return b.N * max(pick("bench.reps", repsFlag, 1), 1) }

// pick is the value of the flag named name, or small under -short when the flag was not given.
func pick[T any](name string, v *T, small T) T {
	if !testing.Short() {
		return *v
	}
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	if given {
		return *v
	}
	return small
}

// apiKey is the key the fake accepts by default; a test value, not a secret.
const apiKey = kustomertest.DefaultAPIKey

var discard = slog.New(slog.DiscardHandler)

// rig is what every benchmark runs the worker and its baseline against: an embedded NATS
// server holding the streams the run command declares, a connection to it, and a fake
// Kustomer API.
type rig struct {
	tb     testing.TB
	url    string // NATS client URL
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	top    queue.Topology
	wc     worker.Config
	fake   *kustomertest.Server
	// convs, when above 0, is how many conversations backlog spreads its updates over, in
	// turn (update i goes to conversation i mod convs); 0: every update a conversation of its own.
	convs int
	// bySubject: backlog publishes each update to <live subject>.<id>, not the bare subject.
	bySubject bool
}

// newRig starts NATS and the fake, and declares the topology the run command declares with
// --concurrency=concurrency and every other flag at its default. Everything stops when tb ends.
func newRig(tb testing.TB, fake kustomertest.Config, concurrency int) *rig {
	tb.Helper()
	srv := queuetest.StartServer(tb)
	nc, js := queuetest.Connect(tb, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// As cmd/kustomer-worker/run.go derives them from its flags.
	wc := worker.Config{Concurrency: concurrency}.WithDefaults()
	top := queue.Topology{MaxAckPending: wc.MaxAckPending}.WithDefaults()
	if err := queue.Ensure(ctx, js, top); err != nil {
		tb.Fatal(err)
	}
	stream, err := js.Stream(ctx, top.Stream)
	if err != nil {
		tb.Fatal(err)
	}
	return &rig{tb: tb, url: srv.URL(), nc: nc, js: js, stream: stream, top: top, wc: wc, fake: kustomertest.NewServer(tb, fake)}
}

// convID is the conversation id of update i.
func convID(i int) string { return fmt.Sprintf("%024x", i+1) }

// update is a typical update message for conversation i: a partial update of a few attributes.
func update(i int) []byte { return updateOf(i, i) }

// updateOf is update i for conversation conv.
func updateOf(conv, i int) []byte {
	return fmt.Appendf(nil, `{"id":%q,"body":{"status":"open","priority":%d,"tags":["5f3c9a1b2c3d4e5f6071a001","5f3c9a1b2c3d4e5f6071a002"],"custom":{"tierStr":"gold","seq":%d}}}`,
		convID(conv), i%5+1, i)
}

// freshConsumer replaces both lanes' durable consumers with new ones of the same
// configuration, so a run finds no pull request, pin or delivery state left by the one before.
func (r *rig) freshConsumer() {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range queue.Lanes() {
		if err := r.js.DeleteConsumer(ctx, r.top.Stream, r.top.LaneConsumer(l)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			r.tb.Fatal(err)
		}
	}
	if err := queue.Ensure(ctx, r.js, r.top); err != nil {
		r.tb.Fatal(err)
	}
}

// backlog publishes updates first to first+n-1 and waits until the work stream holds them.
func (r *rig) backlog(first, n int) {
	r.tb.Helper()
	before := r.streamMsgs()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	for i := first; i < first+n; i++ {
		conv := i
		if r.convs > 0 {
			conv = i % r.convs
		}
		subject := r.top.Subject
		if r.bySubject {
			subject = r.top.ConversationSubject(queue.LaneLive, convID(conv))
		}
		if _, err := js.PublishAsync(subject, updateOf(conv, i), jetstream.WithStallWait(time.Minute)); err != nil {
			r.tb.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatalf("publishing a backlog of %d did not complete within 5 minutes", n)
	}
	if got := r.streamMsgs(); got != before+uint64(n) {
		r.tb.Fatalf("work stream holds %d messages after publishing %d to %d; want %d", got, n, before, before+uint64(n))
	}
}

// streamMsgs is how many messages the work stream holds: with its work-queue retention, those
// not yet acknowledged.
func (r *rig) streamMsgs() uint64 {
	r.tb.Helper()
	return queuetest.StreamMsgs(r.tb, r.js, r.top.Stream)
}

// waitDrained waits until the fake has applied want updates in all and the work stream is
// empty, checking every millisecond so that the end of a run is seen within about that.
func (r *rig) waitDrained(want int, timeout time.Duration) {
	r.tb.Helper()
	deadline := time.Now().Add(timeout)
	waitUntil := func(what string, done func() bool) {
		if !testwait.WithinEvery(time.Until(deadline), time.Millisecond, done) {
			r.tb.Fatalf("timed out after %s waiting for %s (fake: %+v)", timeout, what, r.fake.Stats())
		}
	}
	waitUntil(fmt.Sprintf("%d updates applied", want), func() bool { return r.fake.Stats().Applied >= want })
	waitUntil("the work stream to empty", func() bool { return r.streamMsgs() == 0 })
}

// startPool runs the worker pool of the run command, built by worker.NewPool as run builds it
// (both lanes, the order check, standby pins renewed, Outstanding), with --rate-per-minute
// ratePerMinute, on the rig's connection, until the returned function is called; that
// function returns once the pool has stopped.
func (r *rig) startPool(ratePerMinute int) (stop func()) {
	r.tb.Helper()
	return r.startDaemon(r.js, ratePerMinute, nil)
}

// startDaemon is startPool on js; order, when not nil, replaces the pool's order check.
func (r *rig) startDaemon(js jetstream.JetStream, ratePerMinute int, order worker.OlderFinder) (stop func()) {
	r.tb.Helper()
	_, stop = r.startWired(js, ratePerMinute, func(p *worker.Pool, _ *kustomer.Client) {
		if order != nil {
			p.Order = order
		}
	})
	return stop
}

// startWired runs the pool run builds (worker.NewPool) on js, with the last changes wire
// makes to it (nil: none), until stop, which returns once the pool has stopped. Its lanes'
// pins are renewed as run renews them (startStandby), and released at the end.
func (r *rig) startWired(js jetstream.JetStream, ratePerMinute int, wire func(*worker.Pool, *kustomer.Client)) (lanes queue.Consumers, stop func()) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lanes, attempts, err := queue.BindLanes(ctx, js, r.top)
	if err != nil {
		r.tb.Fatal(err)
	}
	client := r.client()
	pool, err := worker.NewPool(ctx, js, r.top, lanes, attempts, worker.Wiring{
		Client: client, Pacer: pacer.New(ratePerMinute), Metrics: worker.NewMetrics(prometheus.NewRegistry()),
		Log: discard, Config: r.wc,
	})
	if err != nil {
		r.tb.Fatal(err)
	}
	if wire != nil {
		wire(pool, client)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	var pins sync.WaitGroup
	pins.Go(func() { _ = lanes.Live.Run(pctx) })
	pins.Go(func() { _ = lanes.Backfill.Run(pctx) })
	stopPool := r.runPool(pool, client)
	return lanes, func() {
		stopPool()
		uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = lanes.Live.Unpin(uctx)
		_ = lanes.Backfill.Unpin(uctx)
		ucancel()
		pcancel()
		pins.Wait()
	}
}

// startStripped runs the pool as it was built before lanes, the order check and standby:
// the live lane only, no order check, no Outstanding (every acknowledgement confirmed), on js.
// It shows what those mechanisms cost.
func (r *rig) startStripped(js jetstream.JetStream) (stop func()) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, attempts, err := queue.Bind(ctx, js, r.top)
	if err != nil {
		r.tb.Fatal(err)
	}
	client := r.client()
	pool := &worker.Pool{
		Consumer:    cons,
		Client:      client,
		DeadLetters: &queue.DeadLetterPublisher{JS: js, Subject: r.top.DLQSubject},
		Attempts:    attempts,
		Pacer:       pacer.New(0),
		Metrics:     worker.NewMetrics(prometheus.NewRegistry()),
		Log:         discard,
		Config:      r.wc,
	}
	return r.runPool(pool, client)
}

// client is a Kustomer client of the fake.
func (r *rig) client() *kustomer.Client {
	r.tb.Helper()
	client, err := kustomer.New(kustomer.Options{BaseURL: r.fake.URL, Key: kustomer.StaticKey(apiKey), Timeout: 30 * time.Second})
	if err != nil {
		r.tb.Fatal(err)
	}
	return client
}

// runPool runs pool until the returned function is called, which stops it (failing the
// benchmark if it does not stop within a minute) and closes client's idle connections.
func (r *rig) runPool(pool *worker.Pool, client *kustomer.Client) (stop func()) {
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(rctx) }()
	return func() {
		rcancel()
		select {
		case err := <-done:
			if err != nil {
				r.tb.Errorf("pool: %v", err)
			}
		case <-time.After(time.Minute):
			r.tb.Fatal("pool did not stop within a minute")
		}
		client.CloseIdleConnections()
	}
}

// startBaseline runs the simplest consumer that does the pool's job, on js, until the
// returned function is called: c goroutines share one Messages iterator on the same durable consumer;
// each decodes a message, sends its PUT with a plain http.Client and acks it on a 2xx, naks it
// otherwise. No pacing, no retries, no per-conversation order, no dead letters, no metrics.
// The returned function returns once every goroutine has stopped.
func (r *rig) startBaseline(js jetstream.JetStream, c int) (stop func()) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, _, err := queue.Bind(ctx, js, r.top) // pulls in the consumer's priority group
	if err != nil {
		r.tb.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		r.tb.Fatal(err)
	}
	// Enough idle connections for c requests at once, so the baseline does not pay for new
	// connections (http.DefaultTransport keeps 2 per host).
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}, Timeout: 30 * time.Second}
	base := r.fake.URL + "/v1/conversations/"
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for {
				msg, err := it.Next()
				if err != nil {
					return // the iterator was stopped
				}
				u, ok := parseBare(msg.Data())
				if !ok {
					_ = msg.Term()
					continue
				}
				status, err := putBare(hc, base, u)
				if err != nil {
					_ = msg.Nak()
					continue
				}
				if status/100 == 2 {
					_ = msg.Ack()
				} else {
					_ = msg.Nak()
				}
			}
		})
	}
	return func() {
		it.Stop()
		wg.Wait()
		hc.CloseIdleConnections()
	}
}

// cpuTime is the CPU time, user and system, this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drain is one run through a backlog: how long it took and the CPU time the process spent.
type drain struct {
	elapsed time.Duration
	cpu     time.Duration
	n       int
	trips   map[string]int // round trips of the consumer's connection, by kind; nil if not counted
}

func (d drain) roundTripsPerUpdate() float64 { return float64(total(d.trips)) / float64(d.n) }

func (d drain) perSecond() float64 { return float64(d.n) / d.elapsed.Seconds() }

// cpuPerUpdate is in milliseconds.
func (d drain) cpuPerUpdate() float64 {
	return float64(d.cpu) / float64(time.Millisecond) / float64(d.n)
}

// median of xs, which it sorts; NaN when empty.
func median(xs []float64) float64 { return percentile(xs, 50) }

// percentile p (0 to 100) of xs by the nearest-rank method; it sorts xs. NaN when empty.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	rank := int(math.Ceil(p / 100 * float64(len(xs))))
	return xs[min(max(rank, 1), len(xs))-1]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// buildWorker builds cmd/kustomer-worker into a temporary directory and returns its path.
func buildWorker(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "kustomer-worker")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/kustomer-worker/kustomer-worker/cmd/kustomer-worker").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// bareUpdate is a message's update as the baselines read it: no validation.
type bareUpdate struct {
	ID   string          `json:"id"`
	Body json.RawMessage `json:"body"`
}

// parseBare reads a message's update; ok is false when it is not JSON of one.
func parseBare(data []byte) (u bareUpdate, ok bool) {
	return u, json.Unmarshal(data, &u) == nil && u.ID != ""
}

// putBare sends u as a plain PUT with an http.Client, as a generic HTTP pipeline does, and
// returns the status; err is a transport failure.
func putBare(hc *http.Client, base string, u bareUpdate) (int, error) {
	req, err := http.NewRequest(http.MethodPut, base+u.ID, bytes.NewReader(u.Body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}
