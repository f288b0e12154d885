package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// BenchmarkEnqueue measures how fast a file of 100,000 update lines (-short: 5,000) gets into
// the work stream, three ways, in rotating order within each repetition:
//
//   - command: `kustomer-worker enqueue FILE` as a user runs it, timed from start to exit:
//     process start, connecting, validating every line, spooling, publishing with
//     queue.Publisher and waiting for every confirmation;
//   - publisher: queue.Publisher alone, as the command uses it (a Nats-Msg-Id per message,
//     the expected stream, confirmed publishes), reading the lines in this process with no
//     validation;
//   - baseline: plain jetstream PublishAsync of the same lines, with no id, no validation and
//     no retries.
//
// Reported: the medians of messages/s of each, and of the per-repetition ratios to the
// baseline. Target: the command at 30,000 messages/s or better.
func BenchmarkEnqueue(b *testing.B) {
	lines := pick("bench.enqueue-lines", enqueueLinesFlag, 5000)
	r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true}, 8)
	file := writeBackfill(b, lines)
	bin := buildWorker(b)
	ways := []struct {
		name    string
		publish func(runID string)
	}{
		{"baseline", func(string) { r.publishPlain(file) }},
		{"publisher", func(runID string) { r.publishWithPublisher(file, runID) }},
		{"command", func(runID string) { r.enqueueCommand(bin, file, runID) }},
	}
	rates := make(map[string][]float64)
	ratios := make(map[string][]float64)
	for i := range repetitions(b) {
		got := make(map[string]float64)
		for k := range ways {
			w := ways[(i+k)%len(ways)]
			// A run id of its own: purging the stream leaves its dedup window as it was.
			got[w.name] = r.timeEnqueue(lines, func() { w.publish(fmt.Sprintf("bench-%s-%d", w.name, i)) })
			rates[w.name] = append(rates[w.name], got[w.name])
		}
		for _, w := range ways {
			ratios[w.name] = append(ratios[w.name], got[w.name]/got["baseline"])
		}
		b.Logf("repetition %d: command %.0f msgs/s, publisher %.0f msgs/s, baseline %.0f msgs/s",
			i+1, got["command"], got["publisher"], got["baseline"])
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(rates["command"]), "msgs/s")
	b.ReportMetric(median(ratios["command"]), "ratio_vs_baseline")
	b.ReportMetric(median(rates["publisher"]), "publisher_msgs/s")
	b.ReportMetric(median(ratios["publisher"]), "publisher_ratio_vs_baseline")
	b.ReportMetric(median(rates["baseline"]), "baseline_msgs/s")
}

// writeBackfill writes a JSON Lines file of n updates and returns its path.
func writeBackfill(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "backfill.jsonl")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		_, _ = w.Write(update(i))
		_ = w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// timeEnqueue empties the work stream, runs publish, checks that the stream then holds n
// messages, and returns messages per second.
func (r *rig) timeEnqueue(n int, publish func()) float64 {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.stream.Purge(ctx); err != nil {
		r.tb.Fatal(err)
	}
	t0 := time.Now()
	publish()
	el := time.Since(t0)
	if got := r.streamMsgs(); got != uint64(n) {
		r.tb.Fatalf("the work stream holds %d messages after enqueueing %d", got, n)
	}
	return float64(n) / el.Seconds()
}

// enqueueCommand runs `kustomer-worker enqueue path` (the binary bin) against the work stream
// and waits for it to exit.
func (r *rig) enqueueCommand(bin, path, runID string) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "enqueue", path,
		"--nats-url", r.url, "--stream", r.top.Stream, "--subject", r.top.Subject,
		"--run-id", runID, "--progress", "none")
	cmd.Env = []string{}
	cmd.Dir = r.tb.TempDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		r.tb.Fatalf("kustomer-worker enqueue: %v\n%s", err, out)
	}
}

// eachLine calls f with every line of the file at path.
func eachLine(tb testing.TB, path string, f func(n int64, line []byte)) {
	tb.Helper()
	in, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 2<<20)
	n := int64(0)
	for sc.Scan() {
		n++
		f(n, bytes.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
}

// publishPlain publishes every line of path with jetstream PublishAsync, 4,096 at most
// waiting for their acknowledgement, and waits for all of them.
func (r *rig) publishPlain(path string) {
	r.tb.Helper()
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		r.tb.Fatal(err)
	}
	defer js.CleanupPublisher()
	eachLine(r.tb, path, func(_ int64, line []byte) {
		if _, err := js.PublishAsync(r.top.Subject, line); err != nil {
			r.tb.Fatal(err)
		}
	})
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		r.tb.Fatal("publishes not acknowledged within 5 minutes")
	}
}

// publishWithPublisher publishes every line of path with queue.Publisher at its default
// window, as the enqueue command does after validating, and waits until all are confirmed.
func (r *rig) publishWithPublisher(path, runID string) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pub, err := queue.NewPublisher(r.nc, queue.PublisherConfig{Stream: r.top.Stream})
	if err != nil {
		r.tb.Fatal(err)
	}
	defer pub.Close()
	eachLine(r.tb, path, func(n int64, line []byte) {
		if err := pub.Publish(ctx, r.top.Subject, line, queue.MsgID(runID, n, line)); err != nil {
			r.tb.Fatal(err)
		}
	})
	if err := pub.Wait(ctx); err != nil {
		r.tb.Fatal(err)
	}
}
