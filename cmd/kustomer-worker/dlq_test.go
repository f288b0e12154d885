package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// startWorker runs a worker pool against fake until the test ends, as `run` would.
func (r *opsRig) startWorker(fake *kustomertest.Server) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lanes, attempts, err := queue.BindLanes(ctx, r.js, r.top)
	if err != nil {
		r.t.Fatal(err)
	}
	client, err := kustomer.New(kustomer.Options{BaseURL: fake.URL, Key: kustomer.StaticKey("test-key"), Timeout: 5 * time.Second})
	if err != nil {
		r.t.Fatal(err)
	}
	pool := &worker.Pool{
		Consumer: lanes.Live, Backfill: lanes.Backfill, Client: client, Attempts: attempts,
		DeadLetters: &queue.DeadLetterPublisher{JS: r.js, Subject: r.top.DLQSubject},
		Pacer:       pacer.New(0),
		Config:      worker.Config{Concurrency: 4, ShutdownTimeout: time.Second, FetchWait: time.Second},
	}
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("worker: %v", err)
		}
		client.CloseIdleConnections()
	})
}

// status reads the streams as the status command does.
func (r *opsRig) status() queue.Status {
	r.t.Helper()
	st, err := queue.ReadStatus(context.Background(), r.js, r.top, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}

// listed runs dlq list --json and returns the dead letters by conversation.
func (r *opsRig) listed(args ...string) map[string]listedDeadLetter {
	r.t.Helper()
	out, stderr, err := r.cli("", append([]string{"dlq", "list", "--json"}, args...)...)
	if err != nil {
		r.t.Fatalf("dlq list: %v\n%s", err, stderr)
	}
	m := map[string]listedDeadLetter{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var d listedDeadLetter
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			r.t.Fatalf("%q: %v", l, err)
		}
		m[d.Conversation] = d
	}
	return m
}

func TestDeadLetterFixedReplayedAndApplied(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	fake.Reject(convID(2), 400) // Kustomer refuses conversation 2 until "fixed" on its side
	in := updateLine(1, `{"status":"done"}`) + "\n" + updateLine(2, `{"status":"done"}`) + "\n" + updateLine(3, `{"status":"done"}`) + "\n"
	if _, stderr, err := r.cli(in, "enqueue", "-", "--progress", "none"); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	// Another producer, without enqueue's validation, sends a message the worker must refuse.
	invalid := `{"id":"` + convID(4) + `","body":{"priority":9}}`
	if _, err := r.js.Publish(context.Background(), r.top.Subject, []byte(invalid)); err != nil {
		t.Fatal(err)
	}
	r.startWorker(fake)
	testwait.Until(t, "every message applied or dead-lettered", 10*time.Second, func() bool {
		st := r.status()
		return st.Processed == 4 && st.Backlog == 0 && st.DeadLetters == 2
	})

	dls := r.listed()
	rejected, inv := dls[convID(2)], dls[convID(4)]
	if len(dls) != 2 || rejected.Class != "rejected" || rejected.Status != 400 || inv.Class != "invalid" || inv.Status != 0 ||
		!strings.Contains(inv.Reason, "body.priority") || rejected.Attempts != 1 || rejected.FailedAt.IsZero() {
		t.Fatalf("dead letters = %+v", dls)
	}

	t.Run("list shows a table", func(t *testing.T) {
		out, stderr, err := r.cli("", "dlq", "list")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "SEQ  CONVERSATION") || stderr != "2 dead letters\n" {
			t.Fatalf("list:\n%s%s", out, stderr)
		}
		row := strings.Fields(lines[1])
		if row[0] != strconv.FormatUint(rejected.Seq, 10) {
			row = strings.Fields(lines[2])
		}
		if row[0] != strconv.FormatUint(rejected.Seq, 10) || row[1] != convID(2) || row[2] != "rejected" || row[3] != "400" || row[4] != "1" {
			t.Fatalf("row = %q", lines[1])
		}
	})
	t.Run("show gives the message and every header", func(t *testing.T) {
		out, _, err := r.cli("", "dlq", "show", strconv.FormatUint(rejected.Seq, 10))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"conversation " + convID(2), "Dlq-Class: rejected", "Dlq-Status: 400", "Dlq-Attempts: 1",
			"Dlq-Original-Subject: " + r.top.BackfillSubject + "." + convID(2), "Dlq-Original-Msg-Id: ", // enqueue's lane
			"\n" + updateLine(2, `{"status":"done"}`) + "\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("show lacks %q:\n%s", want, out)
			}
		}
		raw, _, err := r.cli("", "dlq", "show", "--raw", strconv.FormatUint(inv.Seq, 10))
		if err != nil || raw != invalid {
			t.Fatalf("show --raw = %q, %v; want the original bytes", raw, err)
		}
	})
	t.Run("an invalid message is not replayed unchanged", func(t *testing.T) {
		out, stderr, err := r.cli("", "dlq", "replay", "--class", "invalid")
		if err != nil || !strings.Contains(out, "replayed 0, skipped 1") || !strings.Contains(stderr, "--message-file") {
			t.Fatalf("replay: %v\n%s%s", err, out, stderr)
		}
		if len(r.listed()) != 2 {
			t.Fatal("a dead letter went missing")
		}
	})
	t.Run("a dry run changes nothing", func(t *testing.T) {
		out, _, err := r.cli("", "dlq", "replay", "--all", "--dry-run")
		if err != nil || !strings.Contains(out, "would replay "+strconv.FormatUint(rejected.Seq, 10)) {
			t.Fatalf("replay --dry-run: %v\n%s", err, out)
		}
		if st := r.status(); st.DeadLetters != 2 || st.Backlog != 0 {
			t.Fatalf("after a dry run: %+v", st)
		}
	})

	// Fixed on Kustomer's side: replay as it is.
	fake.Reject(convID(2), 0)
	out, stderr, err := r.cli("", "dlq", "replay", "--seq", strconv.FormatUint(rejected.Seq, 10))
	if err != nil || !strings.Contains(out, "replayed 1, skipped 0") {
		t.Fatalf("replay: %v\n%s%s", err, out, stderr)
	}
	// Fixed message: edit it, then replay it in place of the stored one.
	fixed := filepath.Join(t.TempDir(), "fixed.json")
	if err := os.WriteFile(fixed, []byte(strings.Replace(invalid, `"priority":9`, `"priority":3`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err = r.cli("", "dlq", "replay", "--seq", strconv.FormatUint(inv.Seq, 10), "--message-file", fixed)
	if err != nil || !strings.Contains(out, "replayed 1, skipped 0") {
		t.Fatalf("replay --message-file: %v\n%s%s", err, out, stderr)
	}

	testwait.Until(t, "both replayed updates applied", 10*time.Second, func() bool {
		c2, ok2 := fake.Conversation(convID(2))
		c4, ok4 := fake.Conversation(convID(4))
		return ok2 && c2.Attributes["status"] == "done" && ok4 && c4.Attributes["priority"] == float64(3)
	})
	testwait.Until(t, "an empty backlog", 10*time.Second, func() bool { return r.status().Backlog == 0 })
	if st := r.status(); st.DeadLetters != 0 {
		t.Fatalf("dead letters left: %+v", st)
	}
	if dls := r.listed(); len(dls) != 0 {
		t.Fatalf("dlq list still shows %+v", dls)
	}
}

func TestDLQPurgeAndFilters(t *testing.T) {
	r := newOpsRig(t)
	r.enqueueN(3)
	msgs := r.take(3)
	now := time.Now()
	r.deadLetter(msgs[0], queue.ClassInvalid, 0, now.Add(-3*time.Hour))
	r.deadLetter(msgs[1], queue.ClassRejected, 404, now.Add(-2*time.Hour))
	r.deadLetter(msgs[2], queue.ClassExhausted, 503, now.Add(-10*time.Minute))
	seqsOf := func(m map[string]listedDeadLetter) string {
		var out []uint64
		for _, d := range m {
			out = append(out, d.Seq)
		}
		slices.Sort(out)
		return fmt.Sprint(out)
	}

	t.Run("filters", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--class", "rejected"}, "[2]"},
			{[]string{"--class", "invalid,exhausted", "--status", "503"}, "[3]"},
			{[]string{"--status", "0"}, "[1]"},
			{[]string{"--since", "150m"}, "[2 3]"},
			{[]string{"--until", now.Add(-time.Hour).UTC().Format(time.RFC3339)}, "[1 2]"},
		} {
			if got := seqsOf(r.listed(c.args...)); got != c.want {
				t.Errorf("list %v = %v, want %s", c.args, got, c.want)
			}
		}
		_, _, err := r.cli("", "dlq", "list", "--class", "lost")
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("an unknown class: %v", err)
		}
	})
	t.Run("purge needs a selection and a confirmation", func(t *testing.T) {
		for _, args := range [][]string{
			{"dlq", "purge", "--status", "404"},
			{"dlq", "purge", "--yes"},
			{"dlq", "purge", "--all", "--class", "invalid", "--yes"},
			{"dlq", "replay"},
			{"dlq", "replay", "--seq", "1", "--class", "invalid", "--message-file", "x"},
		} {
			_, _, err := r.cli("", args...)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Errorf("%v: err = %v, want a usage error", args, err)
			}
		}
		out, _, err := r.cli("", "dlq", "purge", "--since", "1h", "--dry-run")
		if err != nil || !strings.Contains(out, "would delete 3 (exhausted 503") || !strings.Contains(out, "would delete 1 dead letter\n") {
			t.Fatalf("dry run: %v\n%s", err, out)
		}
		if n := len(r.listed()); n != 3 {
			t.Fatalf("a dry run deleted: %d left", n)
		}
	})
	t.Run("purge deletes what it selects", func(t *testing.T) {
		out, _, err := r.cli("", "dlq", "purge", "--since", "1h", "--yes")
		if err != nil || !strings.Contains(out, "deleted 1 dead letter\n") {
			t.Fatalf("purge: %v\n%s", err, out)
		}
		if got := seqsOf(r.listed()); got != "[1 2]" {
			t.Fatalf("left: %s", got)
		}
		out, _, err = r.cli("", "dlq", "purge", "--all", "--yes")
		if err != nil || !strings.Contains(out, "deleted 2 dead letters") || len(r.listed()) != 0 {
			t.Fatalf("purge --all: %v\n%s", err, out)
		}
	})
	t.Run("show of a missing sequence fails", func(t *testing.T) {
		_, _, err := r.cli("", "dlq", "show", "1")
		if !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("err = %v", err)
		}
	})
}
