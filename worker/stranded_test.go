package worker_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// refuseDeadLetters makes the dead-letter stream refuse every publish (full, discarding new
// messages) until the returned function is called.
func (f *fixture) refuseDeadLetters() (accept func()) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := f.js.Stream(ctx, f.top.DLQStream)
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	full := cfg
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	if _, err := f.js.UpdateStream(ctx, full); err != nil {
		f.t.Fatal(err)
	}
	filler, err := f.js.Publish(ctx, f.top.DLQSubject, []byte("filler"))
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.js.Publish(ctx, f.top.DLQSubject, []byte("refused?")); err == nil {
		f.t.Fatal("the full dead-letter stream took a publish")
	}
	return func() {
		f.t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.DeleteMsg(ctx, filler.Sequence); err != nil {
			f.t.Fatal(err)
		}
		if _, err := f.js.UpdateStream(ctx, cfg); err != nil {
			f.t.Fatal(err)
		}
	}
}

// strandedInvalid publishes a message that fails validation on each lane, so that the pool
// dead-letters it on its first (with MaxDeliver 1: its last) delivery, and returns their
// bodies by sequence.
func (f *fixture) strandedInvalid() map[uint64]string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := make(map[uint64]string)
	for _, l := range queue.Lanes() {
		body := `{"id":"not-an-id","lane":"` + string(l) + `"}`
		ack, err := f.js.Publish(ctx, f.top.LaneSubject(l), []byte(body))
		if err != nil {
			f.t.Fatal(err)
		}
		out[ack.Sequence] = body
	}
	return out
}

// waitStrandedDeadLettered waits for the dead letters of want (bodies by work-stream
// sequence), stored as stranded with their original bytes, and for the work stream to empty.
func (f *fixture) waitStrandedDeadLettered(want map[uint64]string) {
	f.t.Helper()
	testwait.Until(f.t, "the stranded messages dead-lettered", 90*time.Second, func() bool { return len(f.deadLetters()) >= len(want) })
	for _, dl := range f.deadLetters() {
		seq := dl.header.Get(queue.HeaderOriginalSequence)
		var found bool
		for s, body := range want {
			if seq == strconvU(s) {
				found = true
				if dl.data != body {
					f.t.Errorf("dead letter of %s: body %q; want the original %q", seq, dl.data, body)
				}
			}
		}
		if !found {
			f.t.Errorf("dead letter of sequence %s; want only %v", seq, want)
		}
		if c := dl.header.Get(queue.HeaderClass); c != string(queue.ClassStranded) {
			f.t.Errorf("dead letter of %s: class %q; want %q", seq, c, queue.ClassStranded)
		}
		if r := dl.header.Get(queue.HeaderReason); !strings.Contains(r, "max deliveries") {
			f.t.Errorf("dead letter of %s: reason %q; want it to say it reached max deliveries", seq, r)
		}
	}
	f.waitDrained(60 * time.Second)
}

// A message on its last delivery whose dead letter the stream refuses at shutdown is handed
// back; the consumer never delivers it again. The next start finds it in the work stream and
// dead-letters it as stranded.
func TestStrandedByARefusedDeadLetterAtShutdown(t *testing.T) {
	o := options{maxDeliver: 1, ackWait: 2 * time.Second, noStart: true, lanes: true, recover: true,
		cfg: worker.Config{StrandedEvery: 200 * time.Millisecond}}
	f := setup(t, o)
	accept := f.refuseDeadLetters()
	want := f.strandedInvalid()
	f.start(o)
	testwait.Until(t, "both messages held", 30*time.Second, func() bool { return f.ackPending() == len(want) })
	f.stop()
	accept()
	f.start(o)
	f.waitStrandedDeadLettered(want)
}

// A process killed while it holds a message on its last delivery: the consumer never delivers
// it again once AckWait runs out. The next process dead-letters it as stranded.
func TestStrandedByACrashOnALastDelivery(t *testing.T) {
	o := options{maxDeliver: 1, ackWait: 2 * time.Second, noStart: true, lanes: true, recover: true,
		cfg: worker.Config{StrandedEvery: 200 * time.Millisecond}}
	f := setup(t, o)
	accept := f.refuseDeadLetters()
	want := f.strandedInvalid()
	crash := f.crashingLanes(o.cfg)
	testwait.Until(t, "both messages held", 30*time.Second, func() bool { return f.ackPending() == len(want) })
	crash()
	accept()
	f.start(o)
	f.waitStrandedDeadLettered(want)
}

// ackPending is the number of messages both lanes' consumers delivered and wait an
// acknowledgement for.
func (f *fixture) ackPending() int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for _, l := range queue.Lanes() {
		c, err := f.js.Consumer(ctx, f.top.Stream, f.top.LaneConsumer(l))
		if err != nil {
			f.t.Fatal(err)
		}
		n += c.CachedInfo().NumAckPending
	}
	return n
}

// crashingLanes runs a pool on both lanes on a connection of its own; crash closes the
// connection first, so nothing the pool held is acknowledged, dead-lettered or handed back.
func (f *fixture) crashingLanes(cfg worker.Config) (crash func()) {
	f.t.Helper()
	nc, js := queuetest.Connect(f.t, f.srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lanes, attempts, err := queue.BindLanes(ctx, js, f.top)
	if err != nil {
		f.t.Fatal(err)
	}
	order, err := queue.NewOrderCheck(ctx, js, f.top)
	if err != nil {
		f.t.Fatal(err)
	}
	cfg.MaxAckPending = f.top.MaxAckPending
	cfg.FetchWait = time.Second
	pool := &worker.Pool{Consumer: lanes.Live, Backfill: lanes.Backfill, Order: order, Client: f.client, Attempts: attempts,
		Pacer: pacer.New(-1), Config: cfg, Outstanding: &queue.Outstanding{JS: js, Topology: f.top},
		DeadLetters: &queue.DeadLetterPublisher{JS: js, Subject: f.top.DLQSubject}}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(rctx) }()
	return func() {
		nc.Close()
		stop()
		testwait.Recv(f.t, "the crashed pool to stop", 60*time.Second, done)
	}
}

func strconvU(n uint64) string { return strconv.FormatUint(n, 10) }
