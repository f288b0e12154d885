package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// memQueue is an in-memory stand-in for a JetStream consumer on a work-queue stream, through
// the pool's Consumer seam: it delivers in sequence order, takes acks, and redelivers naks.
type memQueue struct {
	mu      sync.Mutex
	pending []*memMsg
	acked   map[uint64]int // acks per sequence
}

type memMsg struct {
	jetstream.Msg // only the methods below are used
	q             *memQueue
	seq           uint64
	delivered     uint64
	data          []byte
}

func (m *memMsg) Data() []byte         { return m.data }
func (m *memMsg) Subject() string      { return "kustomer.conversations.update" }
func (m *memMsg) Headers() nats.Header { return nats.Header{} }
func (m *memMsg) InProgress() error    { return nil }
func (m *memMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}, NumDelivered: m.delivered, Stream: "MEM"}, nil
}
func (m *memMsg) Ack() error {
	m.q.mu.Lock()
	defer m.q.mu.Unlock()
	m.q.acked[m.seq]++
	return nil
}
func (m *memMsg) DoubleAck(context.Context) error { return m.Ack() }
func (m *memMsg) Nak() error {
	m.q.mu.Lock()
	defer m.q.mu.Unlock()
	m.q.pending = append(m.q.pending, &memMsg{q: m.q, seq: m.seq, delivered: m.delivered + 1, data: m.data})
	return nil
}

type memBatch struct{ ch chan jetstream.Msg }

func (b memBatch) Messages() <-chan jetstream.Msg { return b.ch }
func (b memBatch) Error() error                   { return nil }

func (q *memQueue) Fetch(n int, _ ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	q.mu.Lock()
	k := min(n, len(q.pending))
	out := q.pending[:k]
	q.pending = q.pending[k:]
	q.mu.Unlock()
	if k == 0 {
		time.Sleep(2 * time.Millisecond) // a pull that found nothing waits a little
	}
	ch := make(chan jetstream.Msg, k)
	for _, m := range out {
		ch <- m
	}
	close(ch)
	return memBatch{ch}, nil
}

func (q *memQueue) CachedInfo() *jetstream.ConsumerInfo {
	return &jetstream.ConsumerInfo{Config: jetstream.ConsumerConfig{AckWait: 30 * time.Second, MaxDeliver: 100}}
}

func (q *memQueue) Info(context.Context) (*jetstream.ConsumerInfo, error) { return q.CachedInfo(), nil }

func (q *memQueue) done(n int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.acked) == n
}

// flaky applies updates in memory and fails a share of requests with a 503.
type flaky struct {
	mu      sync.Mutex
	rnd     *rand.Rand
	applied map[string][]int // the "n" of each update applied, per conversation, in order
}

func (f *flaky) UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rnd.IntN(4) == 0 {
		return nil, &kustomer.APIError{Status: 503, Class: kustomer.ClassTransient, Reason: "unavailable", RateLimit: kustomer.RateLimit{Limit: -1, Remaining: -1}}
	}
	var b struct{ N int }
	if err := json.Unmarshal(u.Body, &b); err != nil {
		return nil, err
	}
	f.applied[u.ID] = append(f.applied[u.ID], b.N)
	return &kustomer.Result{Status: 200, RateLimit: kustomer.RateLimit{Limit: -1, Remaining: -1}}, nil
}

type noDeadLetters struct{ t *testing.T }

func (d noDeadLetters) Publish(_ context.Context, m jetstream.Msg, f queue.Failure) error {
	d.t.Errorf("dead letter for %s: %s", m.Data(), f.Reason)
	return nil
}

// memBacklog is a queue of updates to convs conversations, updates each, in turns: update n
// of every conversation, then n+1; each body's custom.nNum is its n. It returns the last
// sequence.
func memBacklog(convs, updates int) (*memQueue, uint64) {
	q := &memQueue{acked: map[uint64]int{}}
	seq := uint64(0)
	for n := range updates {
		for c := range convs {
			seq++
			q.pending = append(q.pending, &memMsg{q: q, seq: seq, delivered: 1,
				data: fmt.Appendf(nil, `{"id":%q,"body":{"name":"x","custom":{"nNum":%d}}}`, id(c), n)})
		}
	}
	return q, seq
}

// The per-conversation order promise, through the seams alone: no NATS server, no HTTP.
func TestOrderWithoutABroker(t *testing.T) {
	t.Parallel()
	const convs, updates = 50, 8
	q, seq := memBacklog(convs, updates)
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	pool := &worker.Pool{
		Consumer: q, Client: bodyN{up}, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log:    slog.New(slog.DiscardHandler),
		Config: worker.Config{Concurrency: 16, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond},
	}
	runUntilAcked(t, pool, q, seq, 30*time.Second)
	wantEachOnceInOrder(t, q, up, seq, convs, updates)
}

// runUntilAcked runs pool until q has acknowledged messages 1..seq, then stops it.
func runUntilAcked(t *testing.T, pool *worker.Pool, q *memQueue, seq uint64, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- pool.Run(ctx) }()
	testwait.Until(t, "every message acknowledged", timeout, func() bool { return q.done(int(seq)) })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// runInBackground runs pool until the test ends, then stops it and checks what Run returned.
func runInBackground(t *testing.T, pool *worker.Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := testwait.Recv(t, "Run to return", 30*time.Second, done); err != nil {
			t.Error(err)
		}
	})
}

// wantEachOnceInOrder checks that each of messages 1..seq was acknowledged once and that each
// of convs conversations got its updates updates applied in stream order.
func wantEachOnceInOrder(t *testing.T, q *memQueue, up *flaky, seq uint64, convs, updates int) {
	t.Helper()
	for s := uint64(1); s <= seq; s++ {
		if q.acked[s] != 1 {
			t.Fatalf("message %d acked %d times; want once", s, q.acked[s])
		}
	}
	for c := range convs {
		got := up.applied[id(c)]
		if len(got) != updates {
			t.Fatalf("conversation %d: %d updates applied; want %d: %v", c, len(got), updates, got)
		}
		for i, n := range got {
			if n != i {
				t.Fatalf("conversation %d: updates applied in order %v; want stream order", c, got)
			}
		}
	}
}

// bodyN reads the update's number from custom.nNum, where the message put it.
type bodyN struct{ f *flaky }

func (b bodyN) UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
	var body struct {
		Custom struct{ NNum int } `json:"custom"`
	}
	if err := json.Unmarshal(u.Body, &body); err != nil {
		return nil, err
	}
	u.Body = fmt.Appendf(nil, `{"n":%d}`, body.Custom.NNum)
	return b.f.UpdateConversation(ctx, u)
}
