//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// BenchmarkMemory measures the peak resident memory of the worker process alone while it
// works through a backlog of 1,000 and of 100,000 messages (-short: 200 and 2,000). The
// benchmark builds cmd/kustomer-worker, publishes the backlog to an embedded NATS server in
// this process, then runs `kustomer-worker run --rate-per-minute 0` against it and the fake
// (no budget, no latency) until the work stream is empty, and reads the process's VmHWM.
// Reported: the medians of both peaks, of the per-repetition ratio large/small, and of the
// large run's updates/s. Targets: the large peak within 20 % of the small one, and under
// 64 MiB.
func BenchmarkMemory(b *testing.B) {
	small := pick("bench.small-backlog", smallBacklogFlag, 200)
	large := pick("bench.large-backlog", largeBacklogFlag, 2000)
	bin := buildWorker(b)
	var smallPeak, largePeak, growth, speed []float64
	for i := range repetitions(b) {
		s, _ := runWorkerProcess(b, bin, small)
		l, d := runWorkerProcess(b, bin, large)
		smallPeak, largePeak = append(smallPeak, s), append(largePeak, l)
		growth = append(growth, l/s)
		speed = append(speed, d.perSecond())
		b.Logf("repetition %d: peak RSS %.1f MiB with a backlog of %d, %.1f MiB with %d (drained at %.0f updates/s)",
			i+1, s, small, l, large, d.perSecond())
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(smallPeak), fmt.Sprintf("peak_rss_MiB_%d", small))
	b.ReportMetric(median(largePeak), fmt.Sprintf("peak_rss_MiB_%d", large))
	b.ReportMetric(median(growth), "rss_ratio_large_vs_small")
	b.ReportMetric(median(speed), "updates/s")
}

// runWorkerProcess publishes a backlog of n updates, runs the worker binary bin through it,
// and returns the process's peak RSS in MiB and how long it took.
func runWorkerProcess(tb testing.TB, bin string, n int) (float64, drain) {
	tb.Helper()
	r := newRig(tb, kustomertest.Config{Budget: -1, DisableLog: true}, 8)
	r.backlog(0, n)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "run",
		"--nats-url", r.url,
		"--kustomer-url", r.fake.URL,
		"--rate-per-minute", "0",
		"--http-addr", "127.0.0.1:0",
		"--log-level", "warn")
	cmd.Env = []string{"KUSTOMER_API_KEY=" + apiKey}
	cmd.Dir = tb.TempDir()
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	tb.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	r.waitDrained(n, 10*time.Minute)
	d := drain{elapsed: time.Since(t0), n: n}
	peak, err := peakRSS(cmd.Process.Pid)
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			tb.Fatalf("kustomer-worker run: %v\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		tb.Fatalf("kustomer-worker run did not stop within a minute of SIGTERM\n%s", stderr.String())
	}
	return peak, d
}

// peakRSS reads VmHWM, the peak resident set size, of process pid, in MiB.
func peakRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM of process %d: %w", pid, err)
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
