package queue_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// pub publishes data to subject and returns its stream sequence.
func pub(tb testing.TB, js jetstream.JetStream, subject, data string) uint64 {
	tb.Helper()
	ack, err := js.Publish(context.Background(), subject, []byte(data))
	if err != nil {
		tb.Fatalf("publish to %s: %v", subject, err)
	}
	return ack.Sequence
}

// subjects fetches up to n messages from cons and returns their subjects, acking none.
func subjects(tb testing.TB, cons jetstream.Consumer, n int) ([]string, []jetstream.Msg) {
	tb.Helper()
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(300*time.Millisecond))
	if err != nil {
		tb.Fatal(err)
	}
	var subs []string
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		subs = append(subs, m.Subject())
		msgs = append(msgs, m)
	}
	return subs, msgs
}

func TestLanes(t *testing.T) {
	t.Parallel()
	t.Run("each lane's consumer delivers only its own lane, in stream order", func(t *testing.T) {
		js, top := setup(t)
		ctx := context.Background()
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l1")
		pub(t, js, top.BackfillSubject, "b2")
		pub(t, js, top.Subject, "l2")
		cs, _, err := queue.BindLanes(ctx, js, top)
		if err != nil {
			t.Fatal(err)
		}
		live, _ := subjects(t, cs.Live, 10)
		backfill, _ := subjects(t, cs.Backfill, 10)
		if want := []string{top.Subject + ".a", top.Subject}; !slices.Equal(live, want) {
			t.Errorf("live lane delivered %v, want %v", live, want)
		}
		if want := []string{top.BackfillSubject + ".a", top.BackfillSubject}; !slices.Equal(backfill, want) {
			t.Errorf("backfill lane delivered %v, want %v", backfill, want)
		}
		if cs.Of(queue.LaneBackfill) != cs.Backfill || cs.Of(queue.LaneLive) != cs.Live {
			t.Error("Of does not return the lane's consumer")
		}
	})

	t.Run("the server refuses an unfiltered consumer beside the lanes' consumers", func(t *testing.T) {
		js, top := setup(t)
		_, err := js.CreateOrUpdateConsumer(context.Background(), top.Stream, jetstream.ConsumerConfig{
			Durable: "other", AckPolicy: jetstream.AckExplicitPolicy,
		})
		if err == nil {
			t.Fatal("a second, unfiltered consumer was created on the work-queue stream")
		}
	})

	t.Run("an earlier version's Ensure would widen the live consumer again: the server allows it", func(t *testing.T) {
		// Documents a server behaviour the upgrade steps of docs/LANES.md rest on: updating
		// an existing consumer skips the check that refuses an unfiltered consumer beside
		// others, so a replica of an earlier version that declares its topology at start
		// makes the live consumer take the backfill lane too.
		js, top := setup(t)
		_, err := js.UpdateConsumer(context.Background(), top.Stream, jetstream.ConsumerConfig{
			Durable: top.Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: top.AckWait,
			MaxAckPending: top.MaxAckPending, MaxDeliver: top.MaxDeliver, MaxWaiting: 512,
		})
		if err != nil {
			t.Fatalf("the server refuses it now (%v): good news; the upgrade note in docs/LANES.md and this test can go", err)
		}
		cs, _, _ := queue.BindLanes(context.Background(), js, top)
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		live, _ := subjects(t, cs.Live, 1)
		backfill, _ := subjects(t, cs.Backfill, 1)
		if len(live) != 1 || len(backfill) != 1 {
			t.Errorf("one backfill message delivered by the live consumer %d times and by the backfill consumer %d times", len(live), len(backfill))
		}
	})

	t.Run("Ensure converts the one unfiltered consumer of earlier versions in place", func(t *testing.T) {
		_, js := queuetest.Connect(t, queuetest.StartServer(t).URL())
		top := queue.Topology{}.WithDefaults()
		ctx := context.Background()
		// The topology as versions before lanes declared it.
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: top.Stream, Subjects: []string{top.Subject, top.Subject + ".>"}, Retention: jetstream.WorkQueuePolicy,
		}); err != nil {
			t.Fatal(err)
		}
		old, err := js.CreateOrUpdateConsumer(ctx, top.Stream, jetstream.ConsumerConfig{
			Durable: top.Consumer, AckPolicy: jetstream.AckExplicitPolicy, MaxWaiting: 512,
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"a", "b", "c"} {
			pub(t, js, top.ConversationSubject(queue.LaneLive, id), id)
		}
		_, held := subjects(t, old, 2) // held by a running worker of the old version

		if err := queue.Ensure(ctx, js, top); err != nil {
			t.Fatalf("Ensure over the old topology: %v", err)
		}
		cs, _, err := queue.BindLanes(ctx, js, top)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cs.Live.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != queue.DefaultConsumer || !slices.Equal(info.Config.FilterSubjects, top.LaneSubjects(queue.LaneLive)) {
			t.Errorf("live consumer %s filtered to %v, want %s on %v", info.Name, info.Config.FilterSubjects, queue.DefaultConsumer, top.LaneSubjects(queue.LaneLive))
		}
		if info.NumAckPending != 2 || info.NumPending != 1 {
			t.Errorf("live consumer: %d in progress and %d waiting after the conversion, want 2 and 1", info.NumAckPending, info.NumPending)
		}
		for _, m := range held {
			if err := m.DoubleAck(ctx); err != nil {
				t.Errorf("acking a message held across the conversion: %v", err)
			}
		}
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "d"), "d")
		live, _ := subjects(t, cs.Live, 10)
		backfill, _ := subjects(t, cs.Backfill, 10)
		if !slices.Equal(live, []string{top.Subject + ".c"}) || !slices.Equal(backfill, []string{top.BackfillSubject + ".d"}) {
			t.Errorf("after the conversion the live lane delivered %v and the backfill lane %v", live, backfill)
		}
		if n := queuetest.StreamMsgs(t, js, top.Stream); n != 2 {
			t.Errorf("stream holds %d messages, want the 2 not acknowledged", n)
		}
	})

	t.Run("subjects map to lanes and conversations", func(t *testing.T) {
		top := queue.Topology{}.WithDefaults()
		for _, c := range []struct {
			subject  string
			lane     queue.Lane
			id       string
			ok, idOK bool
		}{
			{"kustomer.conversations.update", queue.LaneLive, "", true, false},
			{"kustomer.conversations.update.abc", queue.LaneLive, "abc", true, true},
			{"kustomer.conversations.backfill.abc", queue.LaneBackfill, "abc", true, true},
			{"kustomer.conversations.backfill", queue.LaneBackfill, "", true, false},
			{"kustomer.conversations.updated", "", "", false, false},
			{"kustomer.conversations.dlq", "", "", false, false},
		} {
			l, ok := top.LaneOf(c.subject)
			cl, id, idOK := top.ConversationOf(c.subject)
			if l != c.lane || ok != c.ok || id != c.id || idOK != c.idOK || (idOK && cl != c.lane) {
				t.Errorf("%s: lane %q %v, conversation %q %v; want %q %v, %q %v", c.subject, l, ok, id, idOK, c.lane, c.ok, c.id, c.idOK)
			}
		}
		if top.BackfillConsumer != "kustomer-worker-backfill" || (queue.Topology{Consumer: "w"}).WithDefaults().BackfillConsumer != "w-backfill" {
			t.Errorf("backfill consumer defaults to %q", top.BackfillConsumer)
		}
	})
}

func TestOrderCheck(t *testing.T) {
	t.Parallel()
	setupCheck := func(t *testing.T) (jetstream.JetStream, queue.Topology, *queue.OrderCheck) {
		js, top := setup(t)
		oc, err := queue.NewOrderCheck(context.Background(), js, top)
		if err != nil {
			t.Fatal(err)
		}
		return js, top, oc
	}
	seqs := func(ms []*queue.DirectMsg) []uint64 {
		var out []uint64
		for _, m := range ms {
			md, _ := m.Metadata()
			out = append(out, md.Sequence.Stream)
		}
		return out
	}

	t.Run("finds exactly the older messages of the conversation in the other lane", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		b1 := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "z"), "other conversation")
		b2 := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b2")
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l1")
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b3: newer than the live one")

		older, err := oc.OlderPending(context.Background(), queue.LaneBackfill, "a", live)
		if err != nil {
			t.Fatal(err)
		}
		if got := seqs(older); !slices.Equal(got, []uint64{b1, b2}) {
			t.Fatalf("older pending %v, want %v", got, []uint64{b1, b2})
		}
		if string(older[0].Data()) != "b1" || older[0].Subject() != top.BackfillSubject+".a" {
			t.Errorf("first older message %s on %s", older[0].Data(), older[0].Subject())
		}
		none, err := oc.OlderPending(context.Background(), queue.LaneBackfill, "nobody", live)
		if err != nil || len(none) != 0 {
			t.Errorf("a conversation without backfill messages: %v, %v", seqs(none), err)
		}
	})

	t.Run("acknowledging a message read by sequence removes it, and its lane's consumer skips it", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		b2 := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "b"), "b2")
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "b"), "l1")
		older, err := oc.OlderPending(ctx, queue.LaneBackfill, "b", live)
		if err != nil || len(older) != 1 {
			t.Fatalf("older pending %v, %v", seqs(older), err)
		}
		if err := older[0].Nak(); err != nil {
			t.Fatal(err)
		}
		if n := queuetest.StreamMsgs(t, js, top.Stream); n != 3 {
			t.Fatalf("a Nak removed something: %d messages left", n)
		}
		if err := older[0].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		if err := older[0].Ack(); err != nil {
			t.Errorf("acknowledging it again: %v", err)
		}
		cs, _, _ := queue.BindLanes(ctx, js, top)
		got, _ := subjects(t, cs.Backfill, 10)
		if !slices.Equal(got, []string{top.BackfillSubject + ".a"}) {
			t.Errorf("backfill consumer delivered %v after message %d was applied out of turn", got, b2)
		}
	})

	t.Run("a message removed while its lane's consumer holds it can still be acknowledged there", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), "b1")
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l1")
		cs, _, _ := queue.BindLanes(ctx, js, top)
		_, delivered := subjects(t, cs.Backfill, 1)
		older, _ := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
		if len(older) != 1 || len(delivered) != 1 {
			t.Fatalf("older %d, delivered %d", len(older), len(delivered))
		}
		if err := older[0].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		if err := delivered[0].DoubleAck(ctx); err != nil {
			t.Errorf("acking the consumer's delivery after the removal: %v", err)
		}
		info, _ := cs.Backfill.Info(ctx)
		if info.NumAckPending != 0 || info.NumPending != 0 {
			t.Errorf("backfill consumer: %d in progress, %d waiting", info.NumAckPending, info.NumPending)
		}
	})

	t.Run("finds the conversation's older messages on the bare subject by their body", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		first := pub(t, js, top.BackfillSubject, `{"id":"a","body":{}}`)
		pub(t, js, top.BackfillSubject, `{"id":"z","body":{}}`)
		pub(t, js, top.BackfillSubject, `not an update`)
		perID := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), `{"id":"a","body":{}}`)
		second := pub(t, js, top.BackfillSubject, `{"id":"a","body":{}}`)
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l1")
		pub(t, js, top.BackfillSubject, `{"id":"a","body":{"newer":"than the live one"}}`)
		older, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
		if want := []uint64{first, perID, second}; err != nil || !slices.Equal(seqs(older), want) {
			t.Fatalf("OlderPending: %v, %v; want %v", seqs(older), err, want)
		}
		if older[0].Subject() != top.BackfillSubject || string(older[0].Data()) != `{"id":"a","body":{}}` {
			t.Errorf("first older message %s on %s", older[0].Data(), older[0].Subject())
		}
		// Asked again, after one of them was applied: the others only.
		if err := older[2].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		again, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
		if want := []uint64{first, perID}; err != nil || !slices.Equal(seqs(again), want) {
			t.Errorf("OlderPending after %d was removed: %v, %v; want %v", second, seqs(again), err, want)
		}
		if none, err := oc.OlderPending(ctx, queue.LaneBackfill, "z", first); err != nil || len(none) != 0 {
			t.Errorf("nothing is older than the first message: %v, %v", seqs(none), err)
		}
	})

	t.Run("reads a long bare backlog once, in ranges, and misses none of it", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		var want []uint64
		for i := range 3000 {
			conv := "other"
			if i%97 == 0 {
				conv = "a"
			}
			subject := top.BackfillSubject
			if i%3 == 0 {
				subject = top.ConversationSubject(queue.LaneBackfill, "x") // gaps between bare ones
			}
			seq := pub(t, js, subject, `{"id":"`+conv+`","body":{}}`)
			if conv == "a" && subject == top.BackfillSubject {
				want = append(want, seq)
			}
		}
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l1")
		older, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
		if err != nil || !slices.Equal(seqs(older), want) {
			t.Fatalf("OlderPending: %v, %v; want %v", seqs(older), err, want)
		}
		const bare = 2000 // of the 3000, those not on a conversation's subject
		if next, n := queue.BareIndexState(oc, queue.LaneBackfill); next < live || n != bare {
			t.Errorf("bare index read up to %d, remembers %d; want up to %d, each of the %d bare messages once", next, n, live, bare)
		}
		// Another conversation, after more bare messages: only those are read.
		b := pub(t, js, top.BackfillSubject, `{"id":"b","body":{}}`)
		live2 := pub(t, js, top.ConversationSubject(queue.LaneLive, "b"), "l2")
		older, err = oc.OlderPending(ctx, queue.LaneBackfill, "b", live2)
		if err != nil || !slices.Equal(seqs(older), []uint64{b}) {
			t.Errorf("OlderPending of b: %v, %v; want [%d]", seqs(older), err, b)
		}
		if next, n := queue.BareIndexState(oc, queue.LaneBackfill); next < live2 || n != bare+1 {
			t.Errorf("bare index read up to %d, remembers %d; want up to %d, %d: the new bare message added once", next, n, live2, bare+1)
		}
	})

	t.Run("forgets the bare messages that are gone and still finds the others", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		stream, err := js.Stream(ctx, top.Stream)
		if err != nil {
			t.Fatal(err)
		}
		var all, as []uint64
		publish := func(n int) {
			for i := range n {
				conv := []string{"a", "b"}[i%2]
				seq := pub(t, js, top.BackfillSubject, `{"id":"`+conv+`","body":{}}`)
				all = append(all, seq)
				if conv == "a" {
					as = append(as, seq)
				}
			}
		}
		check := func(what string) {
			t.Helper()
			live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), "l")
			older, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
			if err != nil || !slices.Equal(seqs(older), as) {
				t.Fatalf("%s: OlderPending found %d messages (%v), want %d", what, len(older), err, len(as))
			}
		}
		applyFirst := func(n int) { // as the backfill lane's consumer would, oldest first
			for _, seq := range all[:n] {
				if err := stream.DeleteMsg(ctx, seq); err != nil {
					t.Fatal(err)
				}
				if i, ok := slices.BinarySearch(as, seq); ok {
					as = slices.Delete(as, i, i+1)
				}
			}
			all = all[n:]
		}
		publish(1000)
		check("a thousand pending")
		applyFirst(500)
		publish(100)
		check("half of them applied, more published (the index prunes)")
		if _, n := queue.BareIndexState(oc, queue.LaneBackfill); n >= 1100 {
			t.Errorf("the index remembers %d bare messages; want the 500 applied ones forgotten", n)
		}
		applyFirst(550)
		publish(2000)
		check("most applied, many more published")
	})

	t.Run("finds a message stored after a check that found the other lane empty", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		first := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), `{"id":"a","body":{}}`)
		pub(t, js, top.ConversationSubject(queue.LaneLive, "b"), `{"id":"b","body":{}}`)
		if none, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", first); err != nil || len(none) != 0 {
			t.Fatalf("an empty backfill lane: %v, %v", seqs(none), err)
		}
		b1 := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), `{"id":"a","body":{}}`)
		b2 := pub(t, js, top.BackfillSubject, `{"id":"a","body":{}}`)
		live := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), `{"id":"a","body":{}}`)
		older, err := oc.OlderPending(ctx, queue.LaneBackfill, "a", live)
		if err != nil || !slices.Equal(seqs(older), []uint64{b1, b2}) {
			t.Errorf("OlderPending: %v, %v; want [%d %d]", seqs(older), err, b1, b2)
		}
	})

	t.Run("finds older live updates for a backfill one, on both live subjects", func(t *testing.T) {
		js, top, oc := setupCheck(t)
		ctx := context.Background()
		l1 := pub(t, js, top.Subject, `{"id":"a","body":{}}`)
		l2 := pub(t, js, top.ConversationSubject(queue.LaneLive, "a"), `{"id":"a","body":{}}`)
		b := pub(t, js, top.ConversationSubject(queue.LaneBackfill, "a"), `{"id":"a","body":{}}`)
		older, err := oc.OlderPending(ctx, queue.LaneLive, "a", b)
		if err != nil || !slices.Equal(seqs(older), []uint64{l1, l2}) {
			t.Errorf("OlderPending: %v, %v; want [%d %d]", seqs(older), err, l1, l2)
		}
	})

	t.Run("refuses a stream that answers reads from any replica", func(t *testing.T) {
		js, top := setup(t)
		ctx := context.Background()
		s, _ := js.Stream(ctx, top.Stream)
		cfg := s.CachedInfo().Config
		cfg.AllowDirect = true
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := queue.NewOrderCheck(ctx, js, top); err == nil {
			t.Error("NewOrderCheck accepted a stream with direct gets")
		}
	})
}

// BenchmarkOrderCheck measures the cross-lane order check on the embedded server over
// loopback: a live update of a conversation with no backfill update pending (the common
// case), with one pending, and of a conversation whose updates were published to the bare
// subject behind 100 others.
func BenchmarkOrderCheck(b *testing.B) {
	_, js := queuetest.Connect(b, queuetest.StartServer(b).URL())
	top := queue.Topology{}.WithDefaults()
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, top); err != nil {
		b.Fatal(err)
	}
	// A backfill of 5,000 conversations waiting, as in the lanes benchmark.
	var ids []string
	for i := range 5000 {
		id := "c" + string(rune('a'+i%26)) + time.Duration(i).String()
		ids = append(ids, id)
		if _, err := js.PublishAsync(top.ConversationSubject(queue.LaneBackfill, id), []byte("{}")); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("backfill not stored")
	}
	for range 100 {
		pub(b, js, top.BackfillSubject, `{"id":"other","body":{}}`)
	}
	pub(b, js, top.BackfillSubject, `{"id":"bare","body":{}}`)
	live := pub(b, js, top.ConversationSubject(queue.LaneLive, ids[2500]), "{}")
	oc, err := queue.NewOrderCheck(ctx, js, top)
	if err != nil {
		b.Fatal(err)
	}
	check := func(b *testing.B, want int, f func() ([]*queue.DirectMsg, error)) {
		for b.Loop() {
			older, err := f()
			if err != nil || len(older) != want {
				b.Fatalf("found %d, want %d: %v", len(older), want, err)
			}
		}
	}
	b.Run("none pending", func(b *testing.B) {
		check(b, 0, func() ([]*queue.DirectMsg, error) { return oc.OlderPending(ctx, queue.LaneBackfill, "nobody", live) })
	})
	b.Run("one pending", func(b *testing.B) {
		check(b, 1, func() ([]*queue.DirectMsg, error) { return oc.OlderPending(ctx, queue.LaneBackfill, ids[2500], live) })
	})
	b.Run("bare subject, 101 read once", func(b *testing.B) {
		check(b, 1, func() ([]*queue.DirectMsg, error) { return oc.OlderPending(ctx, queue.LaneBackfill, "bare", live) })
	})
}

// BenchmarkOrderCheckBare measures the check of a live update against a backfill of 5,000
// updates published on the bare subject (their conversations only in their bodies): the first
// check after it was published reads all of it, later ones only what was stored since.
func BenchmarkOrderCheckBare(b *testing.B) {
	_, js := queuetest.Connect(b, queuetest.StartServer(b).URL())
	top := queue.Topology{}.WithDefaults()
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, top); err != nil {
		b.Fatal(err)
	}
	for i := range 5000 {
		if _, err := js.PublishAsync(top.BackfillSubject, fmt.Appendf(nil, `{"id":"c%d","body":{}}`, i)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("backfill not stored")
	}
	live := pub(b, js, top.ConversationSubject(queue.LaneLive, "c2500"), "{}")
	b.Run("first check, 5000 bare messages read", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			oc, err := queue.NewOrderCheck(ctx, js, top)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if older, err := oc.OlderPending(ctx, queue.LaneBackfill, "c2500", live); err != nil || len(older) != 1 {
				b.Fatalf("found %d: %v", len(older), err)
			}
		}
	})
	b.Run("later checks, one message stored since, one found", func(b *testing.B) {
		oc, err := queue.NewOrderCheck(ctx, js, top)
		if err != nil {
			b.Fatal(err)
		}
		before := live
		for b.Loop() {
			b.StopTimer()
			before = pub(b, js, top.ConversationSubject(queue.LaneLive, "c2500"), "{}")
			b.StartTimer()
			if older, err := oc.OlderPending(ctx, queue.LaneBackfill, "c2500", before); err != nil || len(older) != 1 {
				b.Fatalf("found %d: %v", len(older), err)
			}
		}
	})
}
