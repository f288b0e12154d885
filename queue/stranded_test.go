package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// A message Nak'd on its last delivery is never delivered again, yet the work-queue stream
// keeps it: Stranded finds it, below the lane's acknowledgement floor, and its Ack deletes it.
func TestStranded(t *testing.T) {
	t.Parallel()
	_, js := queuetest.Connect(t, queuetest.StartServer(t).URL())
	top := queue.Topology{MaxDeliver: 1, AckWait: time.Second}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	lanes, _, err := queue.BindLanes(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	o := &queue.Outstanding{JS: js, Topology: top}
	for _, l := range queue.Lanes() {
		if _, err := js.Publish(ctx, top.LaneSubject(l), []byte(`{"id":"a"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, top.ConversationSubject(l, "b"), []byte(`{"id":"b"}`)); err != nil {
			t.Fatal(err)
		}
	}
	// Live: the first Nak'd on its last delivery, the second acknowledged. Backfill: the
	// first left to its AckWait, the second acknowledged.
	for i, cons := range []jetstream.Consumer{lanes.Live, lanes.Backfill.Pinned} {
		b, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var msgs []jetstream.Msg
		for m := range b.Messages() {
			msgs = append(msgs, m)
		}
		if len(msgs) != 2 {
			t.Fatalf("lane %d: fetched %d messages; want 2", i, len(msgs))
		}
		if i == 0 {
			if err := msgs[0].Nak(); err != nil {
				t.Fatal(err)
			}
		}
		if err := msgs[1].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var got []queue.Stranded
	testwait.Until(t, "both first messages stranded", 30*time.Second, func() bool {
		// The server moves a consumer's floor past a message that reached MaxDeliver when
		// it would deliver it again: when a pull waits.
		for _, c := range []jetstream.Consumer{lanes.Live, lanes.Backfill.Pinned} {
			if b, err := c.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond)); err == nil {
				for m := range b.Messages() {
					t.Errorf("delivered again: %s", m.Data())
				}
			}
		}
		got, err = o.Stranded(ctx, 0)
		return err == nil && len(got) == 2
	})
	st, err := queue.ReadStatus(ctx, js, top, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Live.Stranded != 1 || st.Backfill.Stranded != 1 {
		t.Errorf("status: stranded live %d, backfill %d; want 1 each", st.Live.Stranded, st.Backfill.Stranded)
	}
	for i, s := range got {
		md, _ := s.Msg.Metadata()
		if s.Lane != queue.Lanes()[i] || md.Sequence.Stream != uint64(2*i+1) || string(s.Msg.Data()) != `{"id":"a"}` {
			t.Errorf("stranded %d: lane %s seq %d data %s", i, s.Lane, md.Sequence.Stream, s.Msg.Data())
		}
		if err := s.Msg.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := o.Stranded(ctx, 0); err != nil || len(got) != 0 {
		t.Errorf("after deleting them: %d stranded, %v; want none", len(got), err)
	}
	if n := queuetest.StreamMsgs(t, js, top.Stream); n != 0 {
		t.Errorf("work stream keeps %d messages; want 0", n)
	}
}
