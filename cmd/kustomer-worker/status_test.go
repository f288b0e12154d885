package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// enqueueN enqueues n updates, for conversations 0 to n-1, with the command.
func (r *opsRig) enqueueN(n int) {
	r.t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintln(&b, updateLine(i, `{"status":"done"}`))
	}
	if _, stderr, err := r.cli(b.String(), "enqueue", "-", "--progress", "none"); err != nil {
		r.t.Fatalf("enqueue: %v\n%s", err, stderr)
	}
}

// take fetches n messages from the backfill lane, where enqueueN put them, as a worker would, without acking them.
func (r *opsRig) take(n int) []jetstream.Msg {
	r.t.Helper()
	if r.cons == nil {
		cs, _, err := queue.BindLanes(context.Background(), r.js, r.top) // pulls in the priority group
		if err != nil {
			r.t.Fatal(err)
		}
		r.cons = cs.Backfill // enqueue publishes to the backfill lane
	}
	batch, err := r.cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		r.t.Fatal(err)
	}
	var out []jetstream.Msg
	for m := range batch.Messages() {
		out = append(out, m)
	}
	if len(out) != n {
		r.t.Fatalf("fetched %d messages, want %d", len(out), n)
	}
	return out
}

func (r *opsRig) ack(msgs ...jetstream.Msg) {
	r.t.Helper()
	for _, m := range msgs {
		if err := m.DoubleAck(context.Background()); err != nil {
			r.t.Fatal(err)
		}
	}
}

// deadLetter stores m as a dead letter and acks it, as the worker does.
func (r *opsRig) deadLetter(m jetstream.Msg, class queue.DeadLetterClass, status int, failedAt time.Time) {
	r.t.Helper()
	dl := &queue.DeadLetterPublisher{JS: r.js, Subject: r.top.DLQSubject}
	if err := dl.Publish(context.Background(), m, queue.Failure{
		Class: class, Status: status, Attempts: 1, FailedAt: failedAt, Reason: fmt.Sprintf("%s, status %d", class, status),
	}); err != nil {
		r.t.Fatal(err)
	}
	r.ack(m)
}

func TestStatusMatchesTheStreams(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	r.enqueueN(10)

	out, _, err := r.cli("", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var doc statusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if doc.Backlog != 10 || doc.Waiting != 10 || doc.InProgress != 0 || doc.Processed != 0 || doc.DeadLetters != 0 || !doc.Consumer {
		t.Fatalf("before any worker: %+v", doc)
	}

	// Two applied, three dead-lettered, one held by a worker and one handed back and taken
	// again; three never delivered.
	msgs := r.take(7)
	r.ack(msgs[0], msgs[1])
	r.deadLetter(msgs[2], queue.ClassRejected, 404, time.Now())
	r.deadLetter(msgs[3], queue.ClassRejected, 400, time.Now())
	r.deadLetter(msgs[4], queue.ClassInvalid, 0, time.Now())
	if err := msgs[5].Nak(); err != nil {
		t.Fatal(err)
	}
	// The server takes the Nak asynchronously: a take may hand out a new message before the
	// handed-back one, up to all three never delivered. Take until it comes, and count the new
	// ones in the want.
	extra := 0
	var again jetstream.Msg
	for {
		again = r.take(1)[0]
		if md, _ := again.Metadata(); md.NumDelivered == 2 {
			break
		}
		if extra++; extra > 3 {
			t.Fatal("the handed-back message was never redelivered")
		}
	}

	out, _, err = r.cli("", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	doc = statusDoc{}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	bf, lv := doc.Lanes["backfill"], doc.Lanes["live"]
	if bf.Backlog != 5 || bf.Waiting != uint64(3-extra) || bf.InProgress != 2+extra || bf.OldestAgeSeconds == nil ||
		bf.Consumer != r.top.BackfillConsumer || lv.Backlog != 0 || lv.OldestAgeSeconds != nil || !lv.ConsumerFound {
		t.Errorf("lanes: backfill %+v, live %+v", bf, lv)
	}
	doc.Time, doc.Lanes = time.Time{}, nil
	want := statusDoc{Stream: r.top.Stream, Backlog: 5, Waiting: uint64(3 - extra), InProgress: 2 + extra, Redelivered: 1, Processed: 5,
		Consumer: true, DeadLetters: 3, ByClass: map[string]int{"rejected": 2, "invalid": 1},
		Active: "pin " + r.cons.(*queue.Follower).Role().PinID, Replicas: []queue.ReplicaRole{}}
	if fmt.Sprint(doc) != fmt.Sprint(want) {
		t.Fatalf("status =\n %+v\nwant\n %+v", doc, want)
	}

	t.Run("the human form says the same", func(t *testing.T) {
		out, _, err := r.cli("", "status")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range []string{
			"work stream KUSTOMER_UPDATES",
			fmt.Sprintf("  backlog              5  (waiting %d, in progress %d, redelivered 1)", 3-extra, 2+extra),
			"  processed            5  (applied or dead-lettered since the stream was created)",
			"dead letters           3  (invalid 1, rejected 2)",
			"  live lane            0  (waiting 0, in progress 0)",
		} {
			if !strings.Contains(out, line+"\n") {
				t.Errorf("no line %q in\n%s", line, out)
			}
		}
		if line := fmt.Sprintf("\n  backfill lane        5  (waiting %d, in progress %d), oldest ", 3-extra, 2+extra); !strings.Contains(out, line) {
			t.Errorf("no line %q in\n%s", line, out)
		}
	})

	t.Run("watch measures throughput and time left", func(t *testing.T) {
		var stdout, stderr lockedBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		vars := map[string]string{"NATS_URL": r.url}
		go func() {
			done <- run(ctx, []string{"status", "--watch", "--json", "--interval", "100ms"},
				&env{stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return vars[k] }})
		}()
		lines := func() []statusDoc {
			var docs []statusDoc
			for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
				var d statusDoc
				if json.Unmarshal([]byte(l), &d) == nil {
					docs = append(docs, d)
				}
			}
			return docs
		}
		testwait.Until(t, "a first refresh", 5*time.Second, func() bool { return len(lines()) > 0 })
		r.ack(msgs[6], again) // two more applied
		testwait.Until(t, "a refresh with throughput", 5*time.Second, func() bool {
			d := lines()
			last := d[len(d)-1]
			bf := last.Lanes["backfill"]
			return last.Processed == 7 && last.PerSecond != nil && *last.PerSecond > 0 && last.ETASeconds != nil && *last.ETASeconds > 0 &&
				bf.PerSecond != nil && *bf.PerSecond == *last.PerSecond && bf.ETASeconds != nil && *bf.ETASeconds > 0
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("watch ended with %v", err)
		}
		d := lines()
		if d[0].PerSecond != nil {
			t.Errorf("the first refresh claims a throughput: %+v", d[0])
		}
	})

	t.Run("watch into a pipe prints a line per refresh", func(t *testing.T) {
		var stdout lockedBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		vars := map[string]string{"NATS_URL": r.url}
		go func() {
			done <- run(ctx, []string{"status", "--watch", "--interval", "100ms"},
				&env{stdout: &stdout, stderr: &lockedBuffer{}, getenv: func(k string) string { return vars[k] }})
		}()
		testwait.Until(t, "two refreshes", 5*time.Second, func() bool { return strings.Count(stdout.String(), "\n") >= 2 })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		first := strings.SplitN(stdout.String(), "\n", 2)[0]
		// The messages taken while waiting for the handed-back one (extra) are still held.
		if !strings.Contains(first, fmt.Sprintf(" backlog=3 waiting=%d in_progress=%d redelivered=0 processed=7 dead_letters=3 invalid=1 rejected=2", 3-extra, extra)) {
			t.Fatalf("line = %q", first)
		}
		if strings.Contains(stdout.String(), "\x1b[") {
			t.Fatal("escape codes written to a pipe")
		}
	})
}

func TestRateMeter(t *testing.T) {
	var m rateMeter
	t0 := time.Unix(1000, 0)
	m.add(t0, 100)
	if tp := m.throughput(50); tp.Known {
		t.Fatalf("one reading gives %+v", tp)
	}
	m.add(t0.Add(2*time.Second), 120)
	tp := m.throughput(50)
	if !tp.Known || tp.PerSecond != 10 || tp.ETA != 5*time.Second {
		t.Fatalf("throughput = %+v, want 10/s and 5s left", tp)
	}
	for i := 2; i <= 10; i++ {
		m.add(t0.Add(time.Duration(2*i)*time.Second), uint64(100+10*i))
	}
	if tp := m.throughput(10); tp.PerSecond != 5 {
		t.Fatalf("after a slowdown: %+v, want the pace of the last readings, 5/s", tp)
	}
	m.add(t0.Add(30*time.Second), 3) // the stream was recreated
	if tp := m.throughput(10); tp.Known {
		t.Fatalf("after a reset: %+v", tp)
	}
}

func TestStatusNamesTheActiveReplica(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	r.enqueueN(3)
	out, _, err := r.cli("", "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "replicas      no replica is pinned") {
		t.Errorf("before any worker pulled:\n%s", out)
	}

	// One replica pulls (and is pinned) and publishes its role, as run does.
	r.take(1)
	bf := r.cons.(*queue.Follower)
	roles, err := queue.BindRoles(context.Background(), r.js, r.top, false)
	if err != nil {
		t.Fatal(err)
	}
	rp := &queue.RolePublisher{Roles: roles, Pin: bf.Live(), Backfill: bf, Version: "v-test"}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = rp.Run(ctx) })
	// The pins are kept while this replica renews them (run does it too), else they lapse
	// after PinnedTTL on a slow machine, before the checks below.
	wg.Go(func() { _ = bf.Live().Run(ctx) })
	wg.Go(func() { _ = bf.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	var doc statusDoc
	testwait.Until(t, "status --json to name the active replica", 10*time.Second, func() bool {
		out, _, err := r.cli("", "status", "--json")
		if err != nil || json.Unmarshal([]byte(out), &doc) != nil {
			return false
		}
		return len(doc.Replicas) == 1 && !strings.HasPrefix(doc.Active, "pin ")
	})
	want := doc.Replicas[0].Host + " pid " + fmt.Sprint(doc.Replicas[0].PID)
	if doc.Active != want || doc.Replicas[0].Role != queue.RoleActive || doc.Shared {
		t.Errorf("status --json: active %q, replicas %+v, shared %v; want active %q", doc.Active, doc.Replicas, doc.Shared, want)
	}
	out, _, err = r.cli("", "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"replicas      active: " + want + " since ", "  active   " + want + ", v-test, since "} {
		if !strings.Contains(out, line) {
			t.Errorf("no line starting %q in\n%s", line, out)
		}
	}
}

func TestBackfillETAIsAtTheBudgetLiveLeaves(t *testing.T) {
	all := throughput{Known: true, PerSecond: 10, Live: laneThroughput{Known: true, PerSecond: 2}}
	if b := backfillThroughput(all, 80); !b.Known || b.PerSecond != 8 || b.ETA != 10*time.Second {
		t.Errorf("backfill %+v, want 8/s and 10s left", b)
	}
	all.Live.PerSecond = 12 // redeliveries counted in the live lane: never a negative pace
	if b := backfillThroughput(all, 80); b.PerSecond != 0 || b.ETA != 0 {
		t.Errorf("backfill %+v, want 0/s and no ETA", b)
	}
	if b := backfillThroughput(throughput{Known: true, PerSecond: 10}, 80); b.Known {
		t.Errorf("backfill %+v known without the live lane's pace", b)
	}
}
