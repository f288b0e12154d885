package worker_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// A Kustomer outage costs nothing: no attempt, no dead letter, and only probes go out.
func TestOutageBreaker(t *testing.T) {
	t.Parallel()
	const convs, rounds = 200, 3
	outage := 60 * time.Second
	if testing.Short() {
		outage = 15 * time.Second
	}
	f := setup(t, options{fake: kustomertest.Config{Latency: 5 * time.Millisecond},
		cfg: worker.Config{Concurrency: 8, MaxAttempts: 3}, rate: 6000})
	f.publishRounds(convs, rounds)
	testwait.Until(t, "150 applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= 150 })
	f.fake.SetDown(503)
	var unavailable *worker.Unavailable
	testwait.Until(t, "the pool to report Kustomer unavailable", 10*time.Second, func() bool {
		return errors.As(f.pool.Ready(), &unavailable)
	})
	time.Sleep(time.Second) // requests sent before it opened are answered by now
	before := f.fake.Stats().Requests
	time.Sleep(outage) // the outage lasts this long, whatever the pool does
	during := f.fake.Stats().Requests - before
	f.fake.SetDown(0)
	f.waitDrained(120 * time.Second)
	if err := f.pool.Ready(); err != nil {
		t.Errorf("Ready after the outage = %v; want nil", err)
	}
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters after a %s outage; want none", n, outage)
	}
	if n := f.stale(convs, rounds-1); n != 0 {
		t.Errorf("%d of %d conversations not at their last update", n, convs)
	}
	// Probes at growing intervals from 1s, capped at 30s: a handful a minute.
	if max := int(outage/time.Second)/5 + 3; during > max {
		t.Errorf("%d requests during a %s outage once the breaker opened; want probes only (at most %d)", during, outage, max)
	}
	t.Logf("%d requests during the %s outage after the breaker opened", during, outage)
}

// A conversation that keeps failing while the others succeed still runs out of attempts.
func TestOneFailingConversationIsNotAnOutage(t *testing.T) {
	t.Parallel()
	f := setup(t, options{fake: kustomertest.Config{Latency: 2 * time.Millisecond}, cfg: worker.Config{Concurrency: 4, MaxAttempts: 3}})
	bad := id(7)
	answers := make([]kustomertest.Answer, 50)
	for i := range answers {
		answers[i] = kustomertest.Answer{Status: 503}
	}
	f.fake.Script(bad, answers...)
	for i := range 300 {
		f.publishUpdate(i%20, fmt.Sprintf(`{"name":"n-%d"}`, i))
	}
	f.waitDrained(60 * time.Second)
	dls := f.deadLetters()
	if len(dls) == 0 {
		t.Fatal("the failing conversation was never dead-lettered")
	}
	for _, d := range dls {
		if d.header.Get("Dlq-Class") != "exhausted" {
			t.Errorf("dead letter of class %q; want exhausted", d.header.Get("Dlq-Class"))
		}
	}
	if errors.As(f.pool.Ready(), new(*worker.Unavailable)) {
		t.Error("the breaker is open after one conversation failed")
	}
}
