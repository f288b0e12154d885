package queue_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// TestMain fails the package's tests if any of them leaves a goroutine behind.
func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

func setup(t *testing.T) (jetstream.JetStream, queue.Topology) {
	t.Helper()
	_, js := queuetest.Connect(t, queuetest.StartServer(t).URL())
	top := queue.Topology{}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	return js, top
}

func TestEnsure(t *testing.T) {
	t.Parallel()
	t.Run("is idempotent and takes ids appended to the subject", func(t *testing.T) {
		js, top := setup(t)
		ctx := context.Background()
		if err := queue.Ensure(ctx, js, top); err != nil {
			t.Fatalf("second Ensure: %v", err)
		}
		for _, subj := range []string{top.Subject, top.Subject + ".5f3c9a1b2c3d4e5f60718293"} {
			if _, err := js.Publish(ctx, subj, []byte("{}")); err != nil {
				t.Errorf("publish to %s: %v", subj, err)
			}
		}
		s, err := js.Stream(ctx, top.Stream)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := s.Info(ctx)
		if info.Config.Retention != jetstream.WorkQueuePolicy || info.Config.Storage != jetstream.FileStorage || info.Config.Duplicates != 2*time.Minute {
			t.Errorf("work stream config %+v", info.Config)
		}
		cons, attempts, err := queue.Bind(ctx, js, top)
		if err != nil || attempts == nil {
			t.Fatalf("Bind: %v", err)
		}
		ci, _ := cons.Info(ctx)
		if ci.Config.AckPolicy != jetstream.AckExplicitPolicy || ci.Config.MaxDeliver != 100 || ci.Config.AckWait != 30*time.Second {
			t.Errorf("consumer config %+v", ci.Config)
		}
	})

	t.Run("applies changed settings to existing streams", func(t *testing.T) {
		js, top := setup(t)
		top.AckWait, top.MaxAckPending = 7*time.Second, 12
		if err := queue.Ensure(context.Background(), js, top); err != nil {
			t.Fatal(err)
		}
		cons, _, _ := queue.Bind(context.Background(), js, top)
		ci, _ := cons.Info(context.Background())
		if ci.Config.AckWait != 7*time.Second || ci.Config.MaxAckPending != 12 {
			t.Errorf("consumer kept AckWait %s and MaxAckPending %d", ci.Config.AckWait, ci.Config.MaxAckPending)
		}
	})

	t.Run("Bind explains a missing consumer", func(t *testing.T) {
		js, top := setup(t)
		top.Consumer = "nobody"
		_, _, err := queue.Bind(context.Background(), js, top)
		if err == nil || !strings.Contains(err.Error(), "nobody") || !strings.Contains(err.Error(), "manage-streams") {
			t.Errorf("err = %v; want it to name the consumer and manage-streams", err)
		}
	})
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	js, top := setup(t)
	ctx := context.Background()
	in := nats.NewMsg(top.Subject)
	in.Data = []byte(`{"id":"nope"}`)
	in.Header.Set("Trace-Id", "abc")
	in.Header.Set(jetstream.MsgIDHeader, "producer-1")
	in.Header.Set(jetstream.ExpectedStreamHeader, top.Stream)
	if _, err := js.PublishMsg(ctx, in); err != nil {
		t.Fatal(err)
	}
	cons, _, err := queue.Bind(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	msg := <-batch.Messages()
	dl := &queue.DeadLetterPublisher{JS: js, Subject: top.DLQSubject}
	failedAt := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for range 2 { // a retried publish is stored once
		if err := dl.Publish(ctx, msg, queue.Failure{Class: queue.ClassRejected, Reason: "kustomer: HTTP 400: bad", Status: 400, Attempts: 1, FailedAt: failedAt}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := js.Stream(ctx, top.DLQStream)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("%d dead letters; want 1", info.State.Msgs)
	}
	got, err := s.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Data, in.Data) {
		t.Errorf("data %q; want the original bytes", got.Data)
	}
	want := map[string]string{
		queue.HeaderClass: "rejected", queue.HeaderReason: "kustomer: HTTP 400: bad", queue.HeaderStatus: "400",
		queue.HeaderAttempts: "1", queue.HeaderOriginalSubject: top.Subject, queue.HeaderOriginalSequence: "1",
		queue.HeaderFailedAt: "2026-11-25T10:00:00Z", "Trace-Id": "abc", "Dlq-Original-Msg-Id": "producer-1",
		"Dlq-Original-Expected-Stream": top.Stream, jetstream.ExpectedStreamHeader: "",
	}
	for k, v := range want {
		if got.Header.Get(k) != v {
			t.Errorf("header %s = %q; want %q", k, got.Header.Get(k), v)
		}
	}
}

func TestAttempts(t *testing.T) {
	t.Parallel()
	js, top := setup(t)
	ctx := context.Background()
	_, a, err := queue.Bind(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := queue.NewMsgRef(42, time.Now())
	if n, err := a.Get(ctx, ref); n != 0 || err != nil {
		t.Errorf("Get of an unknown message = %d, %v; want 0, nil", n, err)
	}
	if err := a.Set(ctx, ref, 3); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Get(ctx, ref); n != 3 {
		t.Errorf("Get = %d; want 3", n)
	}
	if err := a.Delete(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Get(ctx, ref); n != 0 {
		t.Errorf("Get after Delete = %d; want 0", n)
	}
	t.Run("a message of a recreated stream with the same sequence is another message", func(t *testing.T) {
		if err := a.Set(ctx, ref, 2); err != nil {
			t.Fatal(err)
		}
		if n, _ := a.Get(ctx, queue.MsgRef{Seq: 42, Stored: ref.Stored + int64(time.Second)}); n != 0 {
			t.Errorf("Get of a newer message with sequence 42 = %d; want 0", n)
		}
	})
}

func TestEmbeddedKeepsMessagesAcrossRestarts(t *testing.T) {
	srv := queuetest.StartServer(t)
	nc, js := queuetest.Connect(t, srv.URL())
	top := queue.Topology{}.WithDefaults()
	if err := queue.Ensure(context.Background(), js, top); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := js.Publish(context.Background(), top.Subject, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()
	srv.Restart(t)
	_, js = queuetest.Connect(t, srv.URL())
	if n := queuetest.StreamMsgs(t, js, top.Stream); n != 5 {
		t.Errorf("%d messages after restart; want 5", n)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	// Errors name the Go field at fault; the command line maps fields to its flags.
	check := func(t *testing.T, name string, err error, typ, field, problem string) {
		t.Helper()
		var ce *queue.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: err = %v; want a *queue.ConfigError", name, err)
			return
		}
		if ce.Type != typ || ce.Field != field || !strings.Contains(ce.Problem, problem) {
			t.Errorf("%s: err = %+v; want %s.%s with a problem mentioning %q", name, *ce, typ, field, problem)
		}
	}
	conn := []struct {
		name    string
		cfg     queue.ConnConfig
		field   string
		problem string
	}{
		{"no URL", queue.ConnConfig{}, "URL", "empty"},
		{"half a TLS pair", queue.ConnConfig{URL: "nats://x", TLSKey: "k"}, "TLSCert", "TLSKey"},
		{"a password without a user", queue.ConnConfig{URL: "nats://x", Password: "p"}, "Password", "User"},
		{"two kinds of auth", queue.ConnConfig{URL: "nats://x", Token: "t", User: "u"}, "CredsFile", "at most one"},
	}
	for _, c := range conn {
		check(t, c.name, c.cfg.Validate(), "ConnConfig", c.field, c.problem)
	}
	top := queue.Topology{}.WithDefaults()
	bad := []struct {
		name    string
		edit    func(*queue.Topology)
		field   string
		problem string
	}{
		{"a stream name with a dot", func(t *queue.Topology) { t.Stream = "a.b" }, "Stream", "not a valid name"},
		{"a wildcard subject", func(t *queue.Topology) { t.Subject = "a.*" }, "Subject", "wildcards"},
		{"a dead-letter subject inside the work subjects", func(t *queue.Topology) { t.DLQSubject = t.Subject + ".dlq" }, "DLQSubject", "overlaps"},
		{"a dead-letter subject inside the backfill subjects", func(t *queue.Topology) { t.DLQSubject = t.BackfillSubject + ".dlq" }, "DLQSubject", "backfill"},
		{"a backfill subject inside the live one", func(t *queue.Topology) { t.BackfillSubject = t.Subject + ".bf" }, "BackfillSubject", "overlaps"},
		{"a live subject inside the backfill one", func(t *queue.Topology) { t.Subject = t.BackfillSubject + ".live" }, "BackfillSubject", "overlaps"},
		{"one consumer for both lanes", func(t *queue.Topology) { t.BackfillConsumer = t.Consumer }, "BackfillConsumer", "live lane"},
		{"a sub-second AckWait", func(t *queue.Topology) { t.AckWait = time.Millisecond }, "AckWait", "under 1s"},
		{"six stream replicas", func(t *queue.Topology) { t.StreamReplicas = 6 }, "StreamReplicas", "from 1 to 5"},
	}
	for _, c := range bad {
		tt := top
		c.edit(&tt)
		check(t, c.name, tt.Validate(), "Topology", c.field, c.problem)
	}
	if err := top.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestConnConfigRedactsSecrets(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("nats", "cfg", queue.ConnConfig{URL: "nats://u2:pw-in-url@x", User: "u", Password: "hunter2", Token: "tok-123"})
	if strings.Contains(buf.String(), "hunter2") || strings.Contains(buf.String(), "tok-123") || strings.Contains(buf.String(), "pw-in-url") {
		t.Errorf("log line shows a secret: %s", buf.String())
	}
}

func TestRedactURLsHidesCredentialsInEveryForm(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                  "nats://127.0.0.1:4222",
		"nats://tok@h:4222":                      "nats://h:4222",
		"nats://u:p%zz@h:4222":                   "nats://h:4222",
		"user:s3cret@127.0.0.1:4222":             "127.0.0.1:4222",
		"nats://a:b@h1:4222, tls://c:d@@h2:4222": "nats://h1:4222,tls://h2:4222",
	} {
		if got := queue.RedactURLs(in); got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}
