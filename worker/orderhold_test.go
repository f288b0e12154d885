package worker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// unanswered is the real order check behind a NATS that does not answer it until open is
// closed: each check then fails as one that ran out of time does.
type unanswered struct {
	worker.OlderFinder
	open     chan struct{}
	failures atomic.Int64
}

func (u *unanswered) OlderPending(ctx context.Context, lane queue.Lane, id string, before uint64) ([]*queue.DirectMsg, error) {
	select {
	case <-u.open:
		return u.OlderFinder.OlderPending(ctx, lane, id, before)
	default:
		u.failures.Add(1)
		return nil, errors.New("order check: nats: timeout")
	}
}

func TestAFailedOrderCheckHoldsTheUpdate(t *testing.T) {
	t.Parallel()
	// Each conversation has an older backfill update still pending (its lane delivers nothing
	// yet) and a live one. While the check for older updates fails, the live update must wait:
	// applied now, it would be overwritten by the older backfill update later.
	const convs = 5
	f := setup(t, options{noStart: true})
	for i := range convs {
		f.publishLane(queue.LaneBackfill, i, `{"name":"backfill"}`)
	}
	for i := range convs {
		f.publishLane(queue.LaneLive, i, `{"name":"live"}`)
	}
	open := make(chan struct{})
	check := &unanswered{open: open}
	f.start(options{cfg: worker.Config{Concurrency: 4}, lanes: true, before: func(p *worker.Pool) {
		check.OlderFinder = p.Order
		p.Order = check
		p.Backfill = heldBack{Consumer: p.Backfill, open: open}
	}})
	testwait.Until(t, "the order check to fail several times", 30*time.Second, func() bool { return check.failures.Load() >= 4 })
	sent := f.fake.Stats().Requests
	close(open) // NATS answers again, and the backfill lane delivers
	f.waitDrained(60 * time.Second)
	if sent != 0 {
		t.Errorf("%d requests were sent while the order check failed; want none: the updates held", sent)
	}
	if n := f.notEndedAt(convs, "live"); n != 0 {
		t.Errorf("%d of %d conversations ended at their older backfill update; want the live one last", n, convs)
	}
	if got, want := f.fake.Stats().Applied, 2*convs; got != want {
		t.Errorf("the fake applied %d updates; want %d, each once", got, want)
	}
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters; want none", n)
	}
}
