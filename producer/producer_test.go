package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/producer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

const convID = "5f3c9a1b2c3d4e5f60718293"

// fixture is an embedded NATS server with the worker's streams declared for top.
type fixture struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	top queue.Topology
}

func setup(tb testing.TB, top queue.Topology) *fixture {
	tb.Helper()
	nc, js := queuetest.Connect(tb, queuetest.StartServer(tb).URL())
	top = top.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		tb.Fatal(err)
	}
	return &fixture{nc: nc, js: js, top: top}
}

func (f *fixture) producer(tb testing.TB, cfg producer.Config) *producer.Producer {
	tb.Helper()
	p, err := producer.New(f.nc, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// stored returns the messages of the work stream, in order.
func (f *fixture) stored(tb testing.TB) []*jetstream.RawStreamMsg {
	tb.Helper()
	ctx := context.Background()
	s, err := f.js.Stream(ctx, f.top.Stream)
	if err != nil {
		tb.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func update(body string) kustomer.Update {
	return kustomer.Update{ID: convID, Body: json.RawMessage(body)}
}

func TestPublishStoresTheUpdateOnItsConversationsSubject(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{})
	u := kustomer.Update{ID: convID, Replace: true, Body: json.RawMessage("{\n  \"status\": \"open\",\n  \"tags\": []\n}")}
	r, err := p.Publish(context.Background(), "evt-1", u)
	if err != nil {
		t.Fatal(err)
	}
	want := producer.Receipt{Subject: "kustomer.conversations.update." + convID, Stream: "KUSTOMER_UPDATES", Sequence: 1}
	if r != want {
		t.Errorf("receipt = %+v, want %+v", r, want)
	}
	msgs := f.stored(t)
	if len(msgs) != 1 {
		t.Fatalf("stream holds %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != want.Subject || m.Header.Get(jetstream.MsgIDHeader) != "evt-1" {
		t.Errorf("stored on %s with Nats-Msg-Id %q", m.Subject, m.Header.Get(jetstream.MsgIDHeader))
	}
	got, err := kustomer.Decode(m.Data)
	if err != nil {
		t.Fatalf("the worker would reject the stored message: %v", err)
	}
	if got.ID != convID || !got.Replace || string(got.Body) != `{"status":"open","tags":[]}` {
		t.Errorf("the worker decodes %+v %s", got, got.Body)
	}
}

func TestEventIDsDeduplicateRetriesButNotRepeatedContent(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{})
	ctx := context.Background()
	a, b := update(`{"status": "open"}`), update(`{"status": "done"}`)
	for i, send := range []struct {
		event     string
		u         kustomer.Update
		duplicate bool
	}{
		{"e1", a, false},
		{"e2", b, false},
		{"e3", a, false}, // A, B, A: the second A is a new event and must apply
		{"e3", a, true},  // a retry of e3
		{"e1", b, true},  // a reused event id is dropped whatever the content
	} {
		r, err := p.Publish(ctx, send.event, send.u)
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if r.Duplicate != send.duplicate {
			t.Errorf("publish %d (%s): Duplicate = %v, want %v", i, send.event, r.Duplicate, send.duplicate)
		}
	}
	var statuses []string
	for _, m := range f.stored(t) {
		u, err := kustomer.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, string(u.Body))
	}
	want := []string{`{"status":"open"}`, `{"status":"done"}`, `{"status":"open"}`}
	if fmt.Sprint(statuses) != fmt.Sprint(want) {
		t.Errorf("stored %v, want %v", statuses, want)
	}
}

func TestInvalidUpdatesAreNeverSent(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{})
	ctx := context.Background()
	t.Run("an update breaking the rules names each field", func(t *testing.T) {
		_, err := p.Publish(ctx, "evt-1", update(`{"priority": 9, "tags": "vip"}`))
		if !errors.Is(err, producer.ErrInvalid) || !errors.Is(err, kustomer.ErrInvalid) {
			t.Fatalf("err = %v, want ErrInvalid", err)
		}
		var ve *kustomer.ValidationError
		if !errors.As(err, &ve) || len(ve.Problems) != 2 || ve.Problems[0].Field != "body.priority" || ve.Problems[1].Field != "body.tags" {
			t.Errorf("problems: %v", err)
		}
		if !strings.Contains(err.Error(), `event "evt-1"`) {
			t.Errorf("error %q does not name the event", err)
		}
	})
	t.Run("a message in JSON form is checked by Decode", func(t *testing.T) {
		_, err := p.PublishJSON(ctx, "evt-2", []byte(`{"id": "../customers/x", "body": {"status": "done"}, "id": "`+convID+`"}`))
		if !errors.Is(err, producer.ErrInvalid) || !strings.Contains(err.Error(), "id: duplicate field") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("an unusable event id is refused", func(t *testing.T) {
		for _, id := range []string{"", " evt", "evt\r\nNats-Expected-Stream: X", "évènement", strings.Repeat("x", producer.MaxEventIDBytes+1)} {
			if _, err := p.Publish(ctx, id, update(`{"status": "done"}`)); !errors.Is(err, producer.ErrEventID) {
				t.Errorf("event id %q: err = %v, want ErrEventID", id, err)
			}
		}
	})
	if n := len(f.stored(t)); n != 0 {
		t.Errorf("%d messages stored, want none", n)
	}
}

func TestPublishToAnotherSubject(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{Stream: "BACKFILL", Subject: "backfill.update", DLQStream: "BACKFILL_DLQ", DLQSubject: "backfill.dlq"})
	p := f.producer(t, producer.Config{Subject: "backfill.update", Stream: "BACKFILL"})
	r, err := p.Publish(context.Background(), "evt-1", update(`{"status": "done"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Subject != "backfill.update."+convID || r.Stream != "BACKFILL" {
		t.Errorf("receipt = %+v", r)
	}
}

func TestPublishErrorsSayWhatWentWrong(t *testing.T) {
	t.Parallel()
	t.Run("no stream takes the subject: retryable", func(t *testing.T) {
		t.Parallel()
		f := setup(t, queue.Topology{})
		p := f.producer(t, producer.Config{Subject: "nobody.listens"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := p.Publish(ctx, "evt-1", update(`{"status": "done"}`))
		var pe *producer.PublishError
		if !errors.As(err, &pe) || !pe.Retryable() || !errors.Is(err, producer.ErrNoStream) {
			t.Fatalf("err = %v, want a retryable ErrNoStream", err)
		}
		if pe.Subject != "nobody.listens."+convID || pe.EventID != "evt-1" {
			t.Errorf("PublishError = %+v", pe)
		}
	})
	t.Run("stored in another stream: not retryable", func(t *testing.T) {
		t.Parallel()
		f := setup(t, queue.Topology{})
		p := f.producer(t, producer.Config{Stream: "SOMEWHERE_ELSE"})
		r, err := p.Publish(context.Background(), "evt-1", update(`{"status": "done"}`))
		var pe *producer.PublishError
		if !errors.As(err, &pe) || pe.Retryable() || !errors.Is(err, producer.ErrWrongStream) {
			t.Fatalf("err = %v, want ErrWrongStream", err)
		}
		if r.Stream != "KUSTOMER_UPDATES" || !strings.Contains(err.Error(), "KUSTOMER_UPDATES, not SOMEWHERE_ELSE") {
			t.Errorf("receipt %+v, error %v", r, err)
		}
	})
	t.Run("a cancelled context: not retryable", func(t *testing.T) {
		t.Parallel()
		f := setup(t, queue.Topology{})
		p := f.producer(t, producer.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := p.Publish(ctx, "evt-1", update(`{"status": "done"}`))
		var pe *producer.PublishError
		if !errors.As(err, &pe) || pe.Retryable() || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a subject with wildcards is refused by New", func(t *testing.T) {
		t.Parallel()
		for _, s := range []string{"a.*", "a.>", "a..b", "a.", "a b"} {
			if _, err := producer.New(nil, producer.Config{Subject: s}); err == nil || !strings.Contains(err.Error(), "Subject") {
				t.Errorf("New with Subject %q: %v", s, err)
			}
		}
	})
}

func TestBatchPublishesABurst(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{})
	b, err := p.NewBatch(producer.BatchConfig{Window: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	const n = 2000
	var buf []byte // one buffer for every message: the Batch keeps copies
	for i := range n {
		event := fmt.Sprintf("evt-%d", i)
		if i%500 == 0 { // an invalid one now and then: refused at once, the batch goes on
			if err := b.Publish(ctx, event+"-bad", update(`{"status": "closed"}`)); !errors.Is(err, producer.ErrInvalid) {
				t.Fatalf("invalid update: err = %v", err)
			}
		}
		buf = fmt.Appendf(buf[:0], `{"id": "%024x", "body": {"status": "done"}}`, i)
		if err := b.PublishJSON(ctx, event, buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, "evt-0", update(`{"status": "open"}`)); err != nil { // event evt-0 again
		t.Fatal(err)
	}
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	if st.Published != n || st.Duplicates != 1 || st.Pending != 0 || st.Failed != 0 {
		t.Errorf("stats = %+v", st)
	}
	msgs := f.stored(t)
	if len(msgs) != n {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), n)
	}
	for i, m := range msgs {
		u, err := kustomer.Decode(m.Data)
		if want := fmt.Sprintf("%024x", i); err != nil || u.ID != want || m.Subject != "kustomer.conversations.update."+want {
			t.Fatalf("message %d: %s on %s (%v), want conversation %s", i, m.Data, m.Subject, err, want)
		}
	}
}

func TestBatchReportsMessagesStoredElsewhere(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{Stream: "SOMEWHERE_ELSE"})
	b, err := p.NewBatch(producer.BatchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Publish(ctx, "evt-1", update(`{"status": "done"}`)); err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(ctx); err == nil || !strings.Contains(err.Error(), "not SOMEWHERE_ELSE") {
		t.Errorf("Wait = %v, want the stream named", err)
	}
}

func TestLanes(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	ctx := context.Background()
	t.Run("the backfill lane publishes to BackfillSubject.<id>", func(t *testing.T) {
		p := f.producer(t, producer.Config{Lane: producer.Backfill})
		r, err := p.Publish(ctx, "evt-backfill", update(`{"status": "done"}`))
		if err != nil {
			t.Fatal(err)
		}
		if r.Subject != "kustomer.conversations.backfill."+convID {
			t.Errorf("published to %s", r.Subject)
		}
		b, err := p.NewBatch(producer.BatchConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := b.Publish(ctx, "evt-backfill-batch", update(`{"status": "open"}`)); err != nil {
			t.Fatal(err)
		}
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the live lane is the default", func(t *testing.T) {
		p := f.producer(t, producer.Config{})
		if got := p.Config(); got.Lane != producer.Live || got.LaneSubject() != producer.DefaultSubject {
			t.Errorf("config = %+v", got)
		}
		if _, err := p.Publish(ctx, "evt-live", update(`{"status": "done"}`)); err != nil {
			t.Fatal(err)
		}
	})
	var subjects []string
	for _, m := range f.stored(t) {
		subjects = append(subjects, strings.TrimSuffix(m.Subject, "."+convID))
	}
	want := []string{producer.DefaultBackfillSubject, producer.DefaultBackfillSubject, producer.DefaultSubject}
	if fmt.Sprint(subjects) != fmt.Sprint(want) {
		t.Errorf("stored on %v, want %v", subjects, want)
	}
	t.Run("an unknown lane or lanes sharing a subject are refused by New", func(t *testing.T) {
		for _, c := range []struct {
			cfg  producer.Config
			want string
		}{
			{producer.Config{Lane: "urgent"}, `Lane "urgent"`},
			{producer.Config{BackfillSubject: producer.DefaultSubject}, "subjects of their own"},
			{producer.Config{BackfillSubject: producer.DefaultSubject + ".backfill"}, "subjects of their own"}, // under the live lane's
			{producer.Config{BackfillSubject: "a.>"}, "BackfillSubject"},
		} {
			if _, err := producer.New(nil, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New(%+v) = %v, want an error naming %s", c.cfg, err, c.want)
			}
		}
	})
}

func TestCheckJSONThenPublishChecked(t *testing.T) {
	t.Parallel()
	f := setup(t, queue.Topology{})
	p := f.producer(t, producer.Config{})
	ctx := context.Background()
	msg := []byte(`{"id": "` + convID + `", "body": {"status": "done"}}`)
	t.Run("CheckJSON returns the conversation id of a valid message", func(t *testing.T) {
		id, err := producer.CheckJSON("evt-1", msg)
		if err != nil || id != convID {
			t.Fatalf("CheckJSON = %q, %v", id, err)
		}
	})
	t.Run("CheckJSON names what is wrong and sends nothing", func(t *testing.T) {
		_, err := producer.CheckJSON("evt-2", []byte(`{"id": "`+convID+`", "body": {"status": "closed"}}`))
		var ve *kustomer.ValidationError
		if !errors.As(err, &ve) || ve.Problems[0].Field != "body.status" {
			t.Errorf("err = %v, want a ValidationError naming body.status", err)
		}
		if _, err := producer.CheckJSON("", msg); !errors.Is(err, producer.ErrEventID) {
			t.Errorf("empty event id: err = %v", err)
		}
	})
	b, err := p.NewBatch(producer.BatchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t.Run("PublishChecked refuses what would make a wrong subject or header", func(t *testing.T) {
		if err := b.PublishChecked(ctx, "evt-3", "../customers/x", msg); !errors.Is(err, producer.ErrInvalid) || !strings.Contains(err.Error(), "id: ") {
			t.Errorf("bad conversation id: err = %v", err)
		}
		if err := b.PublishChecked(ctx, "evt\r\n", convID, msg); !errors.Is(err, producer.ErrEventID) {
			t.Errorf("bad event id: err = %v", err)
		}
	})
	t.Run("PublishChecked sends the checked message as given", func(t *testing.T) {
		if err := b.PublishChecked(ctx, "evt-1", convID, msg); err != nil {
			t.Fatal(err)
		}
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := f.stored(t)
		if len(msgs) != 1 || string(msgs[0].Data) != string(msg) || msgs[0].Header.Get(jetstream.MsgIDHeader) != "evt-1" ||
			msgs[0].Subject != producer.DefaultSubject+"."+convID {
			t.Errorf("stored %d messages, the first %+v", len(msgs), msgs)
		}
	})
}
