package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// publishLane publishes an update of conversation conv to lane's <subject>.<id>.
func (f *fixture) publishLane(l queue.Lane, conv int, body string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := fmt.Sprintf(`{"id":%q,"body":%s}`, id(conv), body)
	if _, err := f.js.Publish(ctx, f.top.ConversationSubject(l, id(conv)), []byte(msg)); err != nil {
		f.t.Fatal(err)
	}
}

func TestLanes(t *testing.T) {
	t.Parallel()
	t.Run("a live update does not wait behind a backfill", func(t *testing.T) {
		t.Parallel()
		const backfill = 300
		f := setup(t, options{noStart: true})
		for i := range backfill {
			f.publishLane(queue.LaneBackfill, i, `{"name":"backfill"}`)
		}
		f.start(options{cfg: worker.Config{Concurrency: 4}, rate: 1200, lanes: true}) // 20 a second: 15 s of backfill
		testwait.Until(t, "the backfill to start", 30*time.Second, func() bool { return f.fake.Stats().Applied >= 10 })
		f.publishLane(queue.LaneLive, 10_000, `{"name":"live"}`)
		testwait.Until(t, "the live update to be applied", 30*time.Second, func() bool {
			c, ok := f.fake.Conversation(id(10_000))
			return ok && c.Attributes["name"] == "live"
		})
		if left := backfill - f.fake.Stats().Applied; left < backfill/2 {
			t.Errorf("the live update was applied with only %d of %d backfill updates left; want it to pass the backlog", left, backfill)
		}
		f.waitDrained(60 * time.Second)
	})
	t.Run("a live update never overtakes an older pending backfill update of its conversation", func(t *testing.T) {
		t.Parallel()
		f := setup(t, options{fake: kustomertest.Config{}, noStart: true})
		const convs = 50
		for i := range 200 {
			f.publishLane(queue.LaneBackfill, 1000+i, `{"name":"filler"}`)
		}
		for i := range convs {
			f.publishLane(queue.LaneBackfill, i, `{"name":"backfill"}`)
		}
		for i := range convs {
			f.publishLane(queue.LaneLive, i, `{"name":"live"}`)
		}
		f.start(options{cfg: worker.Config{Concurrency: 4}, rate: 3000, lanes: true})
		f.waitDrained(60 * time.Second)
		stale := 0
		for i := range convs {
			if c, _ := f.fake.Conversation(id(i)); c.Attributes["name"] != "live" {
				stale++
			}
		}
		if stale != 0 {
			t.Errorf("%d of %d conversations ended at their older backfill update; want the live one last", stale, convs)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})
}
