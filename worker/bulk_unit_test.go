package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// memBulk runs bulk jobs in memory, and a share of its items fail. By default a job is
// applied when read (a third of them only at their second read); with delay, the job of the
// nth submit (counted from 1) is applied delay(n) after its submit, on its own clock, read or
// not, and reads before then find it queued. Applied items land in the same record as
// flaky's single PUTs, so that order holds across both. submitErr and readErr, when set,
// script answers: submitErr(n) replaces the answer to the nth submit once its job was made
// (Kustomer created it, the worker hears an error); readErr(n) answers the nth read of a job
// instead; nil goes on as usual. A submit of more than maxBytes bytes of bodies (0: no
// limit) is answered 413, and makes no job.
type memBulk struct {
	t         *testing.T
	f         *flaky
	maxBytes  int
	delay     func(n int) time.Duration
	submitErr func(n int) error
	readErr   func(n int) error
	mu        sync.Mutex
	rnd       *rand.Rand
	jobs      map[string]*memJob
	sizes     []int
	bytes     []int // of each job, its items' bodies
	submits   int
	timers    []*time.Timer
}

type memJob struct {
	items   []kustomer.BulkItem
	reads   int
	results []kustomer.BulkResult
	done    time.Time
}

var unlimited = kustomer.RateLimit{Limit: -1, Remaining: -1}

func (m *memBulk) SubmitBulk(_ context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.submits++
	size := 0
	for _, it := range items {
		size += len(it.Update.Body)
	}
	if m.maxBytes > 0 && size > m.maxBytes {
		return nil, &kustomer.APIError{Op: kustomer.OpSubmitBulk, Status: 413, Class: kustomer.ClassPermanent, Reason: "request entity too large", RateLimit: unlimited}
	}
	seen := map[string]bool{}
	for _, it := range items {
		if seen[it.Update.ID] {
			m.t.Errorf("conversation %s twice in one job", it.Update.ID)
		}
		seen[it.Update.ID] = true
	}
	id := fmt.Sprint(len(m.jobs) + 1)
	j := &memJob{items: slices.Clone(items)}
	m.jobs[id] = j
	m.sizes = append(m.sizes, len(items))
	m.bytes = append(m.bytes, size)
	if m.delay != nil {
		m.timers = append(m.timers, time.AfterFunc(m.delay(m.submits), func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.apply(j)
		}))
	}
	if m.submitErr != nil {
		if err := m.submitErr(m.submits); err != nil {
			return nil, err
		}
	}
	return &kustomer.BulkJob{ID: id, Status: 201, RateLimit: unlimited}, nil
}

// stop stops the timers of jobs not applied yet.
func (m *memBulk) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.timers {
		t.Stop()
	}
}

// allApplied reports whether every job submitted so far has been applied.
func (m *memBulk) allApplied() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, j := range m.jobs {
		if j.results == nil {
			return false
		}
	}
	return true
}

func (m *memBulk) ReadBulkBatches(_ context.Context, id string) (*kustomer.BulkBatches, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	j.reads++
	if m.readErr != nil {
		if err := m.readErr(j.reads); err != nil {
			return nil, err
		}
	}
	queued := &kustomer.BulkBatches{JobID: id, RateLimit: unlimited,
		Batches: []kustomer.BulkBatch{{State: "queued", SuccessCount: -1, FailureCount: -1}}}
	switch {
	case m.delay != nil && j.results == nil:
		return queued, nil
	case m.delay == nil && j.reads == 1 && m.rnd.IntN(3) == 0:
		return queued, nil
	}
	m.apply(j)
	return &kustomer.BulkBatches{JobID: id, RateLimit: unlimited, Batches: []kustomer.BulkBatch{{
		State: "complete", CompletedAt: j.done, SuccessCount: -1, FailureCount: -1, Results: j.results}}}, nil
}

// ReadBulkJob says whether the job was applied: one batch, done once applied.
func (m *memBulk) ReadBulkJob(_ context.Context, id string) (*kustomer.BulkJob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	done := m.jobs[id].results != nil
	return &kustomer.BulkJob{ID: id, Completed: done, BatchesComplete: min(len(m.jobs[id].results), 1), BatchesTotal: 1,
		Status: 200, RateLimit: unlimited}, nil
}

// apply applies j's items once, failing a share of them; m.mu is held.
func (m *memBulk) apply(j *memJob) {
	if j.results != nil {
		return
	}
	j.done = time.Now()
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	for _, it := range j.items {
		r := kustomer.BulkResult{Ref: it.Ref, ObjectID: it.Update.ID, Status: "updated"}
		if m.rnd.IntN(5) == 0 {
			r.Status, r.Error = "error", "injected"
		} else {
			var body struct {
				Custom struct{ NNum int } `json:"custom"`
			}
			if err := json.Unmarshal(it.Update.Body, &body); err != nil {
				m.t.Error(err)
			}
			m.f.applied[it.Update.ID] = append(m.f.applied[it.Update.ID], body.Custom.NNum)
		}
		j.results = append(j.results, r)
	}
}

// Batching and item settlement through the seams alone: no NATS server, no HTTP.
func TestBulkWithoutABroker(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, convs, updates int, cfg bulk.Config) (*memQueue, *flaky, *memBulk) {
		q, seq := memBacklog(convs, updates)
		up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
		bc := &memBulk{t: t, f: up, rnd: rand.New(rand.NewPCG(3, 4)), jobs: map[string]*memJob{}}
		cfg.Enabled = true
		pool := &worker.Pool{
			Consumer: q, Client: bodyN{up}, BulkClient: bc, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
			Log: slog.New(slog.DiscardHandler),
			Config: worker.Config{Concurrency: 8, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond,
				MaxAckPending: 200, Bulk: cfg},
		}
		runUntilAcked(t, pool, q, seq, 60*time.Second)
		wantEachOnceInOrder(t, q, up, seq, convs, updates)
		return q, up, bc
	}

	t.Run("jobs hold one update per conversation, at most Size and at least Min, and every item is settled once in order", func(t *testing.T) {
		t.Parallel()
		_, _, bc := run(t, 60, 6, bulk.Config{Size: 25, Min: 5, Linger: 20 * time.Millisecond})
		if len(bc.sizes) == 0 {
			t.Fatal("no bulk job")
		}
		for _, n := range bc.sizes {
			if n > 25 || n < 5 {
				t.Errorf("a job of %d items; want 5 to 25", n)
			}
		}
	})

	t.Run("fewer updates than Min after Linger go as single PUTs", func(t *testing.T) {
		t.Parallel()
		_, _, bc := run(t, 3, 1, bulk.Config{Size: 25, Min: 5, Linger: 20 * time.Millisecond})
		if len(bc.sizes) != 0 {
			t.Errorf("jobs of %v items; want none", bc.sizes)
		}
	})
}

// panicBulk panics at its first submit, as a bug in a BulkClient would, before anything is
// submitted.
type panicBulk struct {
	*memBulk
	once sync.Once
}

func (p *panicBulk) SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error) {
	p.once.Do(func() { panic("bug in the bulk client") })
	return p.memBulk.SubmitBulk(ctx, items)
}

// A panic in a bulk job's goroutine does not end the process: the job's items go as single
// PUTs and every update is applied once, in order.
func TestBulkJobPanic(t *testing.T) {
	t.Parallel()
	q, up, seq, _ := runPanickingBulk(t)
	wantEachOnceInOrder(t, q, up, seq, panicConvs, panicUpdates)
}

// A request that panics is no longer in flight: the in-flight count, which the pacer reads
// with every answer and /metrics serves, goes back to zero once the panicking submit is
// recovered and its items went as single PUTs.
func TestBulkJobPanicLeavesNothingInFlight(t *testing.T) {
	t.Parallel()
	_, _, _, metrics := runPanickingBulk(t)
	if n := testutil.ToFloat64(metrics.InFlight); n != 0 {
		t.Errorf("%v requests in flight after every update was applied; want 0", n)
	}
}

const panicConvs, panicUpdates = 20, 3

// runPanickingBulk runs a backlog through a pool in bulk mode whose bulk client panics at its
// first submit, until every update is acknowledged.
func runPanickingBulk(t *testing.T) (*memQueue, *flaky, uint64, *worker.Metrics) {
	q, seq := memBacklog(panicConvs, panicUpdates)
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	bc := &panicBulk{memBulk: &memBulk{t: t, f: up, rnd: rand.New(rand.NewPCG(3, 4)), jobs: map[string]*memJob{}}}
	metrics := worker.NewMetrics(prometheus.NewRegistry())
	pool := &worker.Pool{
		Consumer: q, Client: bodyN{up}, BulkClient: bc, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log: slog.New(slog.DiscardHandler), Metrics: metrics,
		Config: worker.Config{Concurrency: 4, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond,
			MaxAckPending: 100, Bulk: bulk.Config{Enabled: true, Size: 10, Min: 2, Linger: 20 * time.Millisecond,
				Deadline: bulk.MinDeadline}},
	}
	runUntilAcked(t, pool, q, seq, 60*time.Second)
	return q, up, seq, metrics
}
