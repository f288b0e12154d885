package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

// bulkOptions are the options of a pool in bulk mode with jobs of up to size items, kept in
// the bulk bucket.
func (f *fixture) bulkOptions(size int, deadline time.Duration) options {
	return options{
		recover: true, // as the command does
		cfg:     worker.Config{Concurrency: 4, Bulk: bulk.Config{Enabled: true, Size: size, Min: 2, Linger: 100 * time.Millisecond, Deadline: deadline}},
		before: func(p *worker.Pool) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			store, err := queue.BindBulk(ctx, f.js, f.top, false)
			if err != nil {
				f.t.Fatal(err)
			}
			p.BulkClient, p.BulkJobs = f.client, store
		},
	}
}

// bulkSetup is setup for bulk mode, the pool not started yet.
func bulkSetup(t *testing.T, fake kustomertest.Config) *fixture {
	t.Helper()
	return setup(t, options{fake: fake, noStart: true})
}

// singles are the single PUTs the fake answered for conversation c, in order.
func (f *fixture) singles(c int) []kustomertest.Request {
	var out []kustomertest.Request
	for _, r := range f.fake.RequestsFor(id(c)) {
		if r.Kind == kustomertest.KindUpdate {
			out = append(out, r)
		}
	}
	return out
}

// records lists the bulk bucket.
func (f *fixture) records() []queue.BulkRecord {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store, err := queue.BindBulk(ctx, f.js, f.top, false)
	if err != nil {
		f.t.Fatal(err)
	}
	recs, err := store.List(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

func (f *fixture) wantState(convs int, want func(c int) string) {
	f.t.Helper()
	for c := range convs {
		conv, _ := f.fake.Conversation(id(c))
		if got := fmt.Sprint(conv.Attributes["name"]); got != want(c) {
			f.t.Errorf("conversation %d ends as %v; want %s", c, got, want(c))
		}
	}
}

func TestBulk(t *testing.T) {
	t.Run("sends a backlog in bulk jobs, one unit per job and its reads, each conversation's updates in order", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 300 * time.Millisecond})
		const convs, rounds = 40, 3
		f.publishRounds(convs, rounds)
		f.start(f.bulkOptions(20, time.Minute))
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return fmt.Sprintf("u-%d", rounds-1) })
		st := f.fake.Stats()
		if st.BulkItemsDone < convs*rounds*8/10 {
			t.Errorf("%d of %d updates applied in bulk; want most", st.BulkItemsDone, convs*rounds)
		}
		if st.Units > convs*rounds/2 {
			t.Errorf("%d units spent on %d updates; want well under one per update", st.Units, convs*rounds)
		}
		for c := range convs { // a conversation's items are applied in order, one job after the other
			var order []string
			for _, r := range f.fake.RequestsFor(id(c)) {
				if r.Kind == kustomertest.KindBulkSubmit {
					order = append(order, bulkName(t, r.Body, id(c)))
				} else if r.Kind == kustomertest.KindUpdate && r.Status == 200 {
					order = append(order, bulkName(t, r.Body, ""))
				}
			}
			for k, name := range order {
				if name != fmt.Sprintf("u-%d", k) {
					t.Fatalf("conversation %d sent in order %v", c, order)
				}
			}
		}
		if n := len(f.records()); n != 0 {
			t.Errorf("%d bulk jobs left in the bucket; want none", n)
		}
		t.Logf("%d updates: %d units, %d submits, %d reads", convs*rounds, st.Units, st.BulkSubmits, st.BulkReads)
	})

	t.Run("follows a job whose batches give no counts and list only those done to its end, re-sending nothing", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkUncounted: true, BulkBatchSize: 5, BulkDuration: 2 * time.Second})
		const convs, rounds = 20, 2
		f.publishRounds(convs, rounds)
		f.start(f.bulkOptions(20, time.Minute))
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return fmt.Sprintf("u-%d", rounds-1) })
		for c := range convs {
			if n := len(f.singles(c)); n != 0 {
				t.Errorf("conversation %d: %d single PUTs; want none (no item failed)", c, n)
			}
		}
	})
	t.Run("with two lanes, bulks the backfill and sends every live update as a single PUT", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 300 * time.Millisecond})
		const backfill, live = 60, 10
		for c := range backfill {
			f.publishLane(queue.LaneBackfill, c, `{"name":"backfill"}`)
		}
		for c := range live {
			f.publishLane(queue.LaneLive, backfill+c, `{"name":"live"}`)
		}
		o := f.bulkOptions(20, time.Minute)
		o.lanes = true
		f.start(o)
		f.waitDrained(60 * time.Second)
		for c := range live {
			if n := len(f.singles(backfill + c)); n != 1 {
				t.Errorf("live update %d went as %d single PUTs; want 1 (never in a job)", c, n)
			}
		}
		if st := f.fake.Stats(); st.BulkItemsDone < backfill*8/10 {
			t.Errorf("%d of %d backfill updates applied in bulk; want most", st.BulkItemsDone, backfill)
		}
	})

	t.Run("sends a failed item once as a single PUT, whose answer decides", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond})
		const convs = 20
		f.fake.FailBulk(id(3), "injected") // the single PUT applies it
		f.fake.FailBulk(id(4), "injected") //
		f.fake.Reject(id(5), 400)          // fails in bulk and as a single PUT: dead-lettered
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(20, time.Minute))
		f.waitDrained(30 * time.Second)
		f.wantState(convs, func(c int) string {
			if c == 5 {
				return "<nil>"
			}
			return "u-0"
		})
		for c := range convs {
			n := len(f.singles(c))
			want := 0
			if c >= 3 && c <= 5 {
				want = 1
			}
			if n != want {
				t.Errorf("conversation %d got %d single PUTs; want %d", c, n, want)
			}
		}
		dls := f.deadLetters()
		if len(dls) != 1 || !strings.Contains(dls[0].data, id(5)) || dls[0].header.Get(queue.HeaderStatus) != "400" {
			t.Errorf("dead letters %+v; want conversation 5's, with status 400", dls)
		}
	})

	t.Run("sends the items of a job refused as a whole (400) as single PUTs", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkStrict: true})
		f.fake.ScriptBulkSubmit(kustomertest.Status(400))
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(10, time.Minute))
		f.waitDrained(30 * time.Second)
		f.wantState(convs, func(int) string { return "u-0" })
		for c := range convs {
			if n := len(f.singles(c)); n != 1 {
				t.Errorf("conversation %d got %d single PUTs; want 1", c, n)
			}
		}
		if st := f.fake.Stats(); st.BulkJobs != 0 || st.BulkSubmits != 1 {
			t.Errorf("%d submits, %d jobs; want the one refused", st.BulkSubmits, st.BulkJobs)
		}
	})

	t.Run("retries a submit answered 429 and pauses for the window", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{})
		f.fake.ScriptBulkSubmit(kustomertest.Status(429))
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(10, time.Minute))
		f.waitDrained(30 * time.Second)
		f.wantState(convs, func(int) string { return "u-0" })
		if st := f.fake.Stats(); st.BulkJobs != 1 || st.BulkSubmits != 2 || st.BulkItemsDone != convs {
			t.Errorf("%d submits, %d jobs, %d items applied; want 2, 1, %d", st.BulkSubmits, st.BulkJobs, st.BulkItemsDone, convs)
		}
	})

	t.Run("retries a submit without an answer and holds newer updates until the lost submit's deadline", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{})
		f.fake.ScriptBulkSubmit(kustomertest.Drop())
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-1"}`)
		}
		start := time.Now()
		f.start(f.bulkOptions(10, 5*time.Second))
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return "u-1" })
		// The newer updates may go in more than one job when a loaded machine lets the linger
		// end before all of them are ready.
		jobs := f.fake.BulkJobs()
		if st := f.fake.Stats(); st.BulkSubmits != len(jobs)+1 || len(jobs) < 2 {
			t.Fatalf("%d submits, %d jobs; want the dropped one, its retry, and a job or more of the newer updates", st.BulkSubmits, len(jobs))
		}
		for _, j := range jobs[1:] {
			if held := j.Submitted.Sub(start); held < 5*time.Second {
				t.Errorf("newer updates went %s after the start; want them held until the dropped submit's deadline (5s)", held)
			}
		}
	})

	t.Run("holds newer updates after a submit answered 502 once the job was made, until the job would be past its deadline", func(t *testing.T) {
		// The job the 502 hid applies late (BulkDuration), after the retry's job: the newer
		// updates must wait for it, or it applies an older update over them.
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 3 * time.Second})
		f.fake.ScriptBulkSubmit(kustomertest.StatusAfterWork(http.StatusBadGateway))
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-1"}`)
		}
		start := time.Now()
		f.start(f.bulkOptions(10, 5*time.Second))
		f.waitDrained(60 * time.Second)
		testwait.Until(t, "every job complete", 30*time.Second, func() bool {
			for _, j := range f.fake.BulkJobs() {
				if j.State != kustomertest.JobComplete {
					return false
				}
			}
			return true
		})
		f.wantState(convs, func(int) string { return "u-1" })
		jobs := f.fake.BulkJobs()
		if len(jobs) < 3 {
			t.Fatalf("%d jobs; want the one the 502 hid, its retry's and the newer updates'", len(jobs))
		}
		if held := jobs[len(jobs)-1].Submitted.Sub(start); held < 5*time.Second {
			t.Errorf("the newer updates went %s after the start; want them held until the hidden job's deadline (5s)", held)
		}
	})

	t.Run("turns bulk off and finishes with single PUTs when the key may not read jobs", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkReadDenied: true})
		var logs syncBuffer
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		o := f.bulkOptions(10, time.Minute)
		before := o.before
		o.before = func(p *worker.Pool) {
			before(p)
			p.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		f.start(o)
		f.waitDrained(30 * time.Second)
		// Bulk is off: the next updates go as single PUTs at once.
		for c := range convs {
			f.publishUpdate(c+convs, `{"name":"u-1"}`)
		}
		f.waitDrained(30 * time.Second)
		f.wantState(2*convs, func(c int) string { return fmt.Sprintf("u-%d", c/convs) })
		if st := f.fake.Stats(); st.BulkSubmits != 1 {
			t.Errorf("%d bulk submits; want 1 (then bulk is off)", st.BulkSubmits)
		}
		if n := strings.Count(logs.String(), "lacks the role org.permission.bulk.read; bulk mode is off"); n != 1 {
			t.Errorf("%d log lines say bulk is off for the role org.permission.bulk.read; want 1:\n%s", n, logs.String())
		}
	})

	t.Run("sends a job's items as single PUTs past its deadline and holds newer updates until it is complete", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 7 * time.Second})
		const convs = 10
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(10, 5*time.Second))
		testwait.Until(t, "the job to be submitted", 10*time.Second, func() bool { return len(f.fake.BulkJobs()) == 1 })
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-1"}`)
		}
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return "u-1" })
		job := f.fake.BulkJobs()[0]
		for c := range convs {
			s := f.singles(c)
			if len(s) != 2 || bulkName(t, s[0].Body, "") != "u-0" || bulkName(t, s[1].Body, "") != "u-1" {
				t.Fatalf("conversation %d got single PUTs %v; want u-0 past the deadline, then u-1", c, s)
			}
			if s[1].Time.Before(job.CompleteAt) {
				t.Errorf("conversation %d's newer update went at %s, before the job completed at %s", c, s[1].Time, job.CompleteAt)
			}
		}
	})
}

// TestBulkCrash stops a pool hard while its job is in flight: the next pool settles the
// redelivered items by the job's result, without sending them again, and applies the
// conversations' newer updates after them.
func TestBulkCrash(t *testing.T) {
	f := bulkSetup(t, kustomertest.Config{BulkDuration: 3 * time.Second})
	const convs = 20
	for c := range convs {
		f.publishUpdate(c, `{"name":"u-0"}`)
	}
	for c := range convs {
		f.publishUpdate(c, `{"name":"u-1"}`)
	}
	o := f.bulkOptions(20, time.Minute)
	o.cfg.ShutdownTimeout = time.Millisecond
	f.start(o)
	testwait.Until(t, "the job to be submitted and stored", 10*time.Second, func() bool {
		recs := f.records()
		return len(recs) == 1 && recs[0].JobID != ""
	})
	f.stop() // the held items are handed back; the job runs on at Kustomer

	f.start(f.bulkOptions(20, time.Minute))
	f.waitDrained(60 * time.Second)
	f.wantState(convs, func(int) string { return "u-1" })
	st := f.fake.Stats()
	jobs := f.fake.BulkJobs()
	if st.BulkJobs != 2 || len(jobs) != 2 || len(jobs[0].Items) != convs {
		t.Fatalf("%d jobs; want the first one's %d items, then a second for the newer updates", st.BulkJobs, convs)
	}
	for c := range convs {
		if n := len(f.singles(c)); n != 0 {
			t.Errorf("conversation %d got %d single PUTs; want none: the job's result settles its item", c, n)
		}
	}
	if !jobs[1].Submitted.After(jobs[0].CompleteAt) {
		t.Errorf("the newer updates' job went at %s, before the first completed at %s", jobs[1].Submitted, jobs[0].CompleteAt)
	}
	testwait.Until(t, "the bucket to empty", 10*time.Second, func() bool {
		for _, r := range f.records() {
			if r.Settled.IsZero() {
				return false
			}
		}
		return true
	})
}

// bulkName is the "name" of the item of conversation conv in a bulk submit body, or of a single
// update's body when conv is "".
func bulkName(t *testing.T, body []byte, conv string) string {
	t.Helper()
	if conv == "" {
		var b struct{ Name string }
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatal(err)
		}
		return b.Name
	}
	var items []struct{ ID, Name string }
	if err := json.Unmarshal(body, &items); err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.ID == conv {
			return it.Name
		}
	}
	t.Fatalf("no item for %s in %s", conv, body)
	return ""
}

// Bulk submits and reads pass the auth gate and the outage breaker as single PUTs do: while
// either is closed, one probe at a time goes out, and once Kustomer answers every item is
// applied.
func TestBulkGates(t *testing.T) {
	t.Run("while the key is refused, bulk requests go out one probe at a time, and every item is applied once it works", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{BulkDuration: 4 * time.Second})
		const convs = 40
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(10, time.Minute))
		testwait.Until(t, "the jobs to be submitted", 10*time.Second, func() bool { return len(f.fake.BulkJobs()) == convs/10 })
		f.fake.SetAPIKey("rotated-key")
		f.publish(fmt.Sprintf(`{"id":%q,"replace":true,"body":{"name":"single"}}`, id(convs))) // a single PUT besides
		testwait.Until(t, "the pool to report the refused key", 10*time.Second, func() bool {
			return errors.Is(f.pool.Ready(), worker.ErrAuthBlocked)
		})
		// Probes wait 1s, then 2s: within 3s at most two, and one that was on its way.
		refused := func() int { return f.fake.Stats().ByStatus[401] }
		before := refused()
		if testwait.Within(3*time.Second, func() bool { return refused()-before > 3 }) {
			t.Errorf("%d requests answered 401 within 3s of the gate closing; want a probe at a time", refused()-before)
		}
		t.Logf("%d requests answered 401 within 3s of the gate closing", refused()-before)
		f.fake.SetAPIKey("test-key")
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return "u-0" })
		if c, _ := f.fake.Conversation(id(convs)); c.Attributes["name"] != "single" {
			t.Errorf("the single update ends as %v; want applied", c.Attributes["name"])
		}
		if err := f.pool.Ready(); err != nil {
			t.Errorf("Ready after the key works again = %v; want nil", err)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters for a key problem; want none", n)
		}
	})

	t.Run("bulk submits failing across jobs open the outage breaker, which lets one probe at a time through", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{})
		// Writes fail until the test lifts it, not for a count of submits: how many fail
		// before Ready reports the outage depends on how many were on their way when it
		// tripped, and a count used up early ends the outage within the window measured.
		f.fake.SetWritesDown(503)
		const convs = 40
		for c := range convs {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(f.bulkOptions(10, time.Minute))
		var unavailable *worker.Unavailable
		testwait.Until(t, "the pool to report Kustomer unavailable", 10*time.Second, func() bool {
			return errors.As(f.pool.Ready(), &unavailable)
		})
		submits := func() int { return f.fake.Stats().BulkSubmits }
		before := submits()
		if testwait.Within(2500*time.Millisecond, func() bool { return submits()-before > 3 }) {
			t.Errorf("%d bulk submits within 2.5s of the breaker opening; want a probe at a time", submits()-before)
		}
		t.Logf("%d bulk submits within 2.5s of the breaker opening", submits()-before)
		f.fake.SetWritesDown(0)
		f.waitDrained(60 * time.Second)
		f.wantState(convs, func(int) string { return "u-0" })
		if err := f.pool.Ready(); err != nil {
			t.Errorf("Ready once Kustomer answers = %v; want nil", err)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters for an outage; want none", n)
		}
	})
}
