package worker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// stale counts the conversations whose final state is not their last update "u-<last>".
func (f *fixture) stale(convs, last int) int {
	return notEndedAt(f.fake, convs, fmt.Sprintf("u-%d", last))
}

// notEndedAt counts the conversations 0..convs-1 that fake does not hold with name want.
func notEndedAt(fake *kustomertest.Server, convs int, want string) int {
	n := 0
	for i := range convs {
		if c, ok := fake.Conversation(id(i)); !ok || c.Attributes["name"] != want {
			n++
		}
	}
	return n
}

// publishRounds publishes rounds updates to each of convs conversations, round by round, so
// that a conversation's updates are spread over the stream.
func (f *fixture) publishRounds(convs, rounds int) {
	for r := range rounds {
		for i := range convs {
			f.publishUpdate(i, fmt.Sprintf(`{"name":"u-%d"}`, r))
		}
	}
}

func TestOrderAcrossBrokerRestarts(t *testing.T) {
	const convs, rounds = 400, 5
	f := setup(t, options{fake: kustomertest.Config{Latency: 15 * time.Millisecond}, cfg: worker.Config{Concurrency: 8}})
	f.publishRounds(convs, rounds)
	for _, share := range []int{20, 40, 60} {
		testwait.Until(f.t, fmt.Sprintf("%d%% applied", share), 60*time.Second, func() bool {
			return f.fake.Stats().Applied >= convs*rounds*share/100
		})
		f.srv.RestartAfter(t, 2*time.Second)
	}
	f.waitDrained(120 * time.Second)
	if n := f.stale(convs, rounds-1); n != 0 {
		t.Errorf("%d of %d conversations ended at an older update than their last", n, convs)
	}
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters; want none", n)
	}
}

// lossy is the work consumer of a broker that loses some acknowledgements after confirming
// them, as one that restarts right after confirming can: the message comes back after AckWait.
type lossy struct {
	jetstream.Consumer
	lose atomic.Int64 // acknowledgements still to lose
	lost atomic.Int64
}

type lossyBatch struct {
	jetstream.MessageBatch
	ch chan jetstream.Msg
}

func (b lossyBatch) Messages() <-chan jetstream.Msg { return b.ch }

type lossyMsg struct {
	jetstream.Msg
	c *lossy
}

func (m lossyMsg) loses() bool {
	if m.c.lose.Add(-1) >= 0 {
		m.c.lost.Add(1)
		return true
	}
	return false
}

func (m lossyMsg) Ack() error {
	if m.loses() {
		return nil
	}
	return m.Msg.Ack()
}

func (m lossyMsg) DoubleAck(ctx context.Context) error {
	if m.loses() {
		return nil
	}
	return m.Msg.DoubleAck(ctx)
}

func (c *lossy) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	b, err := c.Consumer.Fetch(n, opts...)
	if err != nil {
		return nil, err
	}
	ch := make(chan jetstream.Msg)
	go func() {
		defer close(ch)
		for m := range b.Messages() {
			ch <- lossyMsg{m, c}
		}
	}()
	return lossyBatch{b, ch}, nil
}

// ackModes are the pool's two ways of acknowledging: without Outstanding every acknowledgement
// is confirmed before the conversation goes on (stream false); with it, the last held one of
// a conversation is not waited for, and the next update checks the stream instead.
var ackModes = []struct {
	name   string
	stream bool
}{{"every acknowledgement confirmed", false}, {"the last of a conversation checked in the stream", true}}

func TestOrderWhenAcknowledgementsAreLost(t *testing.T) {
	// Without Outstanding every acknowledgement is confirmed before the conversation goes on;
	// with it, one whose conversation has nothing newer held is not waited for, and the next
	// update waits for its message to leave the stream instead.
	for _, m := range ackModes {
		t.Run(m.name, func(t *testing.T) { testOrderWhenAcknowledgementsAreLost(t, m.stream) })
	}
}

func testOrderWhenAcknowledgementsAreLost(t *testing.T, stream bool) {
	const convs, rounds = 200, 5
	f := setup(t, options{fake: kustomertest.Config{Latency: 5 * time.Millisecond}, cfg: worker.Config{Concurrency: 8}, ackWait: 2 * time.Second, noStart: true})
	f.publishRounds(convs, rounds)
	var c *lossy
	f.start(options{cfg: worker.Config{Concurrency: 8}, recover: stream, consumer: func(cons jetstream.Consumer) jetstream.Consumer {
		c = &lossy{Consumer: cons}
		return c
	}})
	testwait.Until(f.t, "a fifth applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= convs*rounds/5 })
	c.lose.Store(40)
	f.waitDrained(120 * time.Second)
	if c.lost.Load() == 0 {
		t.Fatal("no acknowledgement was lost; the test proves nothing")
	}
	if n := f.stale(convs, rounds-1); n != 0 {
		t.Errorf("%d of %d conversations ended at an older update than their last (%d acknowledgements lost)", n, convs, c.lost.Load())
	}
}

// crashingPool runs a pool on a connection of its own and kills it as a crash would: the
// connection closes first, so nothing the pool held is acknowledged or handed back, and
// acknowledgements not yet sent are lost. With stream, the pool reads the work stream
// (Outstanding) and so does not wait for the confirmation of a conversation's last message.
// wrap, if not nil, wraps the pool's consumer.
func (f *fixture) crashingPool(cfg worker.Config, stream bool, wrap func(jetstream.Consumer) jetstream.Consumer) (crash func()) {
	f.t.Helper()
	nc, js := queuetest.Connect(f.t, f.srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, attempts, err := queue.Bind(ctx, js, f.top)
	if err != nil {
		f.t.Fatal(err)
	}
	cfg.MaxAckPending = f.top.MaxAckPending
	if wrap != nil {
		cons = wrap(cons)
	}
	pool := &worker.Pool{Consumer: cons, Client: f.client, Attempts: attempts, Pacer: pacer.New(-1), Config: cfg,
		DeadLetters: &queue.DeadLetterPublisher{JS: js, Subject: f.top.DLQSubject}}
	if stream {
		pool.Outstanding = &queue.Outstanding{JS: js, Topology: f.top}
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(rctx) }()
	return func() {
		nc.Close()
		stop()
		testwait.Recv(f.t, "the crashed pool to stop", 60*time.Second, done)
	}
}

func TestOrderAcrossAWorkerCrash(t *testing.T) {
	for _, m := range ackModes {
		t.Run(m.name, func(t *testing.T) { testOrderAcrossAWorkerCrash(t, m.stream) })
	}
}

func testOrderAcrossAWorkerCrash(t *testing.T, stream bool) {
	const convs, rounds = 300, 5
	f := setup(t, options{fake: kustomertest.Config{Latency: 10 * time.Millisecond}, ackWait: 3 * time.Second, noStart: true})
	f.publishRounds(convs, rounds)
	crash := f.crashingPool(worker.Config{Concurrency: 8}, stream, nil)
	testwait.Until(t, "a third applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= convs*rounds/3 })
	crash()
	f.start(options{cfg: worker.Config{Concurrency: 8}, recover: true})
	f.waitDrained(120 * time.Second)
	if n := f.stale(convs, rounds-1); n != 0 {
		t.Errorf("%d of %d conversations ended at an older update than their last after a crash", n, convs)
	}
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters; want none", n)
	}
}

// Acknowledgements lost by a worker that crashes soon after: had a conversation's next update
// been sent before its previous acknowledgement took effect, the restarted worker would apply
// the older update again, after the newer one.
func TestOrderWhenAcknowledgementsAreLostBeforeACrash(t *testing.T) {
	const convs, rounds = 200, 5
	f := setup(t, options{fake: kustomertest.Config{Latency: 5 * time.Millisecond}, ackWait: 2 * time.Second, noStart: true})
	f.publishRounds(convs, rounds)
	var c *lossy
	crash := f.crashingPool(worker.Config{Concurrency: 8}, true, func(cons jetstream.Consumer) jetstream.Consumer {
		c = &lossy{Consumer: cons}
		return c
	})
	// Lose acknowledgements of the fourth round, so that the last round would overtake them,
	// and crash before AckWait brings them back.
	testwait.Until(t, "three rounds applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= 3*convs })
	c.lose.Store(40)
	testwait.Until(t, "40 acknowledgements lost", 60*time.Second, func() bool { return c.lost.Load() >= 40 })
	applied := f.fake.Stats().Applied
	testwait.Until(t, "150 more applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= applied+150 })
	crash()
	f.start(options{cfg: worker.Config{Concurrency: 8}, recover: true})
	f.waitDrained(120 * time.Second)
	if n := f.stale(convs, rounds-1); n != 0 {
		t.Errorf("%d of %d conversations ended at an older update than their last (40 acknowledgements lost, then a crash)", n, convs)
	}
}
