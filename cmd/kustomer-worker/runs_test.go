package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// startDaemonPool runs the daemon's pool (worker.NewPool, as run builds it) on the rig's NATS
// against fake, until the returned stop is called (or the test ends).
func (r *opsRig) startDaemonPool(fake *kustomertest.Server, tune ...func(*worker.Config)) (stop func()) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lanes, attempts, err := queue.BindLanes(ctx, r.js, r.top)
	if err != nil {
		r.t.Fatal(err)
	}
	client, err := kustomer.New(kustomer.Options{BaseURL: fake.URL, Key: kustomer.StaticKey("test-key"), Timeout: 2 * time.Second})
	if err != nil {
		r.t.Fatal(err)
	}
	cfg := worker.Config{RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, FetchWait: time.Second, MaxAckPending: r.top.MaxAckPending}
	for _, f := range tune {
		f(&cfg)
	}
	pool, err := worker.NewPool(ctx, r.js, r.top, lanes, attempts, worker.Wiring{
		Client: client, Pacer: pacer.New(-1), Metrics: worker.NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.DiscardHandler), Config: cfg,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if cfg.Bulk.Enabled {
		if pool.BulkJobs, err = queue.BindBulk(ctx, r.js, r.top, false); err != nil {
			r.t.Fatal(err)
		}
	}
	rctx, rcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = lanes.Live.Run(rctx) })
	wg.Go(func() { _ = lanes.Backfill.Run(rctx) })
	done := make(chan error, 1)
	go func() { done <- pool.Run(rctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			rcancel()
			if err := testwait.Recv(r.t, "the pool to stop", time.Minute, done); err != nil {
				r.t.Errorf("pool: %v", err)
			}
			uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = lanes.Live.Unpin(uctx)
			_ = lanes.Backfill.Unpin(uctx)
			ucancel()
			wg.Wait()
			client.CloseIdleConnections()
		})
	}
	r.t.Cleanup(stop)
	return stop
}

// runStatus reads `status --run id --json`.
func (r *opsRig) runStatus(id string) runJSON {
	r.t.Helper()
	out, _, err := r.cli("", "status", "--run", id, "--json")
	if err != nil && exitStatus(err) != 3 {
		r.t.Fatalf("status --run %s: %v", id, err)
	}
	var st runJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		r.t.Fatalf("status --run %s --json: %v\n%s", id, err, out)
	}
	return st
}

// exitStatus is the process's exit status for err, as main sets it.
func exitStatus(err error) int { return exitCode(err, &strings.Builder{}) }

func runLines(first, n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(updateLine(first+i, fmt.Sprintf(`{"priority":%d}`, 1+i%5)) + "\n")
	}
	return b.String()
}

func TestRunFollowedToItsEnd(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(3), 400)
	fake.Reject(convID(7), 404)
	r.startDaemonPool(fake)
	file := writeFile(t, "backfill.jsonl", runLines(0, 20))

	stdout, _, err := r.cli("", "enqueue", file, "--run-id", "night-1", "--wait", "--interval", "100ms", "--progress", "none")
	if exitStatus(err) != 3 || !strings.Contains(err.Error(), "2 dead-lettered") {
		t.Fatalf("enqueue --wait: exit status %d, %v, want 3 naming 2 dead letters\n%s", exitStatus(err), err, stdout)
	}
	if s := summary(t, stdout); s["applied"] != "18" || s["dead-lettered"] != "2" || s["pending"] != "0" || s["state"] != queue.RunFailed {
		t.Errorf("the summary:\n%s", stdout)
	}
	st := r.runStatus("night-1")
	if st.Lines != 20 || st.Applied != 18 || st.Dead != 2 || st.Pending != 0 ||
		st.DeadLettered[queue.ClassRejected] != 2 || st.Units != 20 {
		t.Errorf("status --run: %+v", st)
	}

	t.Run("every update applied exits 0", func(t *testing.T) {
		file := writeFile(t, "more.jsonl", runLines(100, 5))
		stdout, _, err := r.cli("", "enqueue", file, "--run-id", "night-2", "--wait", "--interval", "100ms", "--progress", "none")
		if err != nil {
			t.Fatalf("enqueue --wait: %v\n%s", err, stdout)
		}
		if s := summary(t, stdout); s["applied"] != "5" || s["state"] != queue.RunDone {
			t.Errorf("the summary:\n%s", stdout)
		}
	})
	t.Run("status --run --watch follows to the end, in JSON lines", func(t *testing.T) {
		stdout, _, err := r.cli("", "status", "--run", "night-1", "--watch", "--json", "--interval", "100ms")
		if exitStatus(err) != 3 {
			t.Fatalf("exit status %d (%v), want 3", exitStatus(err), err)
		}
		var st runJSON
		if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &st); err != nil || st.Dead != 2 {
			t.Errorf("%v: %s", err, stdout)
		}
	})
	t.Run("an unknown run is an error, a bad run id a usage error", func(t *testing.T) {
		_, _, err := r.cli("", "status", "--run", "nope")
		if exitStatus(err) != 1 {
			t.Errorf("unknown run: exit status %d (%v), want 1", exitStatus(err), err)
		}
		_, _, err = r.cli("", "status", "--run", "a.b")
		if exitStatus(err) != 2 {
			t.Errorf("bad run id: exit status %d (%v), want 2", exitStatus(err), err)
		}
	})
}

func TestRunCountsAcrossAWorkerRestart(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: 50 * time.Millisecond})
	fake.Reject(convID(5), 400)
	file := writeFile(t, "backfill.jsonl", runLines(0, 60))
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "restart", "--progress", "none"); err != nil {
		t.Fatal(err)
	}
	if st := r.runStatus("restart"); st.Pending != 60 || st.Applied != 0 || st.State != queue.RunRunning {
		t.Fatalf("before any worker: %+v", st)
	}
	slow := func(c *worker.Config) { c.Concurrency = 2 } // 60 lines take 1.5 s or more: the stop comes mid-run
	stop := r.startDaemonPool(fake, slow)
	testwait.Until(t, "some lines applied", 30*time.Second, func() bool { return r.runStatus("restart").Applied >= 10 })
	stop()
	mid := r.runStatus("restart")
	if mid.Applied+mid.Dead+mid.Pending != 60 {
		t.Fatalf("between workers the counts do not add up: %+v", mid)
	}
	t.Logf("between workers: %d applied, %d dead-lettered, %d pending", mid.Applied, mid.Dead, mid.Pending)
	r.startDaemonPool(fake, slow)
	testwait.Until(t, "the run to end", 60*time.Second, func() bool { return r.runStatus("restart").Finished() })
	st := r.runStatus("restart")
	if st.Applied != 59 || st.Dead != 1 || st.Pending != 0 {
		t.Errorf("after the restart: %+v", st)
	}
}

// A line applied twice (a redelivery after its acknowledgement was lost, or the same message
// stored twice) counts once.
func TestRunCountsALineAppliedTwiceOnce(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	file := writeFile(t, "backfill.jsonl", runLines(0, 10))
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "twice", "--progress", "none"); err != nil {
		t.Fatal(err)
	}
	// Line 4 again, as its redelivery would come: same run, same line, its own message id.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := nats.NewMsg(r.top.BackfillSubject + "." + convID(3))
	m.Data = []byte(updateLine(3, `{"priority":4}`))
	m.Header.Set(queue.HeaderRunID, "twice")
	m.Header.Set(queue.HeaderRunLine, "4")
	if _, err := r.js.PublishMsg(ctx, m, jetstream.WithMsgID("again")); err != nil {
		t.Fatal(err)
	}
	r.startDaemonPool(fake)
	testwait.Until(t, "both copies applied", 30*time.Second, func() bool { return len(fake.RequestsFor(convID(3))) == 2 })
	testwait.Until(t, "the run to end", 30*time.Second, func() bool { return r.runStatus("twice").Finished() })
	if st := r.runStatus("twice"); st.Applied != 10 || st.Pending != 0 || st.State != queue.RunDone {
		t.Errorf("status: %+v", st)
	}
}

// Two runs at once, and live traffic beside them, are counted apart.
func TestRunsDoNotMix(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(205), 400)
	a := writeFile(t, "a.jsonl", runLines(0, 30))
	b := writeFile(t, "b.jsonl", runLines(200, 12))
	r.startDaemonPool(fake)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	outs := make([]string, 2)
	wg.Go(func() {
		outs[0], _, errs[0] = r.cli("", "enqueue", a, "--run-id", "a", "--wait", "--interval", "100ms", "--progress", "none")
	})
	wg.Go(func() {
		outs[1], _, errs[1] = r.cli("", "enqueue", b, "--run-id", "b", "--wait", "--interval", "100ms", "--progress", "none")
	})
	// Live traffic beside them, without a run.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 10 {
		if _, err := r.js.Publish(ctx, r.top.Subject+"."+convID(400+i), []byte(updateLine(400+i, `{"priority":2}`))); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if errs[0] != nil || exitStatus(errs[1]) != 3 {
		t.Fatalf("run a: %v\n%s\nrun b: %v\n%s", errs[0], outs[0], errs[1], outs[1])
	}
	if st := r.runStatus("a"); st.Lines != 30 || st.Applied != 30 || st.Dead != 0 {
		t.Errorf("run a: %+v", st)
	}
	if st := r.runStatus("b"); st.Lines != 12 || st.Applied != 11 || st.Dead != 1 {
		t.Errorf("run b: %+v", st)
	}
}

// What failed in a run is exported as lines enqueue takes again, with their line numbers and
// reasons beside them; runs lists the run; replay and purge say what they did in JSON.
func TestRunFixWhatFailed(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(2), 400)
	fake.Reject(convID(6), 404)
	r.startDaemonPool(fake)
	input := runLines(0, 8)
	file := writeFile(t, "backfill.jsonl", input)
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "fixme", "--wait", "--interval", "100ms", "--progress", "none"); exitStatus(err) != 3 {
		t.Fatalf("enqueue --wait: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(input), "\n")

	out, stderr, err := r.cli("", "dlq", "list", "--run", "fixme")
	if err != nil || !strings.Contains(out, "LINE") || !strings.Contains(stderr, "2 dead letters") {
		t.Fatalf("dlq list --run: %v\n%s%s", err, out, stderr)
	}
	if got := r.listed("--run", "fixme"); len(got) != 2 || got[convID(2)].Line != 3 || got[convID(6)].Line != 7 {
		t.Errorf("dlq list --run --json: %+v", got)
	}

	reasons := t.TempDir() + "/reasons.jsonl"
	out, stderr, err = r.cli("", "dlq", "export", "--run", "fixme", "--reasons", reasons)
	if err != nil {
		t.Fatalf("dlq export: %v\n%s", err, stderr)
	}
	if want := lines[2] + "\n" + lines[6] + "\n"; out != want {
		t.Errorf("dlq export wrote\n%s\nwant the original lines 3 and 7\n%s", out, want)
	}
	if !strings.Contains(stderr, "line 3 (dead letter") || !strings.Contains(stderr, "line 7 (dead letter") {
		t.Errorf("stderr does not name the lines:\n%s", stderr)
	}
	b, err := os.ReadFile(reasons)
	if err != nil || strings.Count(string(b), "\n") != 2 || !strings.Contains(string(b), `"line":3`) || !strings.Contains(string(b), `"status":404`) {
		t.Errorf("reasons file: %v\n%s", err, b)
	}
	out, _, err = r.cli("", "dlq", "export", "--run", "fixme", "--class", "exhausted")
	if err != nil || out != "" {
		t.Errorf("export --class exhausted: %v %q", err, out)
	}

	t.Run("the export is enqueued again as a new run", func(t *testing.T) {
		fixed := writeFile(t, "failed.jsonl", lines[2]+"\n"+lines[6]+"\n")
		fake.Reject(convID(2), 0)
		fake.Reject(convID(6), 0)
		out, _, err := r.cli("", "enqueue", fixed, "--run-id", "fixme-2", "--wait", "--interval", "100ms", "--progress", "none", "--json")
		if exitStatus(err) != 0 && exitStatus(err) != 3 {
			t.Fatalf("enqueue: %v\n%s", err, out)
		}
		var st runJSON
		ls := strings.Split(strings.TrimSpace(out), "\n")
		if err := json.Unmarshal([]byte(ls[len(ls)-1]), &st); err != nil || st.Lines != 2 || st.Pending != 0 {
			t.Errorf("enqueue --wait --json: %v\n%s", err, out)
		}
	})

	t.Run("runs lists them", func(t *testing.T) {
		out, _, err := r.cli("", "runs")
		if err != nil || !strings.Contains(out, "fixme ") || !strings.Contains(out, "fixme-2") || !strings.Contains(out, queue.RunFailed) {
			t.Errorf("runs: %v\n%s", err, out)
		}
	})

	t.Run("replay and purge in JSON", func(t *testing.T) {
		out, _, err := r.cli("", "dlq", "purge", "--run", "fixme", "--class", "rejected", "--status", "404", "--yes", "--json")
		var p purgeJSON
		if err != nil || json.Unmarshal([]byte(out), &p) != nil || p.Deleted != 1 {
			t.Errorf("purge --json: %v\n%s", err, out)
		}
		out, _, err = r.cli("", "dlq", "replay", "--run", "fixme", "--dry-run", "--json")
		var rp replayJSON
		if err != nil || json.Unmarshal([]byte(out), &rp) != nil || rp.Replayed != 1 || len(rp.Items) != 1 || rp.Items[0].Line == 0 {
			t.Errorf("replay --json: %v\n%s", err, out)
		}
	})
}

// Counts survive a broker restart, and a bulk-mode run counts its lines in bulk jobs and the
// share applied in them.
func TestRunCountsAcrossABrokerRestartInBulkMode(t *testing.T) {
	checkNoLeaks(t)
	srv := queuetest.StartServer(t)
	nc, js := queuetest.Connect(t, srv.URL())
	r := &opsRig{t: t, url: srv.URL(), nc: nc, js: js,
		top: queue.Topology{DedupWindow: time.Minute, AckWait: 5 * time.Second}.WithDefaults()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, r.top); err != nil {
		t.Fatal(err)
	}
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, BulkDuration: 300 * time.Millisecond})
	fake.Reject(convID(9), 400) // a single PUT's 400 (a replace goes single)
	var b strings.Builder
	for i := range 120 {
		if i == 9 {
			b.WriteString(`{"id":"` + convID(i) + `","replace":true,"body":{"priority":3}}` + "\n")
			continue
		}
		b.WriteString(updateLine(i, `{"priority":2}`) + "\n")
	}
	file := writeFile(t, "backfill.jsonl", b.String())
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "bulky", "--progress", "none"); err != nil {
		t.Fatal(err)
	}
	r.startDaemonPool(fake, func(c *worker.Config) {
		c.Concurrency = 4
		c.Bulk = bulk.Config{Enabled: true, Size: 25, Min: 2, Linger: 100 * time.Millisecond, Deadline: time.Minute}
	})
	testwait.Until(t, "some lines applied or in bulk jobs", 30*time.Second, func() bool {
		st := r.runStatus("bulky")
		return st.Applied > 0 || st.InBulk > 0
	})
	srv.Restart(t)
	testwait.Until(t, "the run to end", 90*time.Second, func() bool {
		out, _, err := r.cli("", "status", "--run", "bulky", "--json")
		var st runJSON
		return (err == nil || exitStatus(err) == 3) && json.Unmarshal([]byte(out), &st) == nil && st.Finished()
	})
	st := r.runStatus("bulky")
	if st.Lines != 120 || st.Applied != 119 || st.Dead != 1 || st.Pending != 0 || st.InBulk != 0 {
		t.Errorf("after the broker restart: %+v", st)
	}
	if st.BulkApplied == 0 || st.BulkJobs == 0 || st.BulkShare <= 0.5 {
		t.Errorf("no share applied in bulk jobs: %+v", st)
	}
}

// The waiting command stopped (Ctrl-C) and started again, here as status --run --watch, sees
// the same run to its end with exact counts.
func TestRunWaitStoppedAndFollowedAgain(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(4), 400)
	file := writeFile(t, "backfill.jsonl", runLines(0, 80))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := r.cliCtx(ctx, "", "enqueue", file, "--run-id", "resume", "--wait", "--interval", "100ms", "--progress", "none")
		done <- err
	}()
	// No worker yet: the run is published and waits.
	testwait.Until(t, "the run published", time.Minute, func() bool {
		out, _, err := r.cli("", "status", "--run", "resume", "--json")
		var st runJSON
		return err == nil && json.Unmarshal([]byte(out), &st) == nil && st.State == queue.RunRunning && st.Pending == 80
	})
	cancel()
	if err := testwait.Recv(t, "enqueue --wait to stop", 30*time.Second, done); exitStatus(err) != 1 || !strings.Contains(err.Error(), "the run goes on") {
		t.Fatalf("stopped enqueue --wait: %v", err)
	}
	r.startDaemonPool(fake)
	out, _, err := r.cli("", "status", "--run", "resume", "--watch", "--interval", "100ms", "--progress", "plain")
	if exitStatus(err) != 3 || !strings.Contains(err.Error(), "79 applied, 1 dead-lettered") {
		t.Fatalf("status --run --watch: %v\n%s", err, out)
	}
	if !strings.Contains(out, "run resume: dead-lettered, applied 79 of 80, dead-lettered 1 (rejected 1), pending 0") {
		t.Errorf("the last line:\n%s", out)
	}
}

// A run read after its end is read from its summary; a dead letter replayed then makes it
// pending again, and once applied the run is done, counted from its records again.
func TestRunReplayedAfterItsEnd(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(1), 400)
	r.startDaemonPool(fake)
	file := writeFile(t, "backfill.jsonl", runLines(0, 6))
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "again", "--wait", "--interval", "100ms", "--progress", "none"); exitStatus(err) != 3 {
		t.Fatalf("enqueue --wait: %v", err)
	}
	for range 2 { // the second reading comes from the summary the first stored
		if st := r.runStatus("again"); st.Applied != 5 || st.Dead != 1 || st.State != queue.RunFailed || st.Units != 6 {
			t.Fatalf("after the end: %+v", st)
		}
	}
	fake.Reject(convID(1), 0)
	if _, _, err := r.cli("", "dlq", "replay", "--run", "again"); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the replayed line applied", 30*time.Second, func() bool { return r.runStatus("again").State == queue.RunDone })
	if st := r.runStatus("again"); st.Applied != 6 || st.Dead != 0 || st.Pending != 0 {
		t.Errorf("after the replay: %+v", st)
	}
}

// Without --run-id, the run id is the date and a hash of the input: the same command again is
// the same run, and publishes nothing twice; another input is another run. --json says so.
func TestEnqueueDefaultRunIDAndJSON(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	file := writeFile(t, "backfill.jsonl", runLines(0, 7))
	enqueue := func(path string) enqueueJSON {
		t.Helper()
		out, _, err := r.cli("", "enqueue", path, "--json", "--progress", "none")
		var doc enqueueJSON
		if err != nil || json.Unmarshal([]byte(out), &doc) != nil {
			t.Fatalf("enqueue --json: %v\n%s", err, out)
		}
		return doc
	}
	first := enqueue(file)
	if !regexp.MustCompile(`^[0-9]{8}-[0-9a-f]{10}$`).MatchString(first.Run) || first.Published != 7 || first.Lines != 7 {
		t.Fatalf("first: %+v", first)
	}
	again := enqueue(file)
	if again.Run != first.Run || again.Published != 0 || again.Duplicates != 7 {
		t.Errorf("the same command again: %+v, want run %s, 7 duplicates", again, first.Run)
	}
	other := enqueue(writeFile(t, "other.jsonl", runLines(50, 3)))
	if other.Run == first.Run || other.Published != 3 {
		t.Errorf("another input: %+v", other)
	}
	if st := r.runStatus(first.Run); st.Lines != 7 || st.Pending != 7 || st.State != queue.RunRunning {
		t.Errorf("status --run %s: %+v", first.Run, st)
	}
	m := r.workMsgs()[0]
	if m.Header.Get(queue.HeaderRunID) != first.Run || m.Header.Get(queue.HeaderRunLine) != "1" {
		t.Errorf("the first message's headers: %v", m.Header)
	}
}

// A failover from the active replica to a standby mid-run loses no count and counts nothing
// twice.
func TestRunCountsAcrossAFailover(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: 50 * time.Millisecond})
	fake.Reject(convID(5), 400)
	file := writeFile(t, "backfill.jsonl", runLines(0, 60))
	if _, _, err := r.cli("", "enqueue", file, "--run-id", "failover", "--progress", "none"); err != nil {
		t.Fatal(err)
	}
	slow := func(c *worker.Config) { c.Concurrency = 2 }
	stopActive := r.startDaemonPool(fake, slow)
	testwait.Until(t, "some lines applied", 30*time.Second, func() bool { return r.runStatus("failover").Applied >= 10 })
	r.startDaemonPool(fake, slow) // a standby while the first holds the pins
	stopActive()
	testwait.Until(t, "the run to end on the other replica", 90*time.Second, func() bool { return r.runStatus("failover").Finished() })
	st := r.runStatus("failover")
	if st.Applied != 59 || st.Dead != 1 || st.Pending != 0 {
		t.Errorf("after the failover: %+v", st)
	}
	if got := len(fake.Requests()); got < 60 {
		t.Errorf("the fake saw %d requests, want at least 60", got)
	}
}
