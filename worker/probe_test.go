package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// scripted answers its n-th request with the n-th error of before, panics at the request
// right after them, and applies every later one.
type scripted struct {
	before []error
	n      atomic.Int32
	// gated reports whether a gate stops the pool; the panicking request checks that it is a
	// probe, sent while a gate was closed.
	gated    func() bool
	notProbe atomic.Bool
}

func (s *scripted) UpdateConversation(context.Context, kustomer.Update) (*kustomer.Result, error) {
	n := int(s.n.Add(1))
	switch {
	case n <= len(s.before):
		return nil, s.before[n-1]
	case n == len(s.before)+1:
		if !s.gated() {
			s.notProbe.Store(true)
		}
		panic("the client panicked")
	}
	return &kustomer.Result{Status: 200, RateLimit: unlimited}, nil
}

// A gate's probe that panics is given back: the gate does not stay "probing" for ever, and
// the pool goes on as soon as Kustomer answers again. Through the seams: no NATS, no HTTP.
func TestPanickingProbeIsGivenBack(t *testing.T) {
	t.Parallel()
	refused := &kustomer.APIError{Status: 401, Class: kustomer.ClassAuth, Reason: "refused", RateLimit: unlimited}
	down := &kustomer.APIError{Status: 503, Class: kustomer.ClassTransient, Reason: "unavailable", RateLimit: unlimited}
	for _, tc := range []struct {
		name   string
		before []error // the answers that close the gate; the next request is its probe
	}{
		{"the auth gate's probe, after a refused key", []error{refused}},
		{"the outage breaker's probe, after failures across conversations", []error{down, down, down, down, down}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const convs = 8
			q := &memQueue{acked: map[uint64]int{}}
			for c := range convs {
				q.pending = append(q.pending, &memMsg{q: q, seq: uint64(c + 1), delivered: 1,
					data: fmt.Appendf(nil, `{"id":%q,"body":{"name":"x"}}`, id(c))})
			}
			up := &scripted{before: tc.before}
			pool := &worker.Pool{
				Consumer: q, Client: up, DeadLetters: noDeadLetters{t}, Pacer: pacer.New(-1),
				Log: slog.New(slog.DiscardHandler),
				// One worker: the request after those that closed the gate is its probe.
				Config: worker.Config{Concurrency: 1, MaxAttempts: 50, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond},
			}
			up.gated = func() bool {
				var down *worker.Unavailable
				err := pool.Ready()
				return errors.Is(err, worker.ErrAuthBlocked) || errors.As(err, &down)
			}
			runInBackground(t, pool)
			testwait.Until(t, "the probe to panic", 10*time.Second, func() bool { return int(up.n.Load()) > len(tc.before) })
			if up.notProbe.Load() {
				t.Fatal("the panicking request went out with no gate closed: it was no probe")
			}
			// The next probe goes out at once (the panicking one learned nothing) and opens
			// the gate; then everything is applied. A probe left out would freeze the pool.
			testwait.Until(t, "every message acknowledged after the panicking probe", 10*time.Second, func() bool { return q.done(convs) })
			if err := pool.Ready(); err != nil {
				t.Errorf("Ready = %v; want nil once Kustomer answers again", err)
			}
		})
	}
}
