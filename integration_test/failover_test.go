package integration_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// failoverRounds is how many times the failover is measured; the median is reported.
const failoverRounds = 5

// TestFailoverTime measures how long the work stops when the active replica dies (SIGKILL:
// the standby waits out --pinned-ttl) or is stopped (SIGTERM: it releases its pin after the
// drain): from the signal to the first request the fake receives after the old replica
// exited, which only the other replica can send. It runs failoverRounds kills of each kind, restarting the stopped
// replica as the new standby each time, and reports the median for docs/BENCHMARKS.md.
//
//	TESTCONTAINERS_RYUK_DISABLED=true go test -count=1 -run TestFailoverTime -v ./integration_test/
func TestFailoverTime(t *testing.T) {
	imgs := setup(t)
	c := newCluster(t, imgs, "--budget=-1", "--latency=5ms")
	env := map[string]string{
		"KUSTOMER_RATE_PER_MINUTE": "6000", // 100 a second: work never runs out during a round
		"WORKER_PINNED_TTL":        pinnedTTL.String(),
	}
	workers := map[string]*testcontainers.DockerContainer{
		"worker-a": c.startWorker(t, "worker-a", env),
		"worker-b": c.startWorker(t, "worker-b", env),
	}
	ready := func(name string) string { return "http://" + c.endpoint(t, workers[name], "9464/tcp") + "/readyz" }
	roles := func() (active, standby string, ok bool) {
		ra, rb := role(c.http, ready("worker-a")), role(c.http, ready("worker-b"))
		switch {
		case ra == "active" && rb == "standby":
			return "worker-a", "worker-b", true
		case rb == "active" && ra == "standby":
			return "worker-b", "worker-a", true
		}
		return "", "", false
	}

	ups := makeUpdates("failover", 2*failoverRounds*15*100, 0)
	c.publish(t, ups)

	for _, signal := range []string{"KILL", "TERM"} {
		var took []time.Duration
		for round := range failoverRounds {
			var active, standby string
			waitFor(t, time.Minute, "one worker active and one standby", func() (bool, string) {
				var ok bool
				active, standby, ok = roles()
				return ok, fmt.Sprintf("roles not settled (round %d)", round)
			})
			c.waitApplied(t, c.stats(t).Applied+50, time.Minute) // the active one is working

			// Requests after the old replica exited can only be the other's: measure from the
			// signal to the first of them.
			start := time.Now()
			_, exit := kill(t, workers[active], signal, time.Minute)
			var gap time.Duration
			waitFor(t, time.Minute, standby+" to send a request", func() (bool, string) {
				gap = c.firstRequestAfter(t, start.Add(exit))
				return gap >= 0, "no request since the old replica exited"
			})
			gap += exit
			took = append(took, gap)
			t.Logf("SIG%s round %d: %s active, exited after %s -> first request by %s %s after the signal",
				signal, round+1, active, exit.Round(10*time.Millisecond), standby, gap.Round(10*time.Millisecond))

			if err := workers[active].Start(context.Background()); err != nil {
				t.Fatalf("starting %s again: %v", active, err)
			}
		}
		slices.Sort(took)
		median := took[len(took)/2]
		t.Logf("SIG%s: failover median %s over %d rounds (min %s, max %s), --pinned-ttl %s",
			signal, median, len(took), took[0], took[len(took)-1], pinnedTTL)
		limit := pinnedTTL + 5*time.Second // the TTL, a pull, and the fake's scheduling
		if signal == "TERM" {
			limit = shutdownTimeout // the drain; the pin is released right after it
		}
		if median > limit {
			t.Errorf("SIG%s: failover median %s, want under %s", signal, median, limit)
		}
	}
}
