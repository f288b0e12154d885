package logflood_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logflood"
)

// clock is a settable time for the handler.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func setup(t *testing.T) (*slog.Logger, *logflood.Handler, *clock, *bytes.Buffer, map[string]int) {
	t.Helper()
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var out bytes.Buffer
	held := map[string]int{}
	var mu sync.Mutex
	h := logflood.New(slog.NewTextHandler(&out, nil), logflood.Options{
		Burst: 3, Interval: 10 * time.Second, Now: clk.Now,
		Suppressed: func(kind string) { mu.Lock(); held[kind]++; mu.Unlock() },
	})
	log := slog.New(h)
	return log, h, clk, &out, held
}

// logAt writes a record stamped with the clock's time, as slog would.
func logAt(log *slog.Logger, clk *clock, level slog.Level, msg string, args ...any) {
	r := slog.NewRecord(clk.Now(), level, msg, 0)
	r.Add(args...)
	_ = log.Handler().Handle(context.Background(), r)
}

func TestAFloodIsCutToABurstAndASummary(t *testing.T) {
	t.Parallel()
	log, _, clk, out, held := setup(t)
	jobLog := log.With("conversation", "abc")
	for range 1000 {
		logAt(jobLog, clk, slog.LevelWarn, "dead-lettered", "class", "invalid", "reason", "bad json")
	}
	for range 10 {
		logAt(log, clk, slog.LevelInfo, "request failed; retrying", "status", 503)
	}
	logAt(log, clk, slog.LevelError, "something else entirely")
	if n := strings.Count(out.String(), "dead-lettered"); n != 3 {
		t.Errorf("%d dead-lettered lines written; want the burst of 3", n)
	}
	if n := strings.Count(out.String(), "request failed"); n != 3 {
		t.Errorf("%d retry lines written; want 3", n)
	}
	if !strings.Contains(out.String(), "something else entirely") {
		t.Error("a line of another kind was held back")
	}
	if held["WARN dead-lettered class=invalid"] != 997 || held["INFO request failed; retrying status=503"] != 7 {
		t.Errorf("counted as held back: %v", held)
	}

	clk.Add(11 * time.Second)
	out.Reset()
	logAt(jobLog, clk, slog.LevelWarn, "dead-lettered", "class", "invalid")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("after the interval: %d lines; want the summary and the new line:\n%s", len(lines), out)
	}
	for _, want := range []string{"repeated log lines held back: 1004 in the last 11s", "997 × WARN dead-lettered class=invalid; 7 × INFO request failed; retrying status=503"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("summary %q lacks %q", lines[0], want)
		}
	}
	if !strings.Contains(lines[1], "conversation=abc") {
		t.Errorf("a new interval does not write the kind in full again: %q", lines[1])
	}
}

func TestFlushSummarizesAFloodThatStopped(t *testing.T) {
	t.Parallel()
	log, h, clk, out, _ := setup(t)
	for range 5 {
		logAt(log, clk, slog.LevelWarn, "dead-lettered", "class", "rejected", "status", 404)
	}
	if err := h.Flush(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "held back") {
		t.Fatal("summary before the interval ended")
	}
	clk.Add(10 * time.Second)
	if err := h.Flush(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "2 × WARN dead-lettered class=rejected status=404") {
		t.Errorf("no summary after the interval:\n%s", out)
	}
	out.Reset()
	if err := h.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Errorf("a summary of nothing: %s", out)
	}
}
