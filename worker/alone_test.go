package worker_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

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
			for i := range healthy {
				if i < bad {
					f.publishUpdate(healthy+i, `{"name":"doomed"}`)
				}
				f.publishUpdate(i, `{"name":"u-2"}`)
			}
			testwait.Until(t, "the 10 always-failing conversations dead-lettered", 60*time.Second, func() bool {
				return len(f.deadLetters()) >= bad
			})
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
			t.Logf("%d updates for %d always-failing conversations (%.1f each), %d reads; the breaker said:\n%s",
				puts, bad, float64(puts)/bad, f.fake.Stats().Reads, grepLines(logs.String(), "Kustomer"))
			if err := f.pool.Ready(); err != nil {
				t.Errorf("Ready = %v; want nil", err)
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
