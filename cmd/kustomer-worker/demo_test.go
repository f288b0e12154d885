package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDemoEndsWithTheExpectedSummary(t *testing.T) {
	checkNoLeaks(t)
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	err := run(ctx, []string{"demo", "--updates", "200", "--budget", "200", "--window", "2s", "--latency", "0s", "--latency-jitter", "0s",
		"--concurrency", "8", "--data-dir", dir, "--progress", "plain"},
		&env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatalf("demo: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	// 200 updates: 2% invalid (4), 0.5% for deleted conversations (1), the rest applied
	// whatever the injected faults, since each is retried.
	s := summary(t, out)
	if s["applied"] != "195" || s["dead-lettered"] != "5" {
		t.Fatalf("summary:\n%s", out)
	}
	if !strings.Contains(out, "dead-lettered         5  (invalid 4, rejected 1, exhausted 0)\n") {
		t.Errorf("no split of the dead letters by class:\n%s", out)
	}
	for _, want := range []string{"answered 429", "answered 5xx and retried", "updates/s", "the budget allows 2s at best for 196 requests"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(stderr.String(), "\x1b[") {
		t.Errorf("progress drew a bar into a pipe:\n%q", stderr.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) == 0 {
		t.Errorf("--data-dir %s was not used", dir)
	}

	t.Run("bad settings are bad usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"demo", "--updates", "0"},
			{"demo", "--invalid", "0.8", "--rejected", "0.5"},
			{"demo", "--budget", "0"},
			{"demo", "--fault-rate", "1"},
		} {
			err := run(ctx, args, &env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }})
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Errorf("%v: err = %v, want a usage error", args, err)
			}
		}
	})
}

func TestDemoWithLiveUpdatesReportsTheirLatency(t *testing.T) {
	checkNoLeaks(t)
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := run(ctx, []string{"demo", "--updates", "60", "--budget", "30", "--window", "2s", "--latency", "0s", "--latency-jitter", "0s",
		"--fault-rate", "0", "--invalid", "0", "--rejected", "0", "--concurrency", "4", "--live-every", "250ms", "--progress", "none"},
		&env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatalf("demo: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	s := summary(t, out)
	applied, _ := strconv.Atoi(s["applied"])
	live := 0
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "live" && f[1] == "updates" {
			live, _ = strconv.Atoi(f[2])
		}
	}
	if live == 0 || applied != 60+live {
		t.Fatalf("every live update applied and timed: %d applied, %d live timed\n%s", applied, live, out)
	}
	if !strings.Contains(out, "publish to request p50 ") || !strings.Contains(out, "in one queue shared with the backfill") {
		t.Errorf("no latency line:\n%s", out)
	}
}
