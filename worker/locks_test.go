package worker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// stuckInfo is a consumer whose Info requests hang, as they do while NATS is slow or a stream
// elects a leader: until released, or (with untilCtx) until the request's own deadline.
type stuckInfo struct {
	jetstream.Consumer
	calls    atomic.Int32
	ended    atomic.Int32
	untilCtx bool
	release  chan struct{}
}

var errStuck = errors.New("consumer info: no answer")

func (s *stuckInfo) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	s.calls.Add(1)
	defer s.ended.Add(1)
	if s.untilCtx {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	select {
	case <-s.release:
		return nil, errStuck
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// The acknowledgement floor is read for many conversations at once: no lock is held across
// the read, every caller waiting meanwhile shares its answer, and a failed read is not
// repeated by each of them in turn.
func TestLaneFloorHoldsNoLockAcrossItsRead(t *testing.T) {
	f := setup(t, options{noStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, _, err := queue.Bind(ctx, f.js, f.top)
	if err != nil {
		t.Fatal(err)
	}
	stuck := &stuckInfo{Consumer: cons, release: make(chan struct{})}
	p := &worker.Pool{Consumer: stuck, Client: f.client, DeadLetters: &queue.DeadLetterPublisher{JS: f.js, Subject: f.top.DLQSubject}}
	if err := p.StartForFloor(); err != nil {
		t.Fatal(err)
	}
	const waiters = 8
	var wg sync.WaitGroup
	results := make(chan error, waiters)
	for range waiters {
		wg.Go(func() {
			_, err := p.LaneFloor(ctx, 10)
			results <- err
		})
	}
	testwait.Until(t, "a read of the floor under way", 10*time.Second, func() bool { return stuck.calls.Load() == 1 })

	// A floor that passes the sequence asked about needs no read: it is answered while the
	// read hangs.
	known := make(chan error, 1)
	go func() {
		_, err := p.LaneFloor(ctx, 0)
		known <- err
	}()
	if err := testwait.Recv(t, "a floor known already, while a read hangs", 10*time.Second, known); err != nil {
		t.Errorf("known floor: %v", err)
	}

	close(stuck.release)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil && !errors.Is(err, errStuck) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("LaneFloor: %v; want nil or the read's own error", err)
		}
	}
	if n := stuck.calls.Load(); n > 2 {
		t.Errorf("%d reads of the floor for %d callers that came while one hung; want them to share it (at most 2)", n, waiters)
	}
}

// The heartbeat marks held messages in progress on time even while reads of the consumer's
// state hang (they take up to 5 s each): a message held longer than AckWait is not delivered
// again meanwhile.
func TestHeartbeatDoesNotWaitForSlowReads(t *testing.T) {
	var stuck *stuckInfo
	held := make(chan struct{})
	gate := make(chan struct{})
	var once sync.Once
	f := setup(t, options{ackWait: 2 * time.Second, noStart: true})
	f.start(options{
		consumer: func(c jetstream.Consumer) jetstream.Consumer {
			stuck = &stuckInfo{Consumer: c, untilCtx: true}
			return stuck
		},
		wrap: func(u updaterFunc) updaterFunc {
			return func(ctx context.Context, up kustomer.Update) (*kustomer.Result, error) {
				once.Do(func() { close(held) })
				select { // held until a read of the consumer's state has hung to its end
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return u(ctx, up)
			}
		},
	})
	f.publishUpdate(1, `{"status":"open"}`)
	testwait.Closed(t, "the update sent", 10*time.Second, held)
	testwait.Until(t, "a read of the consumer's state hung to its end", 30*time.Second, func() bool { return stuck.ended.Load() >= 1 })
	close(gate)
	f.waitDrained(30 * time.Second)
	if n := f.fake.Stats().Applied; n != 1 {
		t.Errorf("applied %d updates; want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.js.Consumer(ctx, f.top.Stream, f.top.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.CachedInfo().Delivered.Consumer; d != 1 {
		t.Errorf("the message was delivered %d times; want 1 (marked in progress while held)", d)
	}
}
