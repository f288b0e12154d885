package queue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// BindLanes reads the stream, both consumers and the bucket at once; what it says when one of
// them is missing must still name the one that is, and what it binds must still work.
func TestBindLanes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("a missing stream is named, not its consumers", func(t *testing.T) {
		_, js := queuetest.Connect(t, queuetest.StartServer(t).URL())
		top := queue.Topology{}.WithDefaults()
		_, _, err := queue.BindLanes(ctx, js, top)
		if !errors.Is(err, jetstream.ErrStreamNotFound) || !strings.Contains(err.Error(), "manage-streams on") {
			t.Fatalf("BindLanes = %v; want the stream not found, with the way out", err)
		}
	})

	t.Run("a missing backfill consumer is named with its lane", func(t *testing.T) {
		js, top := setup(t)
		if err := js.DeleteConsumer(ctx, top.Stream, top.LaneConsumer(queue.LaneBackfill)); err != nil {
			t.Fatal(err)
		}
		_, _, err := queue.BindLanes(ctx, js, top)
		if !errors.Is(err, jetstream.ErrConsumerNotFound) || !strings.Contains(err.Error(), top.LaneConsumer(queue.LaneBackfill)) ||
			!strings.Contains(err.Error(), "backfill lane") {
			t.Fatalf("BindLanes = %v; want the backfill lane's consumer not found", err)
		}
	})

	t.Run("the lanes, the bucket and the stream it read are usable", func(t *testing.T) {
		js, top := setup(t)
		lanes, attempts, err := queue.BindLanes(ctx, js, top)
		if err != nil {
			t.Fatal(err)
		}
		if lanes.Live == nil || lanes.Backfill == nil || attempts == nil {
			t.Fatalf("BindLanes = %+v, %v; want both lanes and the bucket", lanes, attempts)
		}
		if lanes.Stream == nil || lanes.Stream.CachedInfo().Config.Name != top.Stream {
			t.Fatalf("Consumers.Stream = %v; want the work stream %s", lanes.Stream, top.Stream)
		}
		if _, err := queue.NewOrderCheckOn(lanes.Stream, top); err != nil {
			t.Fatalf("NewOrderCheckOn: %v", err)
		}
		if _, err := js.Publish(ctx, top.Subject, []byte(`{"id":"0000000000000000000000a1"}`)); err != nil {
			t.Fatal(err)
		}
		batch, err := lanes.Live.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for range batch.Messages() {
			got++
		}
		if got != 1 {
			t.Fatalf("the live lane delivered %d messages; want 1", got)
		}
		// Delivered and unacknowledged: the recovery on the stream BindLanes read finds it.
		un, err := (&queue.Outstanding{JS: js, Topology: top, Stream: lanes.Stream}).Unacked(ctx, queue.Own{})
		if err != nil || len(un) != 1 {
			t.Fatalf("Unacked = %d messages, %v; want 1", len(un), err)
		}
	})
}
