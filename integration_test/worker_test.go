package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/testcontainers/testcontainers-go"
)

func TestBackfillOf5000UpdatesIsAppliedInFull(t *testing.T) {
	imgs := setup(t)
	// An org budget the backfill overruns (2,000 per 4s window), and 2% of requests failing with
	// 5xx: the worker must wait out 429s and retry 5xx without losing or repeating an update.
	c := newCluster(t, imgs, "--budget=2000", "--window=4s", "--fault-rate=0.02")
	c.startWorker(t, "worker", map[string]string{"WORKER_CONCURRENCY": "16"})

	ups := makeUpdates("backfill", 5000, 10)
	start := time.Now()
	c.publish(t, ups)
	t.Logf("enqueued %d updates in %s", len(ups), time.Since(start).Round(time.Millisecond))
	c.waitSettled(t, 5*time.Minute)
	t.Logf("work stream empty %s after the first publish; fake: %+v", time.Since(start).Round(time.Millisecond), c.stats(t))

	checkNothingLost(t, ups, c.account(t), exactlyOnce)
}

func TestWorkerKilledTwiceMidRunLosesNothing(t *testing.T) {
	imgs := setup(t)
	c := newCluster(t, imgs, "--budget=-1", "--latency=5ms")
	// Paced to 200 a second so that the kills land mid-run.
	env := map[string]string{"KUSTOMER_RATE_PER_MINUTE": "12000"}
	w := c.startWorker(t, "worker", env)

	ups := makeRounds("killed", 400, 5, 6)
	c.publish(t, ups)
	for _, at := range []int{500, 1100} {
		c.waitApplied(t, at, 2*time.Minute)
		code, took := kill(t, w, "KILL", 30*time.Second)
		t.Logf("SIGKILL after %d applied: exit code %d after %s", c.stats(t).Applied, code, took.Round(time.Millisecond))
		if code != 137 {
			t.Fatalf("exit code after SIGKILL = %d, want 137", code)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatalf("starting the killed worker again: %v", err)
		}
	}
	c.waitSettled(t, 3*time.Minute)

	checkNothingLost(t, ups, c.account(t), duplicatesAllowed)
	c.checkFinalState(t, ups)
}

func TestNATSRestartMidRunLosesNothingAndWorkerReconnects(t *testing.T) {
	imgs := setup(t)
	c := newCluster(t, imgs, "--budget=-1", "--latency=5ms")
	w := c.startWorker(t, "worker", map[string]string{"KUSTOMER_RATE_PER_MINUTE": "12000"})
	before, err := w.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	readyURL := "http://" + c.endpoint(t, w, "9464/tcp") + "/readyz"

	ups := makeRounds("natsrestart", 400, 5, 6)
	c.publish(t, ups)
	c.waitApplied(t, 500, 2*time.Minute)

	stop := 10 * time.Second
	if err := c.nats.Stop(context.Background(), &stop); err != nil {
		t.Fatalf("stopping NATS: %v", err)
	}
	waitFor(t, 30*time.Second, "the worker to report itself not ready while NATS is down", func() (bool, string) {
		s := httpStatus(c.http, readyURL)
		return s == http.StatusServiceUnavailable, "readyz answered " + http.StatusText(s)
	})
	applied := c.stats(t).Applied
	if err := c.nats.Start(context.Background()); err != nil {
		t.Fatalf("starting NATS again: %v", err)
	}
	t.Logf("NATS stopped and started after %d updates applied", applied)
	waitFor(t, time.Minute, "the worker to reconnect and report itself ready", func() (bool, string) {
		s := httpStatus(c.http, readyURL)
		return s == http.StatusOK, "readyz answered " + http.StatusText(s)
	})
	c.connect(t, c.natsURL(t)) // NATS is published on a new host port now
	c.waitSettled(t, 3*time.Minute)

	after, err := w.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !after.State.Running || after.State.StartedAt != before.State.StartedAt || after.RestartCount != 0 {
		t.Errorf("the worker did not ride out the NATS restart in one run: running %v, started %s then %s, restarts %d",
			after.State.Running, before.State.StartedAt, after.State.StartedAt, after.RestartCount)
	}
	// Acknowledgements sent while NATS was down are lost, so their messages come again.
	checkNothingLost(t, ups, c.account(t), duplicatesAllowed)
	c.checkFinalState(t, ups)
}

func TestSIGTERMDrainsAndExitsZeroWithinTheShutdownTimeout(t *testing.T) {
	imgs := setup(t)
	// Slow answers, so that requests are in flight when the signal comes.
	c := newCluster(t, imgs, "--budget=-1", "--latency=200ms")
	env := map[string]string{"KUSTOMER_RATE_PER_MINUTE": "9000", "WORKER_CONCURRENCY": "16"}
	w := c.startWorker(t, "worker", env)

	ups := makeUpdates("sigterm", 1500, 4)
	c.publish(t, ups)
	c.waitApplied(t, 300, 2*time.Minute)
	code, took := kill(t, w, "TERM", shutdownTimeout+30*time.Second)
	t.Logf("SIGTERM after %d applied: exit code %d after %s", c.stats(t).Applied, code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	// The drain may take the whole shutdown timeout, then the NATS connection is flushed.
	if limit := shutdownTimeout + 3*time.Second; took > limit {
		t.Errorf("the worker took %s to exit after SIGTERM; want at most %s (shutdown timeout %s)", took, limit, shutdownTimeout)
	}

	c.startWorker(t, "worker-2", env)
	c.waitSettled(t, 3*time.Minute)
	// A graceful stop finishes or hands back every message: nothing is applied twice.
	checkNothingLost(t, ups, c.account(t), exactlyOnce)
}

func TestSIGTERMCutsSlowRequestsShortAtTheShutdownTimeoutAndExitsZero(t *testing.T) {
	imgs := setup(t)
	// Kustomer answers nothing for two minutes: the requests in flight outlast the drain.
	c := newCluster(t, imgs, "--budget=-1", "--latency=2m")
	const drain = 3 * time.Second
	w := c.startWorker(t, "worker", map[string]string{
		"WORKER_SHUTDOWN_TIMEOUT": drain.String(), "KUSTOMER_REQUEST_TIMEOUT": "5m", "WORKER_CONCURRENCY": "4",
	})
	metricsURL := "http://" + c.endpoint(t, w, "9464/tcp") + "/metrics"

	ups := makeUpdates("slowterm", 20, 0)
	c.publish(t, ups)
	waitFor(t, time.Minute, "4 requests in flight", func() (bool, string) {
		n := metric(t, c.http, metricsURL, "kustomer_worker_requests_in_flight")
		return n >= 4, fmt.Sprintf("%v in flight", n)
	})
	code, took := kill(t, w, "TERM", drain+30*time.Second)
	t.Logf("SIGTERM with 4 requests in flight: exit code %d after %s", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	if took < drain-500*time.Millisecond || took > drain+3*time.Second {
		t.Errorf("the worker exited %s after SIGTERM; want about the shutdown timeout, %s: it must wait for requests in flight, then cut them short", took, drain)
	}

	// Nothing was acknowledged or dead-lettered: every update waits in the work stream for
	// the next worker.
	ctx := context.Background()
	for stream, want := range map[string]uint64{workStream: uint64(len(ups)), dlqStream: 0} {
		s, err := c.js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != want {
			t.Errorf("%s holds %d messages after the worker stopped, want %d", stream, info.State.Msgs, want)
		}
	}
}

func TestTwoReplicasOneActiveApplyEachUpdateOnce(t *testing.T) {
	imgs := setup(t)
	c := newCluster(t, imgs, "--budget=-1", "--latency=2ms", "--fault-rate=0.02")
	workers := []*testcontainers.DockerContainer{
		c.startWorker(t, "worker-1", nil),
		c.startWorker(t, "worker-2", nil),
	}

	ups := makeUpdates("replicas", 3000, 6)
	c.publish(t, ups)
	c.waitSettled(t, 3*time.Minute)
	checkNothingLost(t, ups, c.account(t), exactlyOnce)

	valid := 0
	for _, u := range ups {
		if !u.invalid {
			valid++
		}
	}
	// One replica is active (it holds the consumer's pin) and applies everything; the other is
	// a hot standby and applies nothing while the active one lives.
	var applied []int
	for i, w := range workers {
		n := int(metric(t, c.http, "http://"+c.endpoint(t, w, "9464/tcp")+"/metrics", "kustomer_worker_updates_total", "outcome", "applied"))
		t.Logf("worker-%d applied %d updates", i+1, n)
		applied = append(applied, n)
	}
	if slices.Min(applied) != 0 || slices.Max(applied) != valid {
		t.Errorf("the replicas applied %v updates; want one active replica applying all %d and a standby applying none", applied, valid)
	}
}

// metric reads one counter or gauge from a worker's /metrics: the series of family name
// whose labels include the given name/value pairs, 0 if there is none.
func metric(tb testing.TB, hc *http.Client, url, name string, labels ...string) float64 {
	tb.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		tb.Fatalf("parsing %s: %v", url, err)
	}
	for _, m := range families[name].GetMetric() {
		have := make(map[string]string)
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}
