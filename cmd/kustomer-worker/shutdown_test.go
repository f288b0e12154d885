package main

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// gauge reads one unlabelled metric of the daemon's /metrics, or -1.
func (d *daemon) gauge(name string) float64 {
	resp, err := http.Get(d.url("/metrics"))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func TestSecondSignalCutsShutdownShortAndStillCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	key := map[string]string{"KUSTOMER_API_KEY": "test-key"}
	dataDir, listen := t.TempDir(), freeAddr(t)
	// Answers take a minute and the shutdown may wait as long: only the second signal can end
	// the process within seconds.
	slow := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: time.Minute})
	d := startDaemon(t, key, "--data-dir", dataDir, "--nats-listen", listen, "--kustomer-url", slow.URL,
		"--shutdown-timeout", "60s", "--request-timeout", "90s", "--concurrency", "4")
	testwait.Until(t, "/readyz", 20*time.Second, func() bool { return d.status("/readyz") == 200 })
	nc, js := queuetest.Connect(t, "nats://"+listen)
	(&broker{js: js}).publishUpdates(t, 20)
	nc.Close()
	testwait.Until(t, "requests in flight", 20*time.Second, func() bool { return d.gauge("kustomer_worker_requests_in_flight") >= 4 })

	d.signal(syscall.SIGTERM)
	testwait.Until(t, "the graceful shutdown to begin", 10*time.Second, func() bool {
		return strings.Contains(d.logs.String(), "shutting down")
	})
	start := time.Now()
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after two signals; want 0\n%s", code, d.logs)
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("exited %s after the second signal; want within a few seconds", took.Round(time.Millisecond))
	}
	logs := d.logs.String()
	for _, want := range []string{"cutting the shutdown short", "embedded NATS server stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}

	// The store was shut down cleanly: a restart finds every message, and nothing was
	// dead-lettered for being cut short.
	fast := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	d = startDaemon(t, key, "--data-dir", dataDir, "--nats-listen", listen, "--kustomer-url", fast.URL, "--shutdown-timeout", "2s")
	testwait.Until(t, "every update applied after the restart", 60*time.Second, func() bool {
		c, ok := fast.Conversation("000000000000000000000014") // the 20th
		return ok && c.Attributes["name"] == "n-19" && fast.Stats().Applied >= 20
	})
	checkAllApplied(t, fast, 20)
	nc, js = queuetest.Connect(t, "nats://"+listen)
	testwait.Until(t, "the work stream to empty", 20*time.Second, func() bool { return queuetest.StreamMsgs(t, js, "KUSTOMER_UPDATES") == 0 })
	if dl := queuetest.StreamMsgs(t, js, "KUSTOMER_UPDATES_DLQ"); dl != 0 {
		t.Errorf("%d dead letters; want none", dl)
	}
	nc.Close()
	d.signal(syscall.SIGTERM)
	if code := d.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d; want 0", code)
	}
}
