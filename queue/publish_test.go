package queue_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// broker is an embedded NATS server with the topology declared, for the tests of this file
// and inspect_test.go.
type broker struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	top queue.Topology
}

func startBroker(tb testing.TB) *broker {
	tb.Helper()
	nc, js := queuetest.Connect(tb, queuetest.StartServer(tb).URL())
	top := queue.Topology{DedupWindow: time.Minute}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		tb.Fatal(err)
	}
	return &broker{nc: nc, js: js, top: top}
}

func (b *broker) publisher(tb testing.TB, cfg queue.PublisherConfig) *queue.Publisher {
	tb.Helper()
	p, err := queue.NewPublisher(b.nc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// streamMsgs returns the messages stored in stream, in order.
func (b *broker) streamMsgs(tb testing.TB, stream string) []*jetstream.RawStreamMsg {
	tb.Helper()
	ctx := context.Background()
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		tb.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	st := s.CachedInfo().State
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

func noLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { leaktest.VerifyNone(t, goleak.IgnoreCurrent()) })
}

func publishAll(t *testing.T, p *queue.Publisher, subject string, n int, runID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range n {
		data := []byte(fmt.Sprintf(`{"n":%d}`, i))
		if err := p.Publish(ctx, subject, data, queue.MsgID(runID, int64(i), data)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPublisher(t *testing.T) {
	t.Run("every message is confirmed and stored once, in order", func(t *testing.T) {
		b := startBroker(t)
		p := b.publisher(t, queue.PublisherConfig{Window: 64, Stream: b.top.Stream})
		publishAll(t, p, b.top.Subject+".x", 1000, "")
		st := p.Stats()
		if st.Published != 1000 || st.Duplicates != 0 || st.Pending != 0 || st.Failed != 0 {
			t.Fatalf("stats = %+v, want 1000 published and nothing else", st)
		}
		msgs := b.streamMsgs(t, b.top.Stream)
		if len(msgs) != 1000 {
			t.Fatalf("stream holds %d messages, want 1000", len(msgs))
		}
		for i, m := range msgs {
			if want := fmt.Sprintf(`{"n":%d}`, i); string(m.Data) != want {
				t.Fatalf("message %d = %s, want %s", i, m.Data, want)
			}
		}
	})

	t.Run("publishing the same messages again stores nothing new", func(t *testing.T) {
		b := startBroker(t)
		publishAll(t, b.publisher(t, queue.PublisherConfig{}), b.top.Subject, 300, "run-1")
		again := b.publisher(t, queue.PublisherConfig{})
		publishAll(t, again, b.top.Subject, 300, "run-1")
		if st := again.Stats(); st.Published != 0 || st.Duplicates != 300 {
			t.Fatalf("second run: stats = %+v, want 300 duplicates", st)
		}
		if n := len(b.streamMsgs(t, b.top.Stream)); n != 300 {
			t.Fatalf("stream holds %d messages, want 300", n)
		}
		other := b.publisher(t, queue.PublisherConfig{})
		publishAll(t, other, b.top.Subject, 300, "run-2")
		if st := other.Stats(); st.Published != 300 {
			t.Fatalf("another run id: stats = %+v, want 300 published", st)
		}
	})

	t.Run("a publish with no stream to take it is retried until the stream exists", func(t *testing.T) {
		noLeaks(t)
		b := startBroker(t)
		p := b.publisher(t, queue.PublisherConfig{MaxRetries: 10})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for i := range 20 {
			data := []byte(strconv.Itoa(i))
			if err := p.Publish(ctx, "late.x", data, queue.MsgID("", int64(i), data)); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		var waitErr error
		wg.Go(func() { waitErr = p.Wait(ctx) })
		testwait.Until(t, "a publish to be retried", 20*time.Second, func() bool { return p.Stats().Retried > 0 })
		if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "LATE", Subjects: []string{"late.>"}}); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if waitErr != nil {
			t.Fatal(waitErr)
		}
		msgs := b.streamMsgs(t, "LATE")
		if len(msgs) != 20 {
			t.Fatalf("LATE holds %d messages, want 20", len(msgs))
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			seen[string(m.Data)] = true
		}
		if len(seen) != 20 {
			t.Fatalf("LATE holds %d distinct messages, want 20", len(seen))
		}
		if st := p.Stats(); st.Published != 20 || st.Pending != 0 {
			t.Fatalf("stats = %+v, want 20 published, none pending", st)
		}
	})

	t.Run("a message stored in another stream than expected fails the publisher", func(t *testing.T) {
		b := startBroker(t)
		p := b.publisher(t, queue.PublisherConfig{Stream: "SOMEWHERE_ELSE"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Publish(ctx, b.top.Subject, []byte("{}"), "id-1"); err != nil {
			t.Fatal(err)
		}
		err := p.Wait(ctx)
		if err == nil {
			t.Fatal("Wait succeeded; want the expected-stream error")
		}
		if st := p.Stats(); st.Failed != 1 || st.Retried != 0 || st.Pending != 0 {
			t.Fatalf("stats = %+v, want 1 failed and no retry", st)
		}
		if err := p.Publish(ctx, b.top.Subject, []byte("{}"), "id-2"); err == nil {
			t.Fatal("Publish after a failure succeeded; want the earlier error")
		}
		if n := len(b.streamMsgs(t, b.top.Stream)); n != 1 {
			t.Fatalf("stream holds %d messages, want only the first", n)
		}
	})

	t.Run("a message without an id is refused", func(t *testing.T) {
		b := startBroker(t)
		p := b.publisher(t, queue.PublisherConfig{})
		if err := p.Publish(context.Background(), b.top.Subject, []byte("{}"), ""); err == nil {
			t.Fatal("want an error")
		}
	})
}

func TestMsgID(t *testing.T) {
	t.Parallel()
	data := []byte(`{"id":"5f1a2b3c4d5e6f7a8b9c0d1e","body":{}}`)
	id := queue.MsgID("", 1, data)
	if len(id) != 32 {
		t.Fatalf("MsgID = %q, want 32 hex characters", id)
	}
	if queue.MsgID("", 1, data) != id {
		t.Fatal("MsgID is not deterministic")
	}
	for name, other := range map[string]string{
		"another position": queue.MsgID("", 2, data),
		"another run id":   queue.MsgID("r", 1, data),
		"another message":  queue.MsgID("", 1, append([]byte(" "), data...)),
	} {
		if other == id {
			t.Errorf("%s gives the same id", name)
		}
	}
}

// BenchmarkPublisher publishes 200-byte messages through an in-process server.
func BenchmarkPublisher(b *testing.B) {
	br := startBroker(b)
	p := br.publisher(b, queue.PublisherConfig{Stream: br.top.Stream})
	line := []byte(`{"id":"5f1a2b3c4d5e6f7a8b9c0d1e","replace":false,"body":{"status":"done","tags":["5f1a2b3c4d5e6f7a8b9c0d1f","5f1a2b3c4d5e6f7a8b9c0d20"],"priority":3,"assignedTeams":["5f1a2b3c4d5e6f7a8b9c0d21"]}}`)
	ctx := context.Background()
	subject := br.top.Subject + ".5f1a2b3c4d5e6f7a8b9c0d1e"
	b.ReportAllocs()
	start := time.Now()
	i := 0
	for b.Loop() {
		if err := p.Publish(ctx, subject, line, queue.MsgID("bench", int64(i), line)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if err := p.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(i)/time.Since(start).Seconds(), "msgs/s")
}
