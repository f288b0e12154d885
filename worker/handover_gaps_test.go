package worker_test

import (
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// roleQueue is a memQueue whose consumer has a role (worker.Role) the test switches, and
// which counts the messages handed back (Nak). A standby's pulls get nothing, as from a
// pinned group, unless standbyPulls (a pull in flight when the pin moved).
type roleQueue struct {
	*memQueue
	standbyPulls bool
	mu           sync.Mutex
	lost         chan struct{}
	gained       chan struct{}
	naks         atomic.Int32
}

func newRoleQueue(q *memQueue) *roleQueue {
	gained := make(chan struct{})
	close(gained)
	return &roleQueue{memQueue: q, lost: make(chan struct{}), gained: gained}
}

func (r *roleQueue) Lost() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost
}

func (r *roleQueue) Gained() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gained
}

// lose makes this replica a standby.
func (r *roleQueue) lose() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.lost)
	r.gained = make(chan struct{})
}

// redeliver puts message seq back in the queue, delivered once more, as JetStream does with a
// message whose acknowledgement was lost.
func (r *roleQueue) redeliver(seq uint64, data []byte, delivered uint64) {
	r.memQueue.mu.Lock()
	defer r.memQueue.mu.Unlock()
	r.pending = append(r.pending, &memMsg{q: r.memQueue, seq: seq, delivered: delivered, data: data})
}

func (r *roleQueue) acks(seq uint64) int {
	r.memQueue.mu.Lock()
	defer r.memQueue.mu.Unlock()
	return r.acked[seq]
}

type countingMsg struct {
	*memMsg
	naks *atomic.Int32
}

func (m countingMsg) Nak() error {
	m.naks.Add(1)
	return m.memMsg.Nak()
}

func (r *roleQueue) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	if !r.standbyPulls && isClosed(r.Lost()) {
		time.Sleep(2 * time.Millisecond) // a pull that found nothing waits a little
		ch := make(chan jetstream.Msg)
		close(ch)
		return memBatch{ch}, nil
	}
	b, err := r.memQueue.Fetch(n, opts...)
	if err != nil {
		return nil, err
	}
	ch := make(chan jetstream.Msg, n)
	for m := range b.Messages() {
		ch <- countingMsg{m.(*memMsg), &r.naks}
	}
	close(ch)
	return memBatch{ch}, nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

var _ worker.Role = (*roleQueue)(nil)

// A standby that gets a redelivery of an update it applied itself (its acknowledgement was
// lost) acknowledges it again rather than handing it back: handed back, the active replica
// would apply the old update again, maybe after a newer one.
func TestHandoverStandbyAcksARedeliveryItApplied(t *testing.T) {
	t.Parallel()
	q, seq := memBacklog(1, 1)
	data := q.pending[0].data
	rq := newRoleQueue(q)
	rq.standbyPulls = true
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	pool := &worker.Pool{
		Consumer: rq, Client: bodyN{up}, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log:    slog.New(slog.DiscardHandler),
		Config: worker.Config{Concurrency: 2, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond},
	}
	runInBackground(t, pool)
	testwait.Until(t, "the update applied and acknowledged while active", 10*time.Second, func() bool { return rq.acks(seq) == 1 })

	rq.lose()
	rq.redeliver(seq, data, 2)
	testwait.Until(t, "the redelivery settled", 10*time.Second, func() bool { return rq.acks(seq) == 2 || rq.naks.Load() > 0 })
	if n := rq.naks.Load(); n > 0 {
		t.Fatalf("the standby handed back (%d times) a redelivery of an update it applied; want it acknowledged again", n)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if got := up.applied[id(0)]; len(got) != 1 {
		t.Fatalf("updates applied %v; want the one once", got)
	}
}

// A conversation that a bulk job's fence holds back (an older update of it may still be
// applied late by the job) is at rest: when this replica becomes a standby, its head is
// handed back at once, as a parked one is, rather than held here (and kept in progress) until
// the fence ends, long after the new active replica gave up waiting for it and applied newer
// updates of the conversation.
func TestHandoverHandsBackAConversationHeldByABulkFence(t *testing.T) {
	t.Parallel()
	q, _ := memBacklog(1, 2) // update 0 (seq 1), then update 1 (seq 2), of one conversation
	rq := newRoleQueue(q)
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	// The first job's submit panics: its item goes as a single PUT, and the conversation's
	// newer update is fenced until the job's deadline, as after a submit with no answer.
	bc := &panicBulk{memBulk: &memBulk{t: t, f: up, rnd: rand.New(rand.NewPCG(3, 4)), jobs: map[string]*memJob{}}}
	logs := &syncBuffer{}
	pool := &worker.Pool{
		Consumer: rq, Client: bodyN{up}, BulkClient: bc, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Config: worker.Config{Concurrency: 2, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond,
			MaxAckPending: 10, Bulk: bulk.Config{Enabled: true, Size: 10, Min: 1, Linger: 20 * time.Millisecond,
				Deadline: time.Minute}},
	}
	runInBackground(t, pool)
	testwait.Until(t, "update 0 applied and update 1 held by the fence", 10*time.Second, func() bool {
		return rq.acks(1) == 1 && strings.Contains(logs.String(), "holding an update until an older bulk job")
	})
	if n := rq.naks.Load(); n != 0 {
		t.Fatalf("%d messages handed back while active", n)
	}

	rq.lose()
	if !testwait.Within(5*time.Second, func() bool { return rq.naks.Load() > 0 }) {
		t.Fatal("the fenced update is still held after the pin was lost; want it handed back at once (the fence lasts a minute)")
	}
	if n := rq.acks(2); n != 0 {
		t.Fatalf("update 1 acknowledged %d times by the standby; want it handed back", n)
	}
}
