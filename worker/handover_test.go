package worker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
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
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// handover is one embedded NATS server whose consumers have the pinned priority group, the
// fake Kustomer, and the replicas started on them.
type handover struct {
	t      *testing.T
	srv    *queuetest.Server
	js     jetstream.JetStream
	top    queue.Topology
	fake   *kustomertest.Server
	client *kustomer.Client
	// wire, when set, completes each replica's pool before it runs (js: the replica's own).
	wire func(p *worker.Pool, js jetstream.JetStream)
}

// replica is one worker process sharing the pinned consumers, wired as the command wires it:
// a connection of its own, both lanes' consumers, the order check, the recovery of order, and
// the renewal of both pins beside the pool.
type replica struct {
	lanes queue.Consumers
	pool  *worker.Pool
	logs  *syncBuffer // lines at Warn and above

	mu      sync.Mutex
	blocked []string // conversations whose request waits at the gate, in arrival order

	stop func()
}

func (r *replica) held() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.blocked)
}

// syncBuffer is a log sink that several goroutines write.
type syncBuffer = testwait.Buffer

func handoverSetup(t *testing.T) *handover {
	t.Helper()
	// AckWait is long enough that nothing is redelivered by its expiry, and the hold-back
	// (twice AckWait) does not run out, while the test runs:
	// what moves comes from the handover alone.
	return handoverSetupWith(t, time.Minute, kustomertest.Config{Budget: -1})
}

// handoverSetupWith is handoverSetup with the consumers' AckWait and the fake's config.
func handoverSetupWith(t *testing.T, ackWait time.Duration, fake kustomertest.Config) *handover {
	t.Helper()
	// MaxAckPending is the consumer's, above the first replica's own limit, so that this
	// replica stops pulling once it holds its share.
	return handoverSetupOn(t, queue.Topology{AckWait: ackWait, MaxAckPending: 128, PinnedTTL: 2 * time.Second, DedupWindow: time.Minute}, fake)
}

// handoverSetupOn is handoverSetup with the consumers of top and the fake's config.
func handoverSetupOn(t *testing.T, top queue.Topology, fake kustomertest.Config) *handover {
	t.Helper()
	h := &handover{t: t, srv: queuetest.StartServer(t)}
	_, h.js = queuetest.Connect(t, h.srv.URL())
	h.top = top.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, h.js, h.top); err != nil {
		t.Fatal(err)
	}
	h.fake = kustomertest.NewServer(t, fake)
	client, err := kustomer.New(kustomer.Options{BaseURL: h.fake.URL, Key: kustomer.StaticKey("test-key"), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.client = client
	t.Cleanup(client.CloseIdleConnections)
	return h
}

// warmup is the conversation whose update pins the first replica; its requests never wait.
const warmup = 1000

// activeAndStandby starts replica a, whose requests wait for gate, pinned on lane by a first
// update (of conversation warmup), then replica b, a running standby: b starts once a applied
// that update, so that b's own start finds nothing held elsewhere, and what follows happens
// while both run. b has room for the newer updates and the older ones (see docs/STANDBY.md,
// "Order and budget").
func (h *handover) activeAndStandby(lane queue.Lane, concurrency int, gate <-chan struct{}) (a, b *replica) {
	h.t.Helper()
	a = h.start("a", worker.Config{Concurrency: concurrency, MaxAckPending: 16}, gate)
	h.publish(lane, warmup, 0)
	testwait.Until(h.t, "the first replica to be active on the "+string(lane)+" lane", 20*time.Second, func() bool {
		return a.pin(lane).Active() && queuetest.StreamMsgs(h.t, h.js, h.top.Stream) == 0
	})
	return a, h.start("b", worker.Config{Concurrency: concurrency, MaxAckPending: 128}, nil)
}

// livePin is the pin id the server holds on the live lane's consumer; "" when it pins no one.
func (h *handover) livePin() string {
	h.t.Helper()
	for _, g := range h.info(queue.LaneLive).PriorityGroups {
		if g.Group == h.top.PriorityGroup {
			return g.PinnedClientID
		}
	}
	return ""
}

// pinLive makes the server pin replica to on the live lane, other being the only other
// replica: until the server's pin is to's, it unpins the server's pin (other's) and publishes
// a live update of conversation warmup, which pins whichever replica's pull the server serves
// first. Every decision reads the pin from the server and waits until a replica knows it:
// what a replica believes lags behind the server's (a replica whose pin the server dropped
// believes it active until its next pull is refused), and the server's unpin names no pin
// id, so an unpin decided on a replica's belief can drop the pin the last update just gave
// to, and the next update then pins other again.
func (h *handover) pinLive(to, other *replica) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.top.Stream)
	if err != nil {
		h.t.Fatal(err)
	}
	for round := 1; ; round++ {
		pin := h.livePin()
		if pin != "" && pin == to.pin(queue.LaneLive).Role().PinID {
			return
		}
		if round > 20 {
			h.t.Fatalf("the live pin never came to the wanted replica: the server's is %q", pin)
		}
		if pin != "" {
			if err := s.UnpinConsumer(ctx, h.top.Consumer, h.top.PriorityGroup); err != nil {
				h.t.Fatal(err)
			}
		}
		h.publish(queue.LaneLive, warmup, round)
		testwait.Until(h.t, "a replica to know it holds the server's live pin", 20*time.Second, func() bool {
			pin := h.livePin()
			return pin != "" && (pin == to.pin(queue.LaneLive).Role().PinID || pin == other.pin(queue.LaneLive).Role().PinID)
		})
	}
}

// appliedBut counts the updates applied to conversations 0..convs-1 but those in skip.
func (h *handover) appliedBut(convs int, skip []string) int {
	n := 0
	for i := range convs {
		if !slices.Contains(skip, id(i)) {
			n += len(h.applied(i))
		}
	}
	return n
}

// start runs a replica until the test ends. Its requests, but those of conversation warmup,
// wait until gate is closed (nil: they go at once).
func (h *handover) start(name string, cfg worker.Config, gate <-chan struct{}) *replica {
	h.t.Helper()
	_, js := queuetest.Connect(h.t, h.srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lanes, attempts, err := queue.BindLanes(ctx, js, h.top)
	if err != nil {
		h.t.Fatal(err)
	}
	order, err := queue.NewOrderCheck(ctx, js, h.top)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg.RetryInitial, cfg.RetryMax, cfg.FetchWait = 20*time.Millisecond, 200*time.Millisecond, 500*time.Millisecond
	lanes.Backfill.MaxWait = cfg.FetchWait
	r := &replica{lanes: lanes, logs: &syncBuffer{}}
	var up updaterFunc = func(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
		if gate != nil && u.ID != id(warmup) {
			r.mu.Lock()
			r.blocked = append(r.blocked, u.ID)
			r.mu.Unlock()
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return h.client.UpdateConversation(ctx, u)
	}
	// Every line from INFO up is kept apart and printed if the test fails: which replica
	// took which turn, and when, is what a failed handover test needs to be read.
	all := &syncBuffer{}
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("replica %s logged:\n%s", name, all.String())
		}
	})
	var log = slog.New(slog.NewMultiHandler(
		slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelWarn}),
		slog.NewTextHandler(all, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if os.Getenv("WORKER_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(io.MultiWriter(r.logs, os.Stderr), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r.pool = &worker.Pool{
		Consumer:    lanes.Live,
		Backfill:    lanes.Backfill,
		Order:       order,
		Client:      up,
		DeadLetters: &queue.DeadLetterPublisher{JS: js, Subject: h.top.DLQSubject},
		Attempts:    attempts,
		Outstanding: &queue.Outstanding{JS: js, Topology: h.top},
		Pacer:       pacer.New(-1),
		Log:         log.With("replica", name),
		Config:      cfg,
	}
	if h.wire != nil {
		h.wire(r.pool, js)
	}
	pctx, stopPool := context.WithCancel(context.Background())
	rctx, stopPins := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { done <- r.pool.Run(pctx) })
	wg.Go(func() { _ = lanes.Live.Run(rctx) })
	wg.Go(func() { _ = lanes.Backfill.Run(rctx) })
	r.stop = sync.OnceFunc(func() {
		// As the command: the pool drains first, the pins are kept until then.
		stopPool()
		if err := testwait.Recv(h.t, "Run to return", 60*time.Second, done); err != nil {
			h.t.Errorf("Run: %v", err)
		}
		stopPins()
		wg.Wait()
	})
	h.t.Cleanup(r.stop)
	testwait.Until(h.t, "pool running", 10*time.Second, func() bool { return !errors.Is(r.pool.Ready(), worker.ErrNotRunning) })
	return r
}

// publishRound publishes update "u-<round>" to each of convs conversations in lane l.
func (h *handover) publishRound(l queue.Lane, convs, round int) {
	h.t.Helper()
	for i := range convs {
		h.publish(l, i, round)
	}
}

// publish publishes update "u-<round>" to conversation n in lane l.
func (h *handover) publish(l queue.Lane, n, round int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := fmt.Sprintf(`{"id":%q,"body":{"name":"u-%d"}}`, id(n), round)
	if _, err := h.js.Publish(ctx, h.top.ConversationSubject(l, id(n)), []byte(msg)); err != nil {
		h.t.Fatal(err)
	}
}

// unpin makes the server drop the pin of lane l's consumer: the next delivery pins whichever
// replica pulls.
func (h *handover) unpin(l queue.Lane) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.top.Stream)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := s.UnpinConsumer(ctx, h.top.LaneConsumer(l), h.top.PriorityGroup); err != nil {
		h.t.Fatal(err)
	}
}

// info reads lane l's consumer.
func (h *handover) info(l queue.Lane) *jetstream.ConsumerInfo {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.js.Consumer(ctx, h.top.Stream, h.top.LaneConsumer(l))
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

// pin is a replica's consumer of lane l.
func (r *replica) pin(l queue.Lane) *queue.Pinned {
	if l == queue.LaneBackfill {
		return r.lanes.Backfill.Pinned
	}
	return r.lanes.Live
}

// applied lists the updates Kustomer accepted for conversation n, in the order it got them.
func (h *handover) applied(n int) []string {
	var out []string
	for _, r := range h.fake.RequestsFor(id(n)) {
		if r.Status == 200 {
			out = append(out, string(r.Body))
		}
	}
	return out
}

func TestHandoverToARunningStandby(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lane  queue.Lane
		convs int // what the first replica can hold of the lane: its MaxAckPending 16, or the backfill lane's share (16 less a reserve of 4)
	}{
		{"on the live lane", queue.LaneLive, 16},
		{"on the backfill lane", queue.LaneBackfill, 12},
	} {
		t.Run(tc.name+" the new active applies no update before the older ones the old active held", func(t *testing.T) {
			const rounds, concurrency = 5, 4
			h := handoverSetup(t)
			gate := make(chan struct{})
			a, b := h.activeAndStandby(tc.lane, concurrency, gate)

			// The active replica takes every conversation's first update, sends as many as it
			// may at once (they wait at the gate: requests in flight) and holds the others.
			h.publishRound(tc.lane, tc.convs, 0)
			testwait.Until(t, "the first replica to hold every first update", 20*time.Second, func() bool {
				info := h.info(tc.lane)
				return a.pin(tc.lane).Active() && info.NumAckPending == tc.convs && info.NumPending == 0 && len(a.held()) == concurrency
			})
			inFlight := a.held()

			// The pin moves to the running standby while the active one still holds them, as
			// when a cluster's consumer leader changes; the newer updates go to the new active.
			h.unpin(tc.lane)
			for r := 1; r < rounds; r++ {
				h.publishRound(tc.lane, tc.convs, r)
			}
			testwait.Until(t, "the second replica to be pinned and the first to know it lost the pin", 20*time.Second, func() bool {
				return b.pin(tc.lane).Active() && !a.pin(tc.lane).Active()
			})

			// Whatever the pool does, the new active gets to work: either it applies the newer
			// updates at once (no hold-back), or the messages the old active handed back and
			// everything behind them (hold-back and hand back).
			want := (tc.convs - concurrency) * rounds
			testwait.Until(t, fmt.Sprintf("%d updates applied", want), 60*time.Second, func() bool { return h.appliedBut(tc.convs, inFlight) >= want })
			for _, conv := range inFlight {
				if n := len(h.fake.RequestsFor(conv)); n != 0 {
					t.Errorf("conversation %s: %d newer updates applied while the old active still had its first one in flight", conv, n)
				}
			}
			for i := range tc.convs {
				if got := h.applied(i); !slices.Contains(inFlight, id(i)) && (len(got) == 0 || !strings.Contains(got[0], `"u-0"`)) {
					t.Errorf("conversation %d: first update applied %v; want u-0, handed back by the old active", i, got)
				}
			}
			if err := a.pool.Ready(); err != nil {
				t.Errorf("the replica that lost its pin is not ready: %v", err)
			}
			close(gate)

			testwait.Until(t, "work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0 })
			stale := notEndedAt(h.fake, tc.convs, fmt.Sprintf("u-%d", rounds-1))
			if stale != 0 {
				t.Errorf("%d of %d conversations ended at an older update than their last", stale, tc.convs)
			}
			var disorder []string
			for i := range tc.convs {
				if got := h.applied(i); !slices.IsSorted(got) {
					disorder = append(disorder, fmt.Sprint(i, got))
				}
			}
			if len(disorder) != 0 {
				t.Errorf("%d conversations had their updates applied out of order, first %s", len(disorder), disorder[0])
			}
			if err := a.pool.Ready(); err != nil {
				t.Errorf("the replica that lost its pin is not ready: %v", err)
			}
			if logs := a.logs.String(); strings.Contains(logs, "cannot take messages") || strings.Contains(logs, "level=ERROR") {
				t.Errorf("the replica that lost its pin logged a failure:\n%s", logs)
			}
			t.Logf("handover with %d messages held (%d in flight): %d of %d conversations stale", tc.convs, concurrency, stale, tc.convs)
		})
	}
}

// When the new active's live update finds an older backfill update of its conversation still
// pending, which the old active is applying at that moment, the order check must not apply
// that backfill update ahead of the live one: the old active's request would land after both.
func TestHandoverWithTheOrderCheckAcrossLanes(t *testing.T) {
	const convs, concurrency = 12, 4
	h := handoverSetup(t)
	gate := make(chan struct{})
	a, b := h.activeAndStandby(queue.LaneBackfill, concurrency, gate)

	// The backfill goes to the active replica, which sends four updates (they wait at the
	// gate) and holds the others.
	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "the first replica to hold the backfill", 20*time.Second, func() bool {
		info := h.info(queue.LaneBackfill)
		return info.NumAckPending == convs && info.NumPending == 0 && len(a.held()) == concurrency
	})
	inFlight := a.held()

	// A live update pins the second replica on the live lane, which makes it the active one
	// (it takes the backfill lane too, and the first one lets go of it).
	h.pinLive(b, a)
	testwait.Until(t, "the first replica to let go of the backfill lane", 20*time.Second, func() bool {
		return !a.pin(queue.LaneBackfill).Active()
	})

	// Newer live updates of every conversation: each finds its older backfill update pending.
	h.publishRound(queue.LaneLive, convs, 1)
	want := (convs - concurrency) * 2
	testwait.Until(t, fmt.Sprintf("%d updates applied", want), 60*time.Second, func() bool { return h.appliedBut(convs, inFlight) >= want })
	for _, conv := range inFlight {
		if n := len(h.fake.RequestsFor(conv)); n != 0 {
			t.Errorf("conversation %s: %d updates applied while the old active still had its backfill update in flight", conv, n)
		}
	}
	close(gate)
	testwait.Until(t, "work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0 })
	stale := notEndedAt(h.fake, convs, "u-1")
	if stale != 0 {
		t.Errorf("%d of %d conversations ended at their backfill update, older than their live one", stale, convs)
	}
	t.Logf("handover with the order check across lanes, %d backfill updates held (%d in flight): %d of %d conversations stale", convs, concurrency, stale, convs)
}

// pinLive leaves the live pin with the replica it was asked for, however late the other
// learns it lost the pin: moved back and forth, the pin must stay where it was put once both
// replicas know where it is (a move decided on what the replicas believe left it, now and
// then, with the other one; issue 20).
func TestHandoverHarnessMovesTheLivePin(t *testing.T) {
	h := handoverSetup(t)
	a := h.start("a", worker.Config{Concurrency: 2, MaxAckPending: 16}, nil)
	b := h.start("b", worker.Config{Concurrency: 2, MaxAckPending: 16}, nil)
	for move := range 8 {
		to, other, name := b, a, "b"
		if move%2 == 1 {
			to, other, name = a, b, "a"
		}
		h.pinLive(to, other)
		if !testwait.Within(5*time.Second, func() bool { return !other.pin(queue.LaneLive).Active() }) {
			t.Fatalf("move %d to %s: the other replica still holds the live pin (the server's %q; to %+v, other %+v)", move, name, h.livePin(), to.pin(queue.LaneLive).Role(), other.pin(queue.LaneLive).Role())
		}
		if pin, want := h.livePin(), to.pin(queue.LaneLive).Role().PinID; pin == "" || pin != want {
			t.Fatalf("move %d to %s: the server's live pin is %q; want %s's %q", move, name, pin, name, want)
		}
	}
}
