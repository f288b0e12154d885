package worker_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// ackLog is the work consumer, recording the stream sequence of every acknowledgement.
type ackLog struct {
	jetstream.Consumer
	mu   sync.Mutex
	seqs []uint64
}

type ackLogBatch struct {
	jetstream.MessageBatch
	ch chan jetstream.Msg
}

func (b ackLogBatch) Messages() <-chan jetstream.Msg { return b.ch }

type ackLogMsg struct {
	jetstream.Msg
	l *ackLog
}

func (m ackLogMsg) record() {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	m.l.mu.Lock()
	m.l.seqs = append(m.l.seqs, md.Sequence.Stream)
	m.l.mu.Unlock()
}

func (m ackLogMsg) Ack() error {
	err := m.Msg.Ack()
	if err == nil {
		m.record()
	}
	return err
}

func (m ackLogMsg) DoubleAck(ctx context.Context) error {
	err := m.Msg.DoubleAck(ctx)
	if err == nil {
		m.record()
	}
	return err
}

func (l *ackLog) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	b, err := l.Consumer.Fetch(n, opts...)
	if err != nil {
		return nil, err
	}
	ch := make(chan jetstream.Msg)
	go func() {
		defer close(ch)
		for m := range b.Messages() {
			ch <- ackLogMsg{m, l}
		}
	}()
	return ackLogBatch{b, ch}, nil
}

func (l *ackLog) acked() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.seqs...)
}

// coalescing is a pool with --coalesce live and one worker, whose first request (to
// conversation 0, the blocker) waits until the test released it: meanwhile the updates
// published after it are all held, queued behind their conversation's head.
type coalescing struct {
	*fixture
	acks    *ackLog
	metrics *worker.Metrics
	release chan struct{}
}

func setupCoalescing(t *testing.T) *coalescing {
	t.Helper()
	s := &coalescing{release: make(chan struct{})}
	cfg := worker.Config{Concurrency: 1, OutageThreshold: -1, Coalesce: worker.CoalesceLanes{Live: true}}
	s.fixture = setup(t, options{noStart: true})
	s.metrics = worker.NewMetrics(prometheus.NewRegistry())
	var once sync.Once
	s.start(options{cfg: cfg, recover: true,
		wrap: func(u updaterFunc) updaterFunc {
			return func(ctx context.Context, up kustomer.Update) (*kustomer.Result, error) {
				if up.ID == id(0) {
					once.Do(func() {
						select {
						case <-s.release:
						case <-ctx.Done():
						}
					})
				}
				return u(ctx, up)
			}
		},
		consumer: func(c jetstream.Consumer) jetstream.Consumer { s.acks = &ackLog{Consumer: c}; return s.acks },
		before:   func(p *worker.Pool) { p.Metrics = s.metrics },
	})
	s.publishUpdate(0, `{"name":"blocker"}`)
	return s
}

// queue publishes bodies as updates of conversation 1 and waits until the pool holds them
// all; then lets the blocker go. It returns their stream sequences.
func (s *coalescing) queue(bodies ...string) []uint64 {
	s.t.Helper()
	for _, b := range bodies {
		s.publishUpdate(1, b)
	}
	want := 1 + len(bodies)
	testwait.Until(s.t, "the pool to hold every update", 30*time.Second, func() bool {
		return testutil.ToFloat64(s.metrics.Held) == float64(want)
	})
	close(s.release)
	seqs := make([]uint64, len(bodies))
	for i := range seqs {
		seqs[i] = uint64(i + 2) // the blocker is 1
	}
	return seqs
}

func (s *coalescing) requestsFor1() []kustomertest.Request { return s.fake.RequestsFor(id(1)) }

func TestCoalesce(t *testing.T) {
	t.Run("queued partial updates of a conversation go as one PUT, acknowledged in stream order", func(t *testing.T) {
		s := setupCoalescing(t)
		seqs := s.queue(`{"status":"open","tags":["a"]}`, `{"status":"snoozed","priority":2}`, `{"status":"done","assignedUsers":["u1"]}`)
		s.waitDrained(30 * time.Second)
		reqs := s.requestsFor1()
		if len(reqs) != 1 {
			t.Fatalf("%d requests for the conversation; want 1 merged PUT", len(reqs))
		}
		c, _ := s.fake.Conversation(id(1))
		want := map[string]any{"status": "done", "tags": []any{"a"}, "priority": float64(2), "assignedUsers": []any{"u1"}}
		for k, v := range want {
			if b, _ := json.Marshal(c.Attributes[k]); string(b) != mustJSON(v) {
				t.Errorf("%s = %s; want %s", k, b, mustJSON(v))
			}
		}
		var mine []uint64
		for _, seq := range s.acks.acked() {
			if seq >= seqs[0] {
				mine = append(mine, seq)
			}
		}
		if !equalSeqs(mine, seqs) {
			t.Errorf("acknowledged %v; want %v, once each, in stream order", mine, seqs)
		}
		if got := testutil.ToFloat64(s.metrics.Coalesced); got != 2 {
			t.Errorf("coalesced_messages_total %v; want 2", got)
		}
		if got := testutil.ToFloat64(s.metrics.CoalesceSaved); got != 2 {
			t.Errorf("coalesce_units_saved_total %v; want 2", got)
		}
		if got := testutil.ToFloat64(s.metrics.Updates.WithLabelValues("applied")); got != 4 {
			t.Errorf("updates_total{applied} %v; want 4 (the blocker and three merged)", got)
		}
		if n := len(s.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("a merged PUT rejected with 422 before any ambiguous try is split: the bad update is dead-lettered alone", func(t *testing.T) {
		s := setupCoalescing(t)
		// The merged PUT: 422; then each alone: the first applies, the second 422, the third applies.
		s.fake.Script(id(1), kustomertest.Status(422), kustomertest.Answer{}, kustomertest.Status(422), kustomertest.Answer{})
		seqs := s.queue(`{"name":"one"}`, `{"status":"snoozed"}`, `{"priority":3}`)
		s.waitDrained(30 * time.Second)
		if n := len(s.requestsFor1()); n != 4 {
			t.Errorf("%d requests; want 4 (the merged one, then each alone)", n)
		}
		dls := s.deadLetters()
		if len(dls) != 1 || dls[0].header.Get(queue.HeaderOriginalSequence) != strconv.FormatUint(seqs[1], 10) {
			t.Fatalf("dead letters %+v; want the second update's alone", dls)
		}
		if g := dls[0].header.Get(queue.HeaderGroup); g != "" {
			t.Errorf("a split update's dead letter names group %q; want none", g)
		}
		c, _ := s.fake.Conversation(id(1))
		if c.Attributes["name"] != "one" || c.Attributes["priority"] != float64(3) {
			t.Errorf("conversation %v; want name one and priority 3 applied", c.Attributes)
		}
	})

	t.Run("a merged PUT that failed with a 503 is retried whole, its retries counted per message", func(t *testing.T) {
		s := setupCoalescing(t)
		s.fake.Script(id(1), kustomertest.Status(503))
		s.queue(`{"name":"one"}`, `{"status":"done"}`, `{"priority":3}`)
		s.waitDrained(30 * time.Second)
		reqs := s.requestsFor1()
		if len(reqs) != 2 {
			t.Fatalf("%d requests; want 2 (the merged PUT and its retry)", len(reqs))
		}
		c, _ := s.fake.Conversation(id(1))
		if c.Attributes["name"] != "one" || c.Attributes["status"] != "done" || c.Attributes["priority"] != float64(3) {
			t.Errorf("conversation %v; want all three updates applied", c.Attributes)
		}
		if got := testutil.ToFloat64(s.metrics.Retries.WithLabelValues("transient")); got != 3 {
			t.Errorf("retries_total{transient} %v; want 3, one per message", got)
		}
		if n := len(s.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	for _, tc := range []struct {
		name    string
		script  []kustomertest.Answer
		status  string
		request int
	}{
		{"after an ambiguous try (a 503) a 400 is not split: every update is dead-lettered naming the group",
			[]kustomertest.Answer{kustomertest.Status(503), kustomertest.Status(400)}, "400", 2},
		{"a 404 dead-letters every update of the merged PUT, naming the group",
			[]kustomertest.Answer{kustomertest.Status(404)}, "404", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := setupCoalescing(t)
			s.fake.Script(id(1), tc.script...)
			seqs := s.queue(`{"name":"one"}`, `{"status":"done"}`, `{"priority":3}`)
			s.waitDrained(30 * time.Second)
			if n := len(s.requestsFor1()); n != tc.request {
				t.Errorf("%d requests; want %d", n, tc.request)
			}
			dls := s.deadLetters()
			if len(dls) != len(seqs) {
				t.Fatalf("%d dead letters; want %d", len(dls), len(seqs))
			}
			group := make([]string, len(seqs))
			for i, seq := range seqs {
				group[i] = strconv.FormatUint(seq, 10)
			}
			for i, dl := range dls {
				if got := dl.header.Get(queue.HeaderOriginalSequence); got != group[i] {
					t.Errorf("dead letter %d is of message %s; want %s (stream order)", i, got, group[i])
				}
				if got := dl.header.Get(queue.HeaderGroup); got != strings.Join(group, ",") {
					t.Errorf("dead letter %d names group %q; want %q", i, got, strings.Join(group, ","))
				}
				if got := dl.header.Get(queue.HeaderStatus); got != tc.status {
					t.Errorf("dead letter %d status %s; want %s", i, got, tc.status)
				}
			}
			if got := testutil.ToFloat64(s.metrics.DeadLetters.WithLabelValues(string(queue.ClassRejected))); got != 3 {
				t.Errorf("dead_letters_total{rejected} %v; want 3", got)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
