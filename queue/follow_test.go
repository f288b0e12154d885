package queue_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// laneReplica is one worker process with both lanes, as the command wires them: it pulls the
// live lane through the Pinned and the backfill lane through the Follower, keeps both pins
// with Run, and acknowledges every message, counting the backfill ones it got.
type laneReplica struct {
	name  string
	lanes queue.Consumers

	mu       sync.Mutex
	backfill int // backfill messages received. Guarded by mu.
	live     int // live messages received. Guarded by mu.
}

func (r *laneReplica) counts() (live, backfill int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live, r.backfill
}

func startLaneReplica(t *testing.T, name, url string, top queue.Topology) *laneReplica {
	t.Helper()
	_, js := queuetest.Connect(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	lanes, _, err := queue.BindLanes(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	lanes.Backfill.MaxWait = 300 * time.Millisecond
	r := &laneReplica{name: name, lanes: lanes}
	var wg sync.WaitGroup
	pull := func(c interface {
		Fetch(int, ...jetstream.FetchOpt) (jetstream.MessageBatch, error)
	}, count *int) {
		for ctx.Err() == nil {
			fctx, fcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			b, err := c.Fetch(10, jetstream.FetchContext(fctx))
			if err == nil {
				for m := range b.Messages() {
					r.mu.Lock()
					*count++
					r.mu.Unlock()
					_ = m.DoubleAck(ctx)
				}
			}
			fcancel()
		}
	}
	wg.Go(func() { pull(lanes.Live, &r.live) })
	wg.Go(func() { pull(lanes.Backfill, &r.backfill) })
	wg.Go(func() { _ = lanes.Live.Run(ctx) })
	wg.Go(func() { _ = lanes.Backfill.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return r
}

func publishTo(t *testing.T, js jetstream.JetStream, subject, prefix string, n int) {
	t.Helper()
	for i := range n {
		if _, err := js.Publish(context.Background(), subject, fmt.Appendf(nil, `{"id":"%s-%d","body":{}}`, prefix, i)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFollower(t *testing.T) {
	t.Parallel()

	t.Run("one replica takes both lanes, and the backfill follows the live lane's pin", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startLaneReplica(t, "a", url, top)
		b := startLaneReplica(t, "b", url, top)

		// No live traffic: nobody holds the live pin, so the backfill lane's pin decides.
		publishTo(t, js, top.BackfillSubject, "early", 20)
		testwait.Until(t, "the early backfill to be taken", 10*time.Second, func() bool {
			_, ab := a.counts()
			_, bb := b.counts()
			return ab+bb == 20
		})
		_, ab := a.counts()
		_, bb := b.counts()
		if ab != 0 && bb != 0 {
			t.Fatalf("both replicas pulled the backfill while the live lane was idle: a %d, b %d", ab, bb)
		}

		// A live message pins one of them on the live lane: from then on that one takes the
		// backfill too, whichever held the backfill pin before.
		publishTo(t, js, top.Subject, "live", 1)
		var active, standby *laneReplica
		testwait.Until(t, "a replica to take the live message", 10*time.Second, func() bool {
			al, _ := a.counts()
			bl, _ := b.counts()
			switch {
			case al == 1:
				active, standby = a, b
			case bl == 1:
				active, standby = b, a
			}
			return active != nil
		})
		testwait.Until(t, active.name+" to be active on the live lane", 5*time.Second, active.lanes.Live.Active)
		testwait.Until(t, "the standby's backfill pin to pass", 2*pinTTL+5*time.Second, func() bool {
			return standby.lanes.Backfill.Role().PinID == ""
		})
		_, before := standby.counts()
		publishTo(t, js, top.BackfillSubject, "late", 20)
		testwait.Until(t, "the active replica to take the late backfill", 2*pinTTL+10*time.Second, func() bool {
			_, got := active.counts()
			_, sb := standby.counts()
			return got+sb == 40
		})
		if _, after := standby.counts(); after != before {
			t.Errorf("the standby %s pulled %d backfill messages while %s held the live pin", standby.name, after-before, active.name)
		}
		if standby.lanes.Live.Active() {
			t.Errorf("both replicas active on the live lane")
		}
	})
}
