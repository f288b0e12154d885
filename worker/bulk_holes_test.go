package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// The cases the bulk contract leaves open, through the seams alone: jobs that Kustomer
// applies late (memBulk's delay), answers that say less than they seem to.

// memBulkSetup is a backlog of convs conversations with updates each, a single-PUT client and a
// bulk client, and a pool in bulk mode over them (Budget: unlimited unless set later).
type memBulkSetup struct {
	q    *memQueue
	seq  uint64
	up   *flaky
	bc   *memBulk
	pool *worker.Pool
}

func setupBulk(t *testing.T, convs, updates int, cfg bulk.Config) *memBulkSetup {
	t.Helper()
	q, seq := memBacklog(convs, updates)
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	bc := &memBulk{t: t, f: up, rnd: rand.New(rand.NewPCG(3, 4)), jobs: map[string]*memJob{}}
	t.Cleanup(bc.stop)
	cfg.Enabled = true
	if cfg.Deadline == 0 {
		cfg.Deadline = bulk.MinDeadline
	}
	pool := &worker.Pool{
		Consumer: q, Client: bodyN{up}, BulkClient: bc, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log: slog.New(slog.DiscardHandler),
		Config: worker.Config{Concurrency: 4, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond,
			MaxAckPending: 100, Bulk: cfg},
	}
	return &memBulkSetup{q: q, seq: seq, up: up, bc: bc, pool: pool}
}

// untilJobsApplied waits until every job submitted has been applied: an old update a late
// job applies shows only then.
func (s *memBulkSetup) untilJobsApplied(t *testing.T) {
	t.Helper()
	testwait.Until(t, "every bulk job applied", 30*time.Second, s.bc.allApplied)
}

// wantNoneStale checks that every conversation ended at its newest update: whatever was
// applied twice, nothing older was applied after it.
func wantNoneStale(t *testing.T, up *flaky, convs, updates int) {
	t.Helper()
	up.mu.Lock()
	defer up.mu.Unlock()
	stale := 0
	for c := range convs {
		got := up.applied[id(c)]
		if len(got) == 0 || got[len(got)-1] != updates-1 {
			stale++
			t.Logf("conversation %d: applied %v", c, got)
		}
	}
	if stale > 0 {
		t.Errorf("%d of %d conversations ended at an older update; want 0", stale, convs)
	}
}

// holdSecond is an unlimited budget that holds the second request of a class other than
// bulk reads until release is closed.
type holdSecond struct {
	worker.Budget
	n       atomic.Int32
	release chan struct{}
}

func (h *holdSecond) Wait(ctx context.Context, class pacer.Priority) error {
	if class != pacer.BulkRead && h.n.Add(1) == 2 {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h.Budget.Wait(ctx, class)
}

// A job that waits for budget when reads are refused is never submitted: its items go as
// single PUTs, each applied once.
func TestBulkReadsRefusedWhileAJobWaits(t *testing.T) {
	t.Parallel()
	s := setupBulk(t, 20, 1, bulk.Config{Size: 10, Min: 10, Linger: 20 * time.Millisecond})
	s.bc.delay = func(int) time.Duration { return time.Hour } // never applied: only singles apply
	s.bc.readErr = func(int) error {
		return &kustomer.APIError{Op: kustomer.OpReadBulkBatches, Status: 403, Class: kustomer.ClassAuth, Reason: "role", RateLimit: unlimited}
	}
	budget := &holdSecond{Budget: pacer.New(-1), release: make(chan struct{})}
	s.pool.Pacer = budget
	go func() {
		// The first job's read was refused once one of its items went as a single PUT.
		if testwait.Within(30*time.Second, func() bool {
			s.up.mu.Lock()
			defer s.up.mu.Unlock()
			return len(s.up.applied) > 0
		}) {
			close(budget.release)
		}
	}()
	runUntilAcked(t, s.pool, s.q, s.seq, 60*time.Second)
	wantEachOnceInOrder(t, s.q, s.up, s.seq, 20, 1)
	s.bc.mu.Lock()
	defer s.bc.mu.Unlock()
	if s.bc.submits != 1 {
		t.Errorf("%d submits; want 1: the job waiting for budget when reads were refused went out", s.bc.submits)
	}
}

// A read answered 404 right after the submit's 201 (Kustomer not showing the job yet) does
// not make the job lost: its updates are not re-sent under a job that applies them later.
func TestBulkJobNotFoundRightAfterItsSubmit(t *testing.T) {
	t.Parallel()
	const convs, updates = 10, 2
	s := setupBulk(t, convs, updates, bulk.Config{Size: 10, Min: 10, Linger: 20 * time.Millisecond})
	s.bc.delay = func(n int) time.Duration {
		if n == 1 {
			return 4 * time.Second // applied late, but before the deadline
		}
		return 100 * time.Millisecond
	}
	s.bc.readErr = func(n int) error {
		if n > 1 {
			return nil
		}
		return &kustomer.APIError{Op: kustomer.OpReadBulkBatches, Status: 404, Class: kustomer.ClassPermanent, Reason: "not found", RateLimit: unlimited}
	}
	runUntilAcked(t, s.pool, s.q, s.seq, 60*time.Second)
	s.untilJobsApplied(t)
	wantNoneStale(t, s.up, convs, updates)
}

// A submit answered with a 5xx may have created a job all the same: the conversations'
// newer updates wait for it as for a submit whose answer was lost.
func TestBulkSubmitAnswered5xx(t *testing.T) {
	t.Parallel()
	for _, status := range []int{500, 502, 503, 504} {
		t.Run(fmt.Sprint("submit answered ", status), func(t *testing.T) {
			t.Parallel()
			const convs, updates = 10, 2
			s := setupBulk(t, convs, updates, bulk.Config{Size: 10, Min: 10, Linger: 20 * time.Millisecond})
			s.bc.delay = func(n int) time.Duration {
				if n == 1 {
					return 3 * time.Second // the job the 5xx hid, applied late but before the deadline
				}
				return 100 * time.Millisecond
			}
			s.bc.submitErr = func(n int) error {
				if n > 1 {
					return nil
				}
				return &kustomer.APIError{Op: kustomer.OpSubmitBulk, Status: status, Class: kustomer.ClassTransient, Reason: "gateway", RateLimit: unlimited}
			}
			runUntilAcked(t, s.pool, s.q, s.seq, 60*time.Second)
			s.untilJobsApplied(t)
			wantNoneStale(t, s.up, convs, updates)
		})
	}
}

// nilBulk answers its first submit with neither a job nor an error, as a buggy BulkClient
// might: reading the job id panics while the bulker holds its lock.
type nilBulk struct {
	*memBulk
	once sync.Once
}

func (n *nilBulk) SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (job *kustomer.BulkJob, err error) {
	first := false
	n.once.Do(func() { first = true })
	if first {
		return nil, nil
	}
	return n.memBulk.SubmitBulk(ctx, items)
}

// A panic on a job's goroutine while the bulker holds its lock does not block the bulker:
// the job's items go as single PUTs, and the jobs after it go on.
func TestBulkPanicUnderTheBulkersLock(t *testing.T) {
	t.Parallel()
	const convs = 30
	s := setupBulk(t, convs, 1, bulk.Config{Size: 10, Min: 10, Linger: 20 * time.Millisecond})
	s.pool.BulkClient = &nilBulk{memBulk: s.bc}
	runUntilAcked(t, s.pool, s.q, s.seq, 20*time.Second)
	wantEachOnceInOrder(t, s.q, s.up, s.seq, convs, 1)
}

// blockedAck holds the first confirmed acknowledgement (DoubleAck) of any message until
// release is closed, and then reports it failed, as when JetStream's reply is slow and then
// lost: the update is applied, its acknowledgement pending.
type blockedAck struct {
	*roleQueue
	calls   atomic.Int32
	release chan struct{}
}

type blockedAckMsg struct {
	countingMsg
	b *blockedAck
}

func (m blockedAckMsg) DoubleAck(ctx context.Context) error {
	if m.b.calls.Add(1) == 1 {
		select {
		case <-m.b.release:
		case <-ctx.Done():
		}
		return errors.New("acknowledgement not confirmed")
	}
	return m.countingMsg.DoubleAck(ctx)
}

func (b *blockedAck) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	batch, err := b.roleQueue.Fetch(n, opts...)
	if err != nil {
		return nil, err
	}
	ch := make(chan jetstream.Msg, n)
	for m := range batch.Messages() {
		ch <- blockedAckMsg{m.(countingMsg), b}
	}
	close(ch)
	return memBatch{ch}, nil
}

// A standby that gets a redelivery of an update a bulk job applied here, whose
// acknowledgement is still pending, keeps it and acknowledges it rather than handing it
// back: handed back, the active replica would apply the old update again.
func TestHandoverStandbyKeepsARedeliveryAppliedInAJob(t *testing.T) {
	t.Parallel()
	s := setupBulk(t, 1, 1, bulk.Config{Size: 10, Min: 1, Linger: 20 * time.Millisecond})
	data := s.q.pending[0].data
	rq := newRoleQueue(s.q)
	rq.standbyPulls = true
	bq := &blockedAck{roleQueue: rq, release: make(chan struct{})}
	s.pool.Consumer = bq
	runInBackground(t, s.pool)
	testwait.Until(t, "the job applied the update and its acknowledgement waits", 10*time.Second, func() bool { return bq.calls.Load() == 1 })

	rq.lose()
	rq.redeliver(s.seq, data, 2)
	testwait.Until(t, "the redelivery pulled", 10*time.Second, func() bool {
		s.q.mu.Lock()
		defer s.q.mu.Unlock()
		return len(s.q.pending) == 0 || rq.naks.Load() > 0
	})
	close(bq.release)
	testwait.Until(t, "the update acknowledged or handed back", 10*time.Second, func() bool { return rq.acks(s.seq) > 0 || rq.naks.Load() > 0 })
	if n := rq.naks.Load(); n > 0 {
		t.Fatalf("the standby handed back (%d times) a redelivery of an update a job applied here; want it acknowledged", n)
	}
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	if got := s.up.applied[id(0)]; len(got) != 1 {
		t.Fatalf("updates applied %v; want the one once", got)
	}
}

// A job too large for Kustomer (413) is split, not sent as single PUTs: every update still
// goes in bulk, in jobs Kustomer takes.
func TestBulkJobTooLargeIsSplit(t *testing.T) {
	t.Parallel()
	const convs = 40
	s := setupBulk(t, convs, 1, bulk.Config{Size: convs, Min: 2, Linger: 20 * time.Millisecond})
	body := len(s.q.pending[0].data) // a little more than the update's body
	s.bc.maxBytes = 10 * body
	runUntilAcked(t, s.pool, s.q, s.seq, 60*time.Second)
	s.bc.mu.Lock()
	defer s.bc.mu.Unlock()
	sum := 0
	for _, n := range s.bc.sizes {
		sum += n
	}
	if sum != convs {
		t.Errorf("%d updates went in jobs (sizes %v); want all %d", sum, s.bc.sizes, convs)
	}
}

// A job holds at most MaxBytes of update bodies.
func TestBulkJobBytesCapped(t *testing.T) {
	t.Parallel()
	const convs = 40
	s := setupBulk(t, convs, 1, bulk.Config{Size: convs, Min: 2, Linger: 20 * time.Millisecond})
	s.pool.Config.Bulk.MaxBytes = 500
	runUntilAcked(t, s.pool, s.q, s.seq, 60*time.Second)
	s.bc.mu.Lock()
	defer s.bc.mu.Unlock()
	if len(s.bc.bytes) < 2 {
		t.Errorf("jobs of %v bytes; want the updates split over several", s.bc.bytes)
	}
	for _, n := range s.bc.bytes {
		if n > 500 {
			t.Errorf("a job of %d bytes of bodies; want at most 500", n)
		}
	}
}
