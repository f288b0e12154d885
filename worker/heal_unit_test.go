package worker_test

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// leaderless fails its pulls with "no responders", as a consumer does while its stream elects
// a new leader, until elected is set.
type leaderless struct {
	*memQueue
	elected atomic.Bool
}

func (l *leaderless) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	if !l.elected.Load() {
		time.Sleep(5 * time.Millisecond)
		return nil, nats.ErrNoResponders
	}
	return l.memQueue.Fetch(n, opts...)
}

// A pull answered "no responders" may mean a deleted consumer (Heal re-creates it) or a
// leader election, in which Heal waits out its timeout: the lane's pulls must go on meanwhile
// (the three-node test's pauses of 15 s after a node's death).
func TestPullsGoOnWhileHealRuns(t *testing.T) {
	t.Parallel()
	q, seq := memBacklog(20, 2)
	l := &leaderless{memQueue: q}
	healing, release := make(chan struct{}), make(chan struct{})
	var healOnce, releaseOnce sync.Once
	up := &flaky{rnd: rand.New(rand.NewPCG(1, 2)), applied: map[string][]int{}}
	pool := &worker.Pool{
		Consumer: l, Client: bodyN{up}, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
		Log: slog.New(slog.DiscardHandler),
		Heal: func(context.Context) error { // one that takes as long as the test says
			healOnce.Do(func() { close(healing) })
			<-release
			return nil
		},
		Config: worker.Config{Concurrency: 4, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond},
	}
	runInBackground(t, pool)
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // runs first: Run waits for Heal

	testwait.Closed(t, "Heal to be called for the failing pulls", 30*time.Second, healing)
	l.elected.Store(true)
	testwait.Until(t, "every message acknowledged while Heal still runs", 30*time.Second, func() bool { return q.done(int(seq)) })
	releaseOnce.Do(func() { close(release) })
	testwait.Until(t, "Ready once pulls work", 10*time.Second, func() bool { return pool.Ready() == nil })
}
