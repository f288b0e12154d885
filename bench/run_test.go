package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/producer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

var (
	runLinesFlag = flag.Int("bench.run-lines", 100000, "lines of BenchmarkRun's backfill (-short: 500)")
	runHeldFlag  = flag.String("bench.run-held", "10,default", "BenchmarkRun's cells: full jobs' worth of messages held (MaxAckPending / 100), comma-separated; default is bulk.DefaultJobsHeld")
)

// BenchmarkRun measures a backfill run of 100,000 conversations (-short: 500) in bulk mode,
// as `enqueue` publishes it (run id and line headers, the run's record) and `run --bulk
// --rate-per-minute 1000 --concurrency 16` applies it (the binary, built here, in a process of
// its own), against
// the fake at 100 requests per 6-second window (1,000 a minute; -short: 100 per second) with
// bulk jobs taking 2 s (-short: 200 ms), as BenchmarkBulk scales it.
//
// One cell per bound of the messages held (-bench.run-held, in full jobs' worth): 10 is the
// bound before issue 25, the baseline; "default" is bulk.DefaultJobsHeld.
//
// Reported (medians): units spent (target at most 2,200 for 100,000), wall time, and its
// ratio to the time the budget allows for the units spent (target 1.1), the worker process's
// peak resident set (target 256 MiB), the size of the work stream with every line pending and
// of the runs stream at the end, and the latency of
// `status --run` (a fresh queue.RunReader's Read) with every line pending, before the worker
// starts (target under 1 s), and with every line applied, after: by a first reader, which
// reads every applied record and stores the run's summary, and by a second, which reads that.
func BenchmarkRun(b *testing.B) {
	n := pick("bench.run-lines", runLinesFlag, 500)
	budget := pick("bench.bulk-budget", bulkBudgetFlag, 100)
	window := pick("bench.bulk-window", bulkWindowFlag, time.Second)
	job := pick("bench.bulk-job", bulkJobFlag, 200*time.Millisecond)
	perMinute := int(float64(budget) * float64(time.Minute) / float64(window))
	fake := kustomertest.Config{Budget: budget, Window: window, BulkDuration: job, DisableLog: true}
	bin := buildWorker(b)
	for _, cell := range strings.Split(*runHeldFlag, ",") {
		held := bulk.DefaultJobsHeld
		if cell != "default" {
			v, err := strconv.Atoi(cell)
			if err != nil || v < 1 {
				b.Fatalf("bench.run-held: %q is not a number of jobs", cell)
			}
			held = v
		}
		b.Run(fmt.Sprintf("held_%d_jobs", held), func(b *testing.B) {
			var units, secs, ratio, rss, pendingMs, appliedMs, summaryMs, work, runs []float64
			for i := range repetitions(b) {
				r := newRunRig(b, fake, held)
				d := r.runDrain(bin, n, perMinute)
				allowed := float64(d.units) / float64(perMinute) * 60
				units, secs = append(units, float64(d.units)), append(secs, d.elapsed.Seconds())
				ratio = append(ratio, d.elapsed.Seconds()/allowed)
				rss = append(rss, d.peakRSSMiB)
				pendingMs, appliedMs = append(pendingMs, ms(d.statusPending)), append(appliedMs, ms(d.statusApplied))
				work, runs = append(work, d.workMiB), append(runs, d.runsMiB)
				summaryMs = append(summaryMs, ms(d.statusSummary))
				b.Logf("repetition %d: %d lines, held %d jobs: %.1fs, %d units (%d submits, %d reads, %d single PUTs; %.2f per 100), the budget allows %.1fs for them: %.2fx; worker's peak RSS %.0f MiB; status --run %.0f ms with %d pending, %.0f ms with %d applied (%.0f ms from its summary after); work stream %.1f MiB pending, runs stream %.1f MiB; run: %+v",
					i+1, n, held, d.elapsed.Seconds(), d.units, d.submits, d.reads, d.units-d.submits-d.reads, 100*float64(d.units)/float64(n),
					allowed, d.elapsed.Seconds()/allowed, d.peakRSSMiB, ms(d.statusPending), n, ms(d.statusApplied), n, ms(d.statusSummary), d.workMiB, d.runsMiB, d.final)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(units), "units")
			b.ReportMetric(median(units)*100/float64(n), "units/100updates")
			b.ReportMetric(median(secs), "s")
			b.ReportMetric(median(ratio), "x_budget_time")
			b.ReportMetric(median(rss), "peak_rss_MiB")
			b.ReportMetric(median(pendingMs), "status_ms_all_pending")
			b.ReportMetric(median(appliedMs), "status_ms_all_applied")
			b.ReportMetric(median(summaryMs), "status_ms_all_applied_summary")
			b.ReportMetric(median(work), "work_stream_MiB")
			b.ReportMetric(median(runs), "runs_stream_MiB")
		})
	}
}

// newRunRig is newBulkRig holding held full jobs' worth of messages.
func newRunRig(tb testing.TB, fake kustomertest.Config, held int) *rig {
	tb.Helper()
	r := newRig(tb, fake, 16)
	r.wc = worker.Config{Concurrency: 16, MaxAckPending: held * bulk.DefaultSize, Bulk: bulk.Config{Enabled: true}}.WithDefaults()
	r.top.MaxAckPending = r.wc.MaxAckPending
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, r.js, r.top); err != nil {
		tb.Fatal(err)
	}
	return r
}

// runDrained is one run of BenchmarkRun.
type runDrained struct {
	elapsed                      time.Duration
	units, submits, reads        int
	peakRSSMiB                   float64
	statusPending, statusApplied time.Duration
	statusSummary                time.Duration // a second reader, after the first stored the run's summary
	workMiB, runsMiB             float64       // the work stream with every line pending; the runs stream at the end
	final                        queue.RunStatus
}

// runDrain publishes n lines as enqueue does, under a run, reads the run's status with all of
// them pending, drains them with the daemon's pool in bulk mode, and reads it again.
func (r *rig) runDrain(bin string, n, perMinute int) runDrained {
	r.tb.Helper()
	const id = "bench"
	log := &queue.RunLog{JS: r.js, Topology: r.top}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := producer.New(r.nc, producer.Config{Lane: producer.Backfill})
	if err != nil {
		r.tb.Fatal(err)
	}
	start := time.Now()
	if err := log.Put(ctx, queue.Run{ID: id, Started: start, Lines: int64(n), Lane: "backfill"}); err != nil {
		r.tb.Fatal(err)
	}
	batch, err := p.NewBatch(producer.BatchConfig{})
	if err != nil {
		r.tb.Fatal(err)
	}
	for i := range n {
		msg := updateOf(i, i)
		if err := batch.PublishRunLine(ctx, queue.MsgID(id, int64(i+1), msg), convID(i), id, int64(i+1), msg); err != nil {
			r.tb.Fatal(err)
		}
	}
	if err := batch.Wait(ctx); err != nil {
		r.tb.Fatal(err)
	}
	batch.Close()
	if err := log.Put(ctx, queue.Run{ID: id, Started: start, Lines: int64(n), Lane: "backfill", Published: time.Now()}); err != nil {
		r.tb.Fatal(err)
	}

	var d runDrained
	d.workMiB = r.streamMiB(r.top.Stream)
	d.statusPending = r.timeRunStatus(log, id, func(st queue.RunStatus) bool { return st.Pending == int64(n) })

	st0 := r.fake.Stats()
	t0 := time.Now()
	stop := r.startWorkerProcess(bin, perMinute)
	r.waitDrained(st0.Applied+n, 60*time.Minute)
	d.elapsed = time.Since(t0)
	d.peakRSSMiB = stop()
	st := r.fake.Stats()
	d.units, d.submits, d.reads = st.Units-st0.Units, st.BulkSubmits-st0.BulkSubmits, st.BulkReads-st0.BulkReads
	d.statusApplied = r.timeRunStatus(log, id, func(st queue.RunStatus) bool { d.final = st; return st.Applied == int64(n) })
	d.statusSummary = r.timeRunStatus(log, id, func(st queue.RunStatus) bool { return st.Applied == int64(n) && st.Units == d.final.Units })
	d.runsMiB = r.streamMiB(r.top.RunsStream)
	return d
}

// streamMiB is the size of stream name's messages, in MiB.
func (r *rig) streamMiB(name string) float64 {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, name)
	if err != nil {
		r.tb.Fatal(err)
	}
	return float64(s.CachedInfo().State.Bytes) / (1 << 20)
}

// timeRunStatus times a fresh reader's first Read of run id, as `status --run` makes it, and
// checks what it read.
func (r *rig) timeRunStatus(log *queue.RunLog, id string, ok func(queue.RunStatus) bool) time.Duration {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	st, err := (&queue.RunReader{Log: log, ID: id}).Read(ctx)
	took := time.Since(t0)
	if err != nil {
		r.tb.Fatal(err)
	}
	if !ok(st) {
		r.tb.Fatalf("status --run read %+v", st)
	}
	return took
}

// startWorkerProcess runs `kustomer-worker run --bulk` (the binary bin) on the rig's NATS
// and fake, holding the rig's MaxAckPending, until the returned stop is called, which stops
// it with SIGTERM and returns its peak resident set in MiB.
func (r *rig) startWorkerProcess(bin string, perMinute int) (stop func() float64) {
	r.tb.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "run", "--bulk",
		"--nats-url", r.url,
		"--kustomer-url", r.fake.URL,
		"--rate-per-minute", strconv.Itoa(perMinute),
		"--concurrency", strconv.Itoa(r.wc.Concurrency),
		"--max-ack-pending", strconv.Itoa(r.top.MaxAckPending),
		"--http-addr", "127.0.0.1:0",
		"--log-level", "warn")
	cmd.Env = []string{"KUSTOMER_API_KEY=" + apiKey}
	cmd.Dir = r.tb.TempDir()
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		r.tb.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	r.tb.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return func() float64 {
		peak, err := peakRSS(cmd.Process.Pid)
		if err != nil {
			r.tb.Fatal(err)
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			r.tb.Fatal(err)
		}
		select {
		case err := <-exited:
			stopped = true
			if err != nil {
				r.tb.Fatalf("kustomer-worker run: %v\n%s", err, stderr.String())
			}
		case <-time.After(time.Minute):
			r.tb.Fatalf("kustomer-worker run did not stop within a minute of SIGTERM\n%s", stderr.String())
		}
		return peak
	}
}
