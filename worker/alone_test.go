package worker_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// readings are the fakes of the unconfirmed point these tests meet: whether a conversation
// whose updates Kustomer keeps failing can still be read.
var readings = []struct {
	name string
	fake kustomertest.Config
}{
	{"its reads answered", kustomertest.Config{Latency: 2 * time.Millisecond}},
	{"its reads failing too", kustomertest.Config{Latency: 2 * time.Millisecond, RejectReads: true}},
	// The probe's 403 shows Kustomer up, and must not close the auth gate.
	{"a key that may not read (403)", kustomertest.Config{Latency: 2 * time.Millisecond, ReadForbidden: true}},
}

// The failure as a new user met it: 100 updates to 50 conversations applied, then 10
// conversations whose update Kustomer answers 503 every time, among more healthy traffic,
// with --max-attempts 3. They are dead-lettered as exhausted, each after its 3 attempts, the
// breaker does not take them for an outage (no "Kustomer unavailable", /readyz ready), and
// the healthy conversations all end at their last update.
func TestAlwaysFailingConversationsAreNotAnOutage(t *testing.T) {
	t.Parallel()
	for _, r := range readings {
		t.Run("with "+r.name, func(t *testing.T) {
			t.Parallel()
			const healthy, bad = 50, 10
			var logs testwait.Buffer
			f := setup(t, options{fake: r.fake, cfg: worker.Config{Concurrency: 8, MaxAttempts: 3}, logs: &logs})
			f.publishRounds(healthy, 2)
			testwait.Until(t, "100 updates applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= 2*healthy })
			for c := healthy; c < healthy+bad; c++ {
				f.fake.Reject(id(c), 503)
			}
			start := time.Now()
			for i := range healthy {
				if i < bad {
					f.publishUpdate(healthy+i, `{"name":"doomed"}`)
				}
				f.publishUpdate(i, `{"name":"u-2"}`)
			}
			testwait.Until(t, "the 10 always-failing conversations dead-lettered", 60*time.Second, func() bool {
				return len(f.deadLetters()) >= bad
			})
			took := time.Since(start)
			f.waitDrained(60 * time.Second)
			dls := f.deadLetters()
			if len(dls) != bad {
				t.Errorf("%d dead letters; want %d", len(dls), bad)
			}
			for _, d := range dls {
				if c, reason := d.header.Get("Dlq-Class"), d.header.Get("Dlq-Reason"); c != "exhausted" || !strings.Contains(reason, "503") {
					t.Errorf("dead letter of class %q, reason %q; want exhausted, naming the 503", c, reason)
				}
			}
			if n := f.stale(healthy, 2); n != 0 {
				t.Errorf("%d of %d healthy conversations not at their last update", n, healthy)
			}
			puts := 0
			for c := healthy; c < healthy+bad; c++ {
				for _, req := range f.fake.RequestsFor(id(c)) {
					if req.Kind == kustomertest.KindUpdate {
						puts++
					}
				}
			}
			// Each spends its 3 attempts; failures while the breaker suspects an outage (a
			// streak across conversations) spend none, and a trip gives back what the failures
			// that tripped it spent: a few more requests, never an endless loop.
			if puts < 3*bad || puts > 3*3*bad {
				t.Errorf("%d updates sent for the %d always-failing conversations; want 3 to 9 each", puts, bad)
			}
			t.Logf("all %d dead-lettered %s after they were published; %d updates for them (%.1f each), %d reads; the breaker said:\n%s",
				bad, took.Round(100*time.Millisecond), puts, float64(puts)/bad, f.fake.Stats().Reads, grepLines(logs.String(), "Kustomer"))
			if err := f.pool.Ready(); err != nil {
				t.Errorf("Ready = %v; want nil", err)
			}
			if strings.Contains(logs.String(), "refused the API key") {
				t.Errorf("the auth gate closed:\n%s", grepLines(logs.String(), "Kustomer"))
			}
			if strings.Contains(logs.String(), "Kustomer unavailable") {
				t.Errorf("the log says Kustomer is unavailable while it answered:\n%s", grepLines(logs.String(), "Kustomer"))
			}
			if errors.As(f.pool.Ready(), new(*worker.Unavailable)) {
				t.Error("Ready says Kustomer is unavailable")
			}
		})
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}

// A real outage, 503 to everything (reads too) for 45 s (10 s with -short), spends no attempt
// and dead-letters nothing, even with --max-attempts 2: /readyz and the log say Kustomer is
// unavailable, only probes go out, and everything is applied once it answers again.
func TestRealOutageSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	const convs = 100
	outage := 45 * time.Second
	if testing.Short() {
		outage = 10 * time.Second
	}
	var logs testwait.Buffer
	f := setup(t, options{fake: kustomertest.Config{Latency: 2 * time.Millisecond},
		cfg: worker.Config{Concurrency: 8, MaxAttempts: 2}, logs: &logs, rate: 3000})
	f.publishRounds(convs, 2)
	testwait.Until(t, "50 applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= 50 })
	f.fake.SetDown(503)
	start := time.Now()
	var unavailable *worker.Unavailable
	testwait.Until(t, "the pool to report Kustomer unavailable", 20*time.Second, func() bool {
		return errors.As(f.pool.Ready(), &unavailable)
	})
	if unavailable.Writes {
		t.Errorf("Ready = %v; want Kustomer unavailable, not writes refused", unavailable)
	}
	before := f.fake.Stats()
	testwait.Until(t, fmt.Sprintf("the outage to last %s", outage), outage+10*time.Second, func() bool {
		if n := len(f.deadLetters()); n != 0 {
			t.Fatalf("%d dead letters during the outage", n)
		}
		return time.Since(start) >= outage
	})
	during := f.fake.Stats()
	f.fake.SetDown(0)
	t.Logf("a %s outage: %d requests once the pool said unavailable (%d of them reads)",
		outage, during.Requests-before.Requests, during.Reads-before.Reads)
	f.waitDrained(120 * time.Second)
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters after a %s outage; want none", n, outage)
	}
	if n := f.stale(convs, 1); n != 0 {
		t.Errorf("%d of %d conversations not at their last update", n, convs)
	}
	if err := f.pool.Ready(); err != nil {
		t.Errorf("Ready after the outage = %v; want nil", err)
	}
	out := logs.String()
	for _, want := range []string{"Kustomer unavailable", "Kustomer answers again"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, grepLines(out, "Kustomer"))
		}
	}
	for _, wrong := range []string{"taking the failures as theirs", "refuse updates"} {
		if strings.Contains(out, wrong) {
			t.Errorf("the log says %q during a real outage:\n%s", wrong, grepLines(out, "Kustomer"))
		}
	}
	if f.fake.Stats().Reads == 0 {
		t.Error("no read probed Kustomer")
	}
}

// Kustomer answers reads but refuses every update: the backlog is neither dead-lettered nor
// stalled silently. The pool pauses with a log line of its own, /readyz says writes are
// refused, the kustomer_writes_refused gauge is 1, one update at a time probes; once updates
// are accepted again everything is applied and nothing was dead-lettered.
func TestWritesRefusedWhileReadsAnswer(t *testing.T) {
	t.Parallel()
	const convs = 200
	var logs testwait.Buffer
	reg := prometheus.NewRegistry()
	metrics := worker.NewMetrics(reg)
	f := setup(t, options{fake: kustomertest.Config{Latency: 2 * time.Millisecond},
		cfg: worker.Config{Concurrency: 8, MaxAttempts: 3}, logs: &logs, rate: 3000,
		before: func(p *worker.Pool) { p.Metrics = metrics }})
	f.publishRounds(convs, 1)
	testwait.Until(t, "20 applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= 20 })
	f.fake.SetWritesDown(503)
	var unavailable *worker.Unavailable
	testwait.Until(t, "the pool to report updates refused", 30*time.Second, func() bool {
		if n := len(f.deadLetters()); n != 0 {
			t.Fatalf("%d dead letters while every update fails", n)
		}
		return errors.As(f.pool.Ready(), &unavailable) && unavailable.Writes
	})
	if got := testutil.ToFloat64(metrics.KustomerWritesDown); got != 1 {
		t.Errorf("kustomer_writes_refused = %v; want 1", got)
	}
	if !strings.Contains(logs.String(), "Kustomer refuses updates while it answers reads") {
		t.Errorf("no log line says updates are refused:\n%s", grepLines(logs.String(), "Kustomer"))
	}
	// Probes go on, one update at a time; nothing is dead-lettered meanwhile.
	failed := f.fake.Stats().ByStatus[503]
	testwait.Until(t, "two more updates to probe", 30*time.Second, func() bool {
		if n := len(f.deadLetters()); n != 0 {
			t.Fatalf("%d dead letters while every update fails", n)
		}
		return f.fake.Stats().ByStatus[503] >= failed+2
	})
	f.fake.SetWritesDown(0)
	f.waitDrained(120 * time.Second)
	if n := len(f.deadLetters()); n != 0 {
		t.Errorf("%d dead letters; want none", n)
	}
	if n := f.stale(convs, 0); n != 0 {
		t.Errorf("%d of %d conversations not updated", n, convs)
	}
	if err := f.pool.Ready(); err != nil {
		t.Errorf("Ready once updates are accepted = %v; want nil", err)
	}
	if got := testutil.ToFloat64(metrics.KustomerWritesDown); got != 0 {
		t.Errorf("kustomer_writes_refused = %v after; want 0", got)
	}
	if !strings.Contains(logs.String(), "Kustomer accepts updates again") {
		t.Errorf("no log line says updates are accepted again:\n%s", grepLines(logs.String(), "Kustomer"))
	}
}

// An outage that begins while conversations known to fail on their own are pending: the
// healthy conversations spend no attempt and none is dead-lettered; the always-failing ones
// are dead-lettered, and only they.
func TestOutageWhileFailingConversationsArePending(t *testing.T) {
	t.Parallel()
	for _, r := range readings {
		t.Run("with "+r.name, func(t *testing.T) {
			t.Parallel()
			const healthy, bad = 50, 10
			var logs testwait.Buffer
			f := setup(t, options{fake: r.fake, logs: &logs, cfg: worker.Config{Concurrency: 8, MaxAttempts: 6,
				RetryInitial: 500 * time.Millisecond, RetryMax: 2 * time.Second}})
			f.publishRounds(healthy, 1)
			testwait.Until(t, "50 applied", 60*time.Second, func() bool { return f.fake.Stats().Applied >= healthy })
			for c := healthy; c < healthy+bad; c++ {
				f.fake.Reject(id(c), 503)
				f.publishUpdate(c, `{"name":"doomed"}`)
			}
			testwait.Until(t, "the breaker to find conversations failing on their own", 60*time.Second, func() bool {
				return strings.Contains(logs.String(), "taking the failures as theirs")
			})
			if n := len(f.deadLetters()); n == bad {
				t.Fatal("every failing conversation was dead-lettered before the outage; the test needs them pending")
			}
			f.fake.SetDown(503)
			reads := f.fake.Stats().Reads
			for i := range healthy {
				f.publishUpdate(i, `{"name":"u-1"}`)
			}
			testwait.Until(t, "the pool to report Kustomer unavailable", 30*time.Second, func() bool {
				return errors.As(f.pool.Ready(), new(*worker.Unavailable))
			})
			testwait.Until(t, "three reads to probe the outage", 60*time.Second, func() bool {
				return f.fake.Stats().Reads >= reads+3
			})
			f.fake.SetDown(0)
			f.waitDrained(120 * time.Second)
			dls := f.deadLetters()
			doomed := map[string]bool{}
			for c := healthy; c < healthy+bad; c++ {
				doomed[id(c)] = true
			}
			for _, d := range dls {
				var msg struct{ ID string }
				if err := json.Unmarshal([]byte(d.data), &msg); err != nil || !doomed[msg.ID] {
					t.Errorf("dead letter of a healthy conversation: %s (%s)", d.data, d.header.Get("Dlq-Reason"))
				}
			}
			if len(dls) != bad {
				t.Errorf("%d dead letters; want the %d always-failing conversations", len(dls), bad)
			}
			if n := f.stale(healthy, 1); n != 0 {
				t.Errorf("%d of %d healthy conversations not at their last update", n, healthy)
			}
			if err := f.pool.Ready(); err != nil {
				t.Errorf("Ready after the outage = %v; want nil", err)
			}
		})
	}
}
