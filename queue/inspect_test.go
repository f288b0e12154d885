package queue_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// work publishes one message per id to the work subject + "." + id and returns the consumer.
func (b *broker) work(t *testing.T, ids ...string) jetstream.Consumer {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		m := nats.NewMsg(b.top.Subject + "." + id)
		m.Data = []byte(`{"id":"` + id + `","body":{}}`)
		m.Header.Set("Trace-Id", "trace-"+id)
		if _, err := b.js.PublishMsg(ctx, m, jetstream.WithMsgID("work-"+id)); err != nil {
			t.Fatal(err)
		}
	}
	cons, _, err := queue.Bind(ctx, b.js, b.top) // pulls in the priority group
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// fetch takes n messages from the consumer.
func fetch(t *testing.T, cons jetstream.Consumer, n int) []jetstream.Msg {
	t.Helper()
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for m := range batch.Messages() {
		out = append(out, m)
	}
	if len(out) != n {
		t.Fatalf("fetched %d messages, want %d (%v)", len(out), n, batch.Error())
	}
	return out
}

// deadLetter stores m as a dead letter of class and acks it, as the worker does.
func (b *broker) deadLetter(t *testing.T, m jetstream.Msg, class queue.DeadLetterClass, status int, failedAt time.Time) {
	t.Helper()
	dl := &queue.DeadLetterPublisher{JS: b.js, Subject: b.top.DLQSubject}
	err := dl.Publish(context.Background(), m, queue.Failure{
		Class: class, Status: status, Reason: fmt.Sprintf("%s %d", class, status), Attempts: 2, FailedAt: failedAt,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func readStatus(t *testing.T, b *broker, c *queue.ClassCounter) queue.Status {
	t.Helper()
	st, err := queue.ReadStatus(context.Background(), b.js, b.top, c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestReadStatus(t *testing.T) {
	t.Parallel()
	t.Run("counts match the streams and the consumer", func(t *testing.T) {
		b := startBroker(t)
		cons := b.work(t, "a", "b", "c", "d", "e", "f", "g", "h", "i", "j")
		msgs := fetch(t, cons, 5)
		// Two acked, one dead-lettered, two held; one of them handed back and delivered again.
		for _, m := range msgs[:2] {
			if err := m.DoubleAck(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		b.deadLetter(t, msgs[2], queue.ClassRejected, 400, time.Now())
		if err := msgs[3].Nak(); err != nil {
			t.Fatal(err)
		}
		// The server takes the Nak asynchronously: a fetch may hand out a new message before
		// the handed-back one. Fetch until it comes, and count the new ones in the want.
		extra := 0
		for {
			again := fetch(t, cons, 1)
			if md, _ := again[0].Metadata(); md.NumDelivered == 2 {
				break
			}
			if extra++; extra == 5 {
				t.Fatal("the handed-back message never came again")
			}
		}

		st := readStatus(t, b, nil)
		want := queue.Status{
			Backlog: 7, Processed: 3, LastSeq: 10, ConsumerFound: true,
			Undelivered: uint64(5 - extra), AckPending: 2 + extra, Redelivered: 1,
			DeadLetters: 1, ByClass: map[queue.DeadLetterClass]int{queue.ClassRejected: 1},
			Pinned: true, PinID: cons.(*queue.Pinned).Role().PinID,
		}
		if st.PinID == "" || st.PinnedAt.IsZero() {
			t.Errorf("the server pinned the replica that fetched, yet status has pin %q since %s", st.PinID, st.PinnedAt)
		}
		if st.Live.Backlog != 7 || st.Live.Undelivered != st.Undelivered || st.Live.AckPending != st.AckPending ||
			st.Live.Delivered != uint64(6+extra) || st.Live.Oldest.IsZero() || st.Backfill.Backlog != 0 || !st.Backfill.Oldest.IsZero() {
			t.Errorf("lanes: live %+v, backfill %+v", st.Live, st.Backfill)
		}
		if st.Live.PinID != st.PinID || !st.Live.Pinned || !st.Backfill.Pinned {
			t.Errorf("lanes' pins: live %+v, backfill %+v", st.Live, st.Backfill)
		}
		st.Time, st.PinnedAt, st.Live, st.Backfill = time.Time{}, time.Time{}, queue.LaneStatus{}, queue.LaneStatus{}
		if fmt.Sprint(st) != fmt.Sprint(want) {
			t.Fatalf("status =\n %+v\nwant\n %+v", st, want)
		}
	})

	t.Run("before any worker ran, every message is undelivered", func(t *testing.T) {
		b := startBroker(t)
		b.work(t, "a", "b")
		if err := b.js.DeleteConsumer(context.Background(), b.top.Stream, b.top.Consumer); err != nil {
			t.Fatal(err)
		}
		st := readStatus(t, b, nil)
		if st.ConsumerFound || st.Backlog != 2 || st.Undelivered != 2 || st.Live.ConsumerFound || !st.Backfill.ConsumerFound {
			t.Fatalf("status = %+v, want no consumer and 2 undelivered", st)
		}
	})

	t.Run("each lane has its own backlog and oldest message", func(t *testing.T) {
		b := startBroker(t)
		ctx := context.Background()
		first := time.Now()
		pub(t, b.js, b.top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		pub(t, b.js, b.top.BackfillSubject, "b2")
		pub(t, b.js, b.top.ConversationSubject(queue.LaneLive, "a"), "l1")
		cs, _, _ := queue.BindLanes(ctx, b.js, b.top)
		_, held := subjects(t, cs.Backfill, 1)
		st := readStatus(t, b, nil)
		bf, lv := st.Lane(queue.LaneBackfill), st.Lane(queue.LaneLive)
		if bf.Backlog != 2 || bf.Undelivered != 1 || bf.AckPending != 1 || bf.Settled() != 0 || lv.Backlog != 1 || lv.Undelivered != 1 {
			t.Errorf("backfill %+v, live %+v", bf, lv)
		}
		if bf.Oldest.Before(first.Add(-time.Second)) || lv.Oldest.Before(bf.Oldest) {
			t.Errorf("oldest: backfill %s, live %s", bf.Oldest, lv.Oldest)
		}
		if err := held[0].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		if st := readStatus(t, b, nil); st.Backfill.Backlog != 1 || st.Backfill.Settled() != 1 || st.Backlog != 2 {
			t.Errorf("after one backfill message was applied: %+v", st)
		}
	})

	t.Run("without the streams it says how to create them", func(t *testing.T) {
		b := startBroker(t)
		if err := b.js.DeleteStream(context.Background(), b.top.Stream); err != nil {
			t.Fatal(err)
		}
		_, err := queue.ReadStatus(context.Background(), b.js, b.top, nil)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("err = %v, want stream not found", err)
		}
	})
}

func TestClassCounter(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	cons := b.work(t, "a", "b", "c", "d", "e")
	msgs := fetch(t, cons, 5)
	b.deadLetter(t, msgs[0], queue.ClassInvalid, 0, time.Now())
	b.deadLetter(t, msgs[1], queue.ClassRejected, 404, time.Now())
	var c queue.ClassCounter
	check := func(want map[queue.DeadLetterClass]int) {
		t.Helper()
		got, total, err := c.Count(context.Background(), b.js, b.top)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, v := range want {
			n += v
		}
		if !maps.Equal(got, want) || total != uint64(n) {
			t.Fatalf("counts = %v (total %d), want %v", got, total, want)
		}
	}
	check(map[queue.DeadLetterClass]int{queue.ClassInvalid: 1, queue.ClassRejected: 1})

	t.Run("new dead letters are added", func(t *testing.T) {
		b.deadLetter(t, msgs[2], queue.ClassRejected, 400, time.Now())
		b.deadLetter(t, msgs[3], queue.ClassExhausted, 503, time.Now())
		check(map[queue.DeadLetterClass]int{queue.ClassInvalid: 1, queue.ClassRejected: 2, queue.ClassExhausted: 1})
	})
	t.Run("removed dead letters are taken out, even alongside new ones", func(t *testing.T) {
		d := &queue.DeadLetterStore{JS: b.js, Topology: b.top}
		if err := d.Delete(context.Background(), 1); err != nil { // the invalid one
			t.Fatal(err)
		}
		b.deadLetter(t, msgs[4], queue.ClassExhausted, 0, time.Now())
		check(map[queue.DeadLetterClass]int{queue.ClassRejected: 2, queue.ClassExhausted: 2})
	})
}

func TestDLQ(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := startBroker(t)
	cons := b.work(t, "a", "b", "c", "d")
	msgs := fetch(t, cons, 4)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	b.deadLetter(t, msgs[0], queue.ClassInvalid, 0, t0)
	b.deadLetter(t, msgs[1], queue.ClassRejected, 400, t0.Add(10*time.Minute))
	b.deadLetter(t, msgs[2], queue.ClassRejected, 404, t0.Add(20*time.Minute))
	b.deadLetter(t, msgs[3], queue.ClassExhausted, 503, t0.Add(30*time.Minute))
	d := &queue.DeadLetterStore{JS: b.js, Topology: b.top}

	list := func(f queue.DeadLetterFilter, headersOnly bool) []*queue.DeadLetter {
		t.Helper()
		var out []*queue.DeadLetter
		if err := d.Each(ctx, f, headersOnly, func(l *queue.DeadLetter) error {
			out = append(out, l)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	seqs := func(ls []*queue.DeadLetter) []uint64 {
		var out []uint64
		for _, l := range ls {
			out = append(out, l.Seq)
		}
		return out
	}

	t.Run("listing reads every field of a dead letter", func(t *testing.T) {
		all := list(queue.DeadLetterFilter{}, false)
		if len(all) != 4 {
			t.Fatalf("listed %d, want 4", len(all))
		}
		l := all[1]
		if l.Seq != 2 || l.Class != queue.ClassRejected || l.Status != 400 || l.Reason != "rejected 400" ||
			l.Attempts != 2 || !l.FailedAt.Equal(t0.Add(10*time.Minute)) ||
			l.OriginalSubject != b.top.Subject+".b" || l.OriginalSeq != 2 ||
			string(l.Data) != `{"id":"b","body":{}}` || l.Header.Get("Trace-Id") != "trace-b" {
			t.Fatalf("dead letter 2 = %+v", l)
		}
	})
	t.Run("headers only leaves the data out", func(t *testing.T) {
		for _, l := range list(queue.DeadLetterFilter{}, true) {
			if len(l.Data) != 0 || l.Class == "" {
				t.Fatalf("dead letter %d: data %q, class %q", l.Seq, l.Data, l.Class)
			}
		}
	})
	t.Run("filters select by class, status, time and sequence", func(t *testing.T) {
		for _, tc := range []struct {
			f    queue.DeadLetterFilter
			want []uint64
		}{
			{queue.DeadLetterFilter{Classes: []queue.DeadLetterClass{queue.ClassRejected}}, []uint64{2, 3}},
			{queue.DeadLetterFilter{Statuses: []int{404, 503}}, []uint64{3, 4}},
			{queue.DeadLetterFilter{Statuses: []int{0}}, []uint64{1}},
			{queue.DeadLetterFilter{Since: t0.Add(15 * time.Minute)}, []uint64{3, 4}},
			{queue.DeadLetterFilter{Until: t0.Add(15 * time.Minute)}, []uint64{1, 2}},
			{queue.DeadLetterFilter{Seqs: []uint64{4, 1, 99}}, []uint64{1, 4}},
			{queue.DeadLetterFilter{Seqs: []uint64{1, 2}, Classes: []queue.DeadLetterClass{queue.ClassInvalid}}, []uint64{1}},
		} {
			if got := seqs(list(tc.f, true)); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("filter %+v: got %v, want %v", tc.f, got, tc.want)
			}
		}
	})
	t.Run("a missing sequence is ErrNoDeadLetter", func(t *testing.T) {
		if _, err := d.Get(ctx, 99); !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("Get: %v", err)
		}
		if err := d.Delete(ctx, 99); !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("Delete: %v", err)
		}
	})
	t.Run("replay republishes without dead-letter headers, then removes the dead letter", func(t *testing.T) {
		l, err := d.Get(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := d.Replay(ctx, l, []byte(`{"id":"b","body":{"status":"done"}}`))
		if err != nil {
			t.Fatal(err)
		}
		if ack.Stream != b.top.Stream || ack.Duplicate {
			t.Fatalf("ack = %+v", ack)
		}
		s, _ := b.js.Stream(ctx, b.top.Stream)
		m, err := s.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != b.top.Subject+".b" || string(m.Data) != `{"id":"b","body":{"status":"done"}}` || m.Header.Get("Trace-Id") != "trace-b" {
			t.Fatalf("replayed message: subject %s, data %s, headers %v", m.Subject, m.Data, m.Header)
		}
		for k := range m.Header {
			if k == queue.HeaderClass || k == queue.HeaderReason || k == "Dlq-Original-Msg-Id" {
				t.Fatalf("replayed message carries %s", k)
			}
		}
		if _, err := d.Get(ctx, 2); !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("dead letter 2 still there: %v", err)
		}

		// A second replay of the same dead letter (a crash before the delete) is stored once.
		again, err := d.Replay(ctx, l, []byte(`{"id":"b","body":{"status":"done"}}`))
		if err != nil {
			t.Fatal(err)
		}
		if !again.Duplicate {
			t.Fatalf("second replay stored again: %+v", again)
		}
	})
	t.Run("replay as-is keeps the original message", func(t *testing.T) {
		l, err := d.Get(ctx, 4)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := d.Replay(ctx, l, nil)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := b.js.Stream(ctx, b.top.Stream)
		m, _ := s.GetMsg(ctx, ack.Sequence)
		if string(m.Data) != `{"id":"d","body":{}}` {
			t.Fatalf("replayed %s", m.Data)
		}
		if got := seqs(list(queue.DeadLetterFilter{}, true)); fmt.Sprint(got) != "[1 3]" {
			t.Fatalf("dead letters left: %v, want [1 3]", got)
		}
	})
	t.Run("a replayed message that fails again is dead-lettered again", func(t *testing.T) {
		replayed := fetch(t, cons, 2)
		for _, m := range replayed {
			b.deadLetter(t, m, queue.ClassExhausted, 503, time.Now())
		}
		if got := seqs(list(queue.DeadLetterFilter{Classes: []queue.DeadLetterClass{queue.ClassExhausted}}, true)); len(got) != 2 {
			t.Fatalf("exhausted dead letters: %v, want the 2 replayed ones", got)
		}
	})
	t.Run("a dead letter of the backfill lane goes back to the backfill lane", func(t *testing.T) {
		pub(t, b.js, b.top.ConversationSubject(queue.LaneBackfill, "e"), `{"id":"e","body":{}}`)
		lanes, _, err := queue.BindLanes(ctx, b.js, b.top)
		if err != nil {
			t.Fatal(err)
		}
		// The backfill lane's consumer itself: lanes.Backfill, a replica of its own, would
		// not pull while cons (another replica) holds the live lane's pin.
		b.deadLetter(t, fetch(t, lanes.Backfill.Pinned, 1)[0], queue.ClassExhausted, 503, time.Now())
		var l *queue.DeadLetter
		for _, dl := range list(queue.DeadLetterFilter{}, false) {
			if dl.OriginalSubject == b.top.BackfillSubject+".e" {
				l = dl
			}
		}
		if l == nil {
			t.Fatal("the backfill message's dead letter is not listed")
		}
		ack, err := d.Replay(ctx, l, nil)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := b.js.Stream(ctx, b.top.Stream)
		if m, err := s.GetMsg(ctx, ack.Sequence); err != nil || m.Subject != b.top.BackfillSubject+".e" {
			t.Fatalf("replayed to %v (%v), want %s", m, err, b.top.BackfillSubject+".e")
		}
	})
}
