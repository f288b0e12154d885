package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

func TestOutstandingReadsAtMostLimitPerLane(t *testing.T) {
	t.Parallel()
	_, js := queuetest.Connect(t, queuetest.StartServer(t).URL())
	top := queue.Topology{AckWait: time.Minute}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	// Four on each of the live lane's two subjects, delivered and never acknowledged, as a
	// process that died leaves them.
	for i := range 4 {
		for _, subject := range []string{top.Subject, top.ConversationSubject(queue.LaneLive, "0000000000000000000000a"+string(rune('0'+i)))} {
			if _, err := js.Publish(ctx, subject, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	lanes, _, err := queue.BindLanes(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for got < 8 {
		batch, err := lanes.Live.Fetch(8-got, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for range batch.Messages() {
			got++
		}
	}
	for _, c := range []struct{ limit, want int }{{0, 8}, {5, 5}, {3, 3}} {
		o := &queue.Outstanding{JS: js, Topology: top, Limit: c.limit}
		un, err := o.Unacked(ctx, queue.Own{})
		if err != nil {
			t.Fatal(err)
		}
		if len(un) != c.want {
			t.Errorf("Limit %d: Unacked read %d messages; want %d (the limit is per lane, over both of its subjects)", c.limit, len(un), c.want)
		}
	}
}
