package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

func TestBulkFlags(t *testing.T) {
	t.Parallel()
	t.Run("a bulk setting out of range reads in flag names", func(t *testing.T) {
		c := worker.Config{Bulk: bulk.Config{Enabled: true, Min: 200}}.WithDefaults()
		err := settingError(c.Validate())
		var ue *usageError
		if !errors.As(err, &ue) || err.Error() != "bulk-min-size: 200 is not from 1 to the job size 100" {
			t.Errorf("err = %v; want a usage error naming bulk-min-size", err)
		}
	})
	t.Run("help shows the bulk defaults", func(t *testing.T) {
		out, _, err := runArgs(t, nil, "run", "--help")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"--bulk ", "--bulk-size=100", "--bulk-linger=250ms", "--bulk-min-size=10", "--bulk-deadline=10m0s", "WORKER_BULK"} {
			if !strings.Contains(out, want) {
				t.Errorf("help lacks %q", want)
			}
		}
	})
}

// A worker killed while its bulk jobs are in flight: the next one reads the jobs' results
// instead of sending their updates again, and applies the conversations' newer updates after.
func TestDaemonBulkKilledWithJobsInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	const convs = 150
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, BulkDuration: 4 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := range 2 {
		for i := range convs {
			msg := fmt.Sprintf(`{"id":"%024x","body":{"name":"u-%d"}}`, i+1, round)
			// The backfill lane, as enqueue publishes: with both lanes only it goes in bulk.
			if _, err := b.js.Publish(ctx, "kustomer.conversations.backfill", []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	args := []string{"--nats-url", b.url, "--kustomer-url", fake.URL, "--rate-per-minute", "0",
		"--ack-wait", "2s", "--concurrency", "4", "--bulk", "--bulk-linger", "100ms"}
	key := map[string]string{"KUSTOMER_API_KEY": "test-key"}
	d := startDaemon(t, key, args...)
	testwait.Until(t, "bulk jobs submitted", 30*time.Second, func() bool { return len(fake.BulkJobs()) >= 2 })

	out, _, err := runArgs(t, nil, "status", "--nats-url", b.url)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "bulk jobs") {
		t.Errorf("status does not list the bulk jobs in flight:\n%s", out)
	}
	if !strings.Contains(out, "bulk mode     on the backfill lane") || !strings.Contains(out, ", bulk on the backfill lane,") {
		t.Errorf("status does not say which lane goes in bulk:\n%s", out)
	}
	var watched bytes.Buffer
	wctx, wcancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	err = run(wctx, []string{"status", "--nats-url", b.url, "--watch", "--json", "--interval", "500ms"},
		&env{stdin: strings.NewReader(""), stdout: &watched, stderr: io.Discard, getenv: func(string) string { return "" }})
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(watched.String(), "\n"); !strings.Contains(first, `"bulk_jobs":[{`) {
		t.Errorf("status --watch --json does not list the bulk jobs in flight:\n%s", first)
	}
	d.signal(syscall.SIGKILL)
	d.wait(10 * time.Second)
	killed := len(fake.BulkJobs())

	startDaemon(t, key, args...)
	testwait.Until(t, "the work stream to empty", 90*time.Second, func() bool { return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0 })
	for i := range convs {
		c, ok := fake.Conversation(fmt.Sprintf("%024x", i+1))
		if !ok || c.Attributes["name"] != "u-1" {
			t.Fatalf("conversation %d ends as %+v; want its last update u-1", i, c)
		}
	}
	resent := 0
	for _, r := range fake.Requests() {
		if r.Kind == kustomertest.KindUpdate && strings.Contains(string(r.Body), "u-0") {
			resent++
		}
	}
	jobs := fake.BulkJobs()
	for _, j := range jobs[killed:] { // a newer update goes only once the older one's job is complete
		for _, it := range j.Items {
			for _, k := range jobs[:killed] {
				for _, old := range k.Items {
					if old.ID == it.ID && j.Submitted.Before(k.CompleteAt) {
						t.Errorf("conversation %s sent again at %s, before its job completed at %s", it.ID, j.Submitted, k.CompleteAt)
					}
				}
			}
		}
	}
	if dl := queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ"); dl != 0 {
		t.Errorf("%d dead letters; want none", dl)
	}
	st := fake.Stats()
	t.Logf("%d jobs before the kill, %d after; %d first updates sent again as single PUTs; %d units", killed, st.BulkJobs-killed, resent, st.Units)
	if resent > 0 {
		t.Errorf("%d first updates sent again as single PUTs; want none: their jobs' results settle them", resent)
	}
}

func TestDemoBulk(t *testing.T) {
	checkNoLeaks(t)
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := run(ctx, []string{"demo", "--bulk", "--bulk-duration", "200ms", "--updates", "400", "--budget", "100", "--window", "1s",
		"--latency", "0s", "--latency-jitter", "0s", "--fault-rate", "0", "--data-dir", t.TempDir(), "--progress", "none"},
		&env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatalf("demo: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	s := summary(t, out)
	if s["applied"] != "390" {
		t.Fatalf("summary:\n%s", out)
	}
	for _, want := range []string{"bulk ", "updates applied in bulk", "budget units", "units per 100 updates applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// Bulk mode worked: updates went in jobs, and the run spent fewer units than updates.
	number := func(re string) int {
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("summary lacks %s:\n%s", re, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	if inBulk := number(`(\d+) updates applied in bulk`); inBulk == 0 {
		t.Errorf("no update applied in bulk:\n%s", out)
	}
	if units := number(`budget units +(\d+)`); units >= 390 {
		t.Errorf("%d budget units for 390 updates: bulk jobs saved nothing:\n%s", units, out)
	}
}

func TestStatusSaysWhichLaneGoesInBulk(t *testing.T) {
	t.Parallel()
	top := queue.Topology{}.WithDefaults()
	bulkOnBackfill := []queue.ReplicaRole{{Role: queue.RoleActive, BulkLane: "backfill"}}
	t.Run("with no job in flight, and no note while the live lane is quiet", func(t *testing.T) {
		lines := strings.Join(bulkModeLines(top, queue.Status{Replicas: bulkOnBackfill}), "\n")
		if !strings.Contains(lines, "bulk mode     on the backfill lane") || strings.Contains(lines, "note:") {
			t.Errorf("lines:\n%s", lines)
		}
	})
	t.Run("a backlog on the live lane is named, with the subject to publish backfills on", func(t *testing.T) {
		st := queue.Status{Replicas: bulkOnBackfill, Live: queue.LaneStatus{Backlog: 5000}}
		lines := strings.Join(bulkModeLines(top, st), "\n")
		if !strings.Contains(lines, "5000 updates wait on the live lane") || !strings.Contains(lines, top.BackfillSubject) {
			t.Errorf("lines:\n%s", lines)
		}
	})
	t.Run("nothing without bulk mode", func(t *testing.T) {
		if lines := bulkModeLines(top, queue.Status{Replicas: []queue.ReplicaRole{{Role: queue.RoleActive}}, Live: queue.LaneStatus{Backlog: 5000}}); lines != nil {
			t.Errorf("lines: %q", lines)
		}
	})
}

func TestTheWorkerWarnsOfABacklogBesideBulk(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	w := &backlogBesideBulk{bulkLane: "backfill", subject: "kustomer.conversations.backfill", log: slog.New(slog.NewTextHandler(&logs, nil))}
	for _, backlog := range []int{10, 5000, 6000, 10, 7000} {
		w.check(queue.LaneStatus{Backlog: uint64(backlog)})
	}
	if n := strings.Count(logs.String(), "a backlog builds on the live lane"); n != 2 {
		t.Errorf("%d warnings; want one each time the backlog grows past the mark (2):\n%s", n, logs.String())
	}
}
