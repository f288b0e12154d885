package worker_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// A replica that loses its pin while a merged PUT is in flight hands back none of the updates
// merged into it: they count as sent, as its first one does. Handed back, the new active would
// apply them again after the merged PUT (an older state over the newer one, if any came between).
func TestCoalesceHandoverKeepsTheMembersOfAMergedPUT(t *testing.T) {
	h := handoverSetup(t)
	blocked2, release2 := make(chan struct{}, 1), make(chan struct{})
	inFlight1, release1 := make(chan struct{}, 1), make(chan struct{})
	metrics := worker.NewMetrics(prometheus.NewRegistry())
	h.wire = func(p *worker.Pool, _ jetstream.JetStream) {
		p.Metrics = metrics
		inner := p.Client
		var once1, once2 sync.Once
		// Conversation 2's first request holds the only worker while conversation 1's updates
		// queue; conversation 1's first (merged) request waits while the pin moves.
		p.Client = updaterFunc(func(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
			wait := func(signal, release chan struct{}) {
				signal <- struct{}{}
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			switch u.ID {
			case id(2):
				once2.Do(func() { wait(blocked2, release2) })
			case id(1):
				once1.Do(func() { wait(inFlight1, release1) })
			}
			return inner.UpdateConversation(ctx, u)
		})
	}
	live := worker.CoalesceLanes{Live: true}
	a := h.start("a", worker.Config{Concurrency: 1, MaxAckPending: 16, Coalesce: live}, nil)
	h.publish(queue.LaneLive, warmup, 0)
	testwait.Until(t, "the first replica to be active", 20*time.Second, func() bool {
		return a.pin(queue.LaneLive).Active() && queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0
	})
	h.wire = nil
	b := h.start("b", worker.Config{Concurrency: 1, MaxAckPending: 128, Coalesce: live}, nil)

	h.publish(queue.LaneLive, 2, 0)
	testwait.Recv(t, "conversation 2's request to hold the worker", 20*time.Second, blocked2)
	for round := 1; round <= 3; round++ {
		h.publish(queue.LaneLive, 1, round)
	}
	testwait.Until(t, "the first replica to hold conversation 1's three updates", 20*time.Second, func() bool {
		return testutil.ToFloat64(metrics.Held) == 4
	})
	close(release2)
	testwait.Recv(t, "conversation 1's merged PUT to be in flight", 20*time.Second, inFlight1)

	h.unpin(queue.LaneLive)
	h.publish(queue.LaneLive, 3, 0)
	testwait.Until(t, "the second replica to be active and apply a new update", 20*time.Second, func() bool {
		return b.pin(queue.LaneLive).Active() && !a.pin(queue.LaneLive).Active() && len(h.applied(3)) == 1
	})
	close(release1)
	testwait.Until(t, "work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0 })

	got := h.applied(1)
	if len(got) != 1 || !strings.Contains(got[0], `"u-3"`) {
		t.Errorf("conversation 1 got %v; want one merged PUT ending at u-3, no member sent again", got)
	}
}
