package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// heldReads is the bulk client of a pool, the real one, except that the reads of a job whose
// items hold a name given to hold wait until the test releases that name: a job stays
// unfinished (for the bulker) as long as the test needs. It also lists the items submitted.
type heldReads struct {
	*kustomer.Client
	mu      sync.Mutex
	hold    map[string]chan struct{} // by item name
	jobs    map[string]chan struct{} // by job id
	items   []kustomer.BulkItem
	answers map[string][]kustomer.BulkItem // the items of each job accepted, by id
	// unanswered: a submit with an item of this name never reaches Kustomer and never
	// gets an answer (until its context ends); blocked counts such submits.
	unanswered string
	blocked    int
}

func newHeldReads(c *kustomer.Client, names ...string) *heldReads {
	h := &heldReads{Client: c, hold: make(map[string]chan struct{}), jobs: make(map[string]chan struct{}),
		answers: make(map[string][]kustomer.BulkItem)}
	for _, n := range names {
		h.hold[n] = make(chan struct{})
	}
	return h
}

func itemName(it kustomer.BulkItem) string {
	var b struct{ Name string }
	_ = json.Unmarshal(it.Update.Body, &b)
	return b.Name
}

func (h *heldReads) SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error) {
	h.mu.Lock()
	for _, it := range items {
		if h.unanswered != "" && itemName(it) == h.unanswered {
			h.blocked++
			h.mu.Unlock()
			<-ctx.Done()
			return nil, ctx.Err()
		}
	}
	h.mu.Unlock()
	job, err := h.Client.SubmitBulk(ctx, items)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		return job, err
	}
	h.items = append(h.items, items...)
	h.answers[job.ID] = items
	for _, it := range items {
		if ch, ok := h.hold[itemName(it)]; ok {
			h.jobs[job.ID] = ch
		}
	}
	return job, err
}

func (h *heldReads) ReadBulkBatches(ctx context.Context, jobID string) (*kustomer.BulkBatches, error) {
	h.mu.Lock()
	ch := h.jobs[jobID]
	h.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Client.ReadBulkBatches(ctx, jobID)
}

// release lets the reads of the jobs with an item named name go on.
func (h *heldReads) release(name string) { close(h.hold[name]) }

// submitted counts the items named name in accepted submits.
func (h *heldReads) submitted(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, it := range h.items {
		if itemName(it) == name {
			n++
		}
	}
	return n
}

// bulkCoalescing is a pool in bulk mode on its one lane (live) with --coalesce live, whose
// first bulk jobs (the updates named "u-0") are not seen complete until the test says: meanwhile
// the conversations' newer updates queue behind them, and go merged in the next job.
type bulkCoalescing struct {
	*fixture
	acks    *ackLog
	metrics *worker.Metrics
	reads   *heldReads
	opts    options
	run     string // the run every message is a line of; "" for none
	runs    *queue.RunLog
	line    int
}

// publishLine publishes an update of conversation conv, as a line of s.run if any.
func (s *bulkCoalescing) publishLine(conv int, body string) {
	s.t.Helper()
	if s.run == "" {
		s.publishUpdate(conv, body)
		return
	}
	s.line++
	msg := nats.NewMsg(s.top.Subject)
	msg.Data = fmt.Appendf(nil, `{"id":%q,"body":%s}`, id(conv), body)
	msg.Header.Set(queue.HeaderRunID, s.run)
	msg.Header.Set(queue.HeaderRunLine, strconv.Itoa(s.line))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.js.PublishMsg(ctx, msg); err != nil {
		s.t.Fatal(err)
	}
}

// runStatus reads s.run's status.
func (s *bulkCoalescing) runStatus() queue.RunStatus {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := (&queue.RunReader{Log: s.runs, ID: s.run}).Read(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

const bulkConvs = 8

// the updates of each conversation after its first: merged, they leave what applying each
// alone in order leaves.
var bulkRounds = []string{
	`{"name":"u-1","tags":["a"],"priority":1}`,
	`{"name":"u-2","priority":2}`,
	`{"name":"u-3","status":"done","assignedUsers":["u1"]}`,
}

func wantBulkFinal(t *testing.T, fake *kustomertest.Server) {
	t.Helper()
	want := map[string]string{"name": `"u-3"`, "tags": `["a"]`, "priority": `2`, "status": `"done"`, "assignedUsers": `["u1"]`}
	for c := range bulkConvs {
		conv, _ := fake.Conversation(id(c))
		for k, v := range want {
			if b, _ := json.Marshal(conv.Attributes[k]); string(b) != v {
				t.Errorf("conversation %d: %s = %s; want %s (as applying each update alone)", c, k, b, v)
			}
		}
	}
}

// seqOf is the stream sequence of round r's update of conversation c (rounds published one
// after the other, conversations in order).
func seqOf(r, c int) uint64 { return uint64(r*bulkConvs + c + 1) }

// setupBulkCoalescing starts the pool, publishes each conversation's first update, waits
// until they are all submitted, then publishes the others and waits until the pool holds
// them. With a run id, every message is a line of that run (line = stream sequence), and the
// pool records the lines applied (Pool.Runs).
func setupBulkCoalescing(t *testing.T, fake kustomertest.Config, deadline time.Duration, run string, hold ...string) *bulkCoalescing {
	t.Helper()
	s := &bulkCoalescing{fixture: bulkSetup(t, fake), run: run}
	s.metrics = worker.NewMetrics(prometheus.NewRegistry())
	s.reads = newHeldReads(s.client, hold...)
	o := s.bulkOptions(20, deadline)
	o.cfg.Coalesce = worker.CoalesceLanes{Live: true}
	o.cfg.OutageThreshold = -1
	o.cfg.ShutdownTimeout = time.Millisecond // a stop is a crash: nothing waits for a job
	before := o.before
	if run != "" {
		s.runs = &queue.RunLog{JS: s.js, Topology: s.top}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.runs.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
		n := int64(bulkConvs * (1 + len(bulkRounds)))
		if err := s.runs.Put(ctx, queue.Run{ID: run, Started: time.Now(), Lines: n, Lane: "live", Published: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	o.before = func(p *worker.Pool) {
		before(p)
		p.BulkClient = s.reads
		p.Metrics = s.metrics
		if s.runs != nil {
			p.Runs = s.runs
		}
	}
	o.consumer = func(c jetstream.Consumer) jetstream.Consumer { s.acks = &ackLog{Consumer: c}; return s.acks }
	s.opts = o
	for c := range bulkConvs {
		s.publishLine(c, `{"name":"u-0"}`)
	}
	s.start(o)
	testwait.Until(t, "every first update submitted in a bulk job", 30*time.Second, func() bool { return s.reads.submitted("u-0") == bulkConvs })
	for _, b := range bulkRounds {
		for c := range bulkConvs {
			s.publishLine(c, b)
		}
	}
	testwait.Until(t, "the pool to hold every update", 30*time.Second, func() bool {
		return testutil.ToFloat64(s.metrics.Held) == float64(bulkConvs*(1+len(bulkRounds)))
	})
	return s
}

// mergedRecords are the records of the bucket whose items have members.
func (s *bulkCoalescing) mergedRecords() []queue.BulkRecord {
	var out []queue.BulkRecord
	for _, r := range s.records() {
		if len(r.Items) > 0 && len(r.Items[0].Members) > 0 {
			out = append(out, r)
		}
	}
	return out
}

// wantMembers checks that recs list, for every conversation, one item: its second update,
// with its third and fourth as members.
func (s *bulkCoalescing) wantMembers(recs []queue.BulkRecord) {
	s.t.Helper()
	seen := 0
	for _, r := range recs {
		for _, it := range r.Items {
			c := int(it.Seq-1) % bulkConvs
			if it.Conv != id(c) || it.Seq != seqOf(1, c) || len(it.Members) != 2 ||
				it.Members[0].Seq != seqOf(2, c) || it.Members[1].Seq != seqOf(3, c) ||
				it.Members[0].Conv != id(c) || it.Members[0].Stored == 0 || it.Members[1].Stored == 0 || it.LastSeq() != seqOf(3, c) {
				s.t.Errorf("record item %+v; want conversation %d's message %d with members %d and %d", it, c, seqOf(1, c), seqOf(2, c), seqOf(3, c))
			}
			seen++
		}
	}
	if seen != bulkConvs {
		s.t.Errorf("%d merged items recorded; want %d, one per conversation", seen, bulkConvs)
	}
}

// wantAckedInOrder checks that each conversation's messages were acknowledged once each, in
// stream order.
func (s *bulkCoalescing) wantAckedInOrder() {
	s.t.Helper()
	per := make(map[int][]uint64)
	for _, seq := range s.acks.acked() {
		c := int(seq-1) % bulkConvs
		per[c] = append(per[c], seq)
	}
	for c := range bulkConvs {
		want := []uint64{seqOf(0, c), seqOf(1, c), seqOf(2, c), seqOf(3, c)}
		if !equalSeqs(per[c], want) {
			s.t.Errorf("conversation %d acknowledged %v; want %v, once each, in stream order", c, per[c], want)
		}
	}
}

func TestCoalesceBulk(t *testing.T) {
	t.Run("a merged item goes as one item of a job whose record lists every member, and acknowledges them all in stream order", func(t *testing.T) {
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond}, time.Minute, "", "u-0", "u-3")
		s.reads.release("u-0")
		testwait.Until(t, "every merged item submitted", 30*time.Second, func() bool { return s.reads.submitted("u-3") == bulkConvs })
		var recs []queue.BulkRecord
		testwait.Until(t, "the merged items' jobs stored with their ids", 10*time.Second, func() bool {
			recs = s.mergedRecords()
			n := 0
			for _, r := range recs {
				if r.JobID == "" {
					return false
				}
				n += len(r.Items)
			}
			return n == bulkConvs
		})
		s.wantMembers(recs)
		s.reads.release("u-3")
		s.waitDrained(60 * time.Second)

		wantBulkFinal(t, s.fake)
		s.wantAckedInOrder()
		items := 0
		for _, j := range s.fake.BulkJobs() {
			items += len(j.Items)
		}
		if items != 2*bulkConvs {
			t.Errorf("%d bulk items submitted; want %d: one per conversation's first update, one per merged three", items, 2*bulkConvs)
		}
		for c := range bulkConvs {
			if n := len(s.singles(c)); n != 0 {
				t.Errorf("conversation %d: %d single PUTs; want none", c, n)
			}
		}
		if got := testutil.ToFloat64(s.metrics.Coalesced); got != 2*bulkConvs {
			t.Errorf("coalesced_messages_total %v; want %d", got, 2*bulkConvs)
		}
		if got := testutil.ToFloat64(s.metrics.CoalesceSaved); got != 0 {
			t.Errorf("coalesce_units_saved_total %v; want 0 (a merged bulk item saves items of a job, not requests)", got)
		}
		if got := testutil.ToFloat64(s.metrics.Updates.WithLabelValues("applied")); got != 4*bulkConvs {
			t.Errorf("updates_total{applied} %v; want %d", got, 4*bulkConvs)
		}
		if n := len(s.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("after a crash with a merged item's job in flight, each redelivered member is settled by the job's result, nothing sent again", func(t *testing.T) {
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 300 * time.Millisecond}, time.Minute, "", "u-0", "u-3")
		s.reads.release("u-0")
		testwait.Until(t, "the merged items' jobs stored with their ids", 30*time.Second, func() bool {
			n := 0
			for _, r := range s.mergedRecords() {
				if r.JobID == "" {
					return false
				}
				n += len(r.Items)
			}
			return n == bulkConvs
		})
		jobs := len(s.fake.BulkJobs())
		s.stop() // the merged items' reads never came back: their messages go back unacknowledged

		o := s.bulkOptions(20, time.Minute)
		o.cfg.Coalesce = worker.CoalesceLanes{Live: true}
		s.start(o)
		s.waitDrained(60 * time.Second)
		wantBulkFinal(t, s.fake)
		if n := len(s.fake.BulkJobs()); n != jobs {
			t.Errorf("%d bulk jobs; want the %d of the first process: the members are settled by its job", n, jobs)
		}
		for c := range bulkConvs {
			if n := len(s.singles(c)); n != 0 {
				t.Errorf("conversation %d: %d single PUTs; want none", c, n)
			}
		}
		if n := len(s.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("a merged item whose submit got no clear answer fences its conversation at its last member: newer updates wait for the job's deadline", func(t *testing.T) {
		const deadline = 8 * time.Second
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond}, deadline, "", "u-0")
		s.fake.ScriptBulkSubmit(kustomertest.Status(http.StatusServiceUnavailable)) // the merged job's first submit
		s.reads.release("u-0")
		var rec queue.BulkRecord
		testwait.Until(t, "the merged job complete, its record kept with a fence", 30*time.Second, func() bool {
			recs := s.mergedRecords()
			if len(recs) != 1 || recs[0].Settled.IsZero() {
				return false
			}
			rec = recs[0]
			return true
		})
		if rec.Ambiguous.IsZero() || !rec.FenceUntil.Equal(rec.Submitted.Add(deadline)) {
			t.Errorf("record ambiguous at %v, fenced until %v; want ambiguous, fenced until its deadline %v", rec.Ambiguous, rec.FenceUntil, rec.Submitted.Add(deadline))
		}
		s.wantMembers([]queue.BulkRecord{rec})
		for c := range bulkConvs {
			s.publishUpdate(c, `{"name":"u-4"}`)
		}
		s.waitDrained(60 * time.Second)
		for c := range bulkConvs {
			conv, _ := s.fake.Conversation(id(c))
			if got := fmt.Sprint(conv.Attributes["name"]); got != "u-4" {
				t.Errorf("conversation %d ends as %s; want u-4", c, got)
			}
		}
		for _, r := range s.fake.Requests() { // a bulk submit or a single PUT
			if strings.Contains(string(r.Body), "u-4") && r.Time.Before(rec.FenceUntil) {
				t.Errorf("a newer update sent at %v (%s), before the fence ended at %v", r.Time, r.Kind, rec.FenceUntil)
			}
		}
	})

	t.Run("after a crash during a merged item's submit, its redelivered updates go again at once: the fence stands at its last update, not its first", func(t *testing.T) {
		const deadline = 2 * time.Minute
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond}, deadline, "", "u-0")
		s.reads.mu.Lock()
		s.reads.unanswered = "u-3"
		s.reads.mu.Unlock()
		s.reads.release("u-0")
		testwait.Until(t, "the merged job's submit to be under way", 30*time.Second, func() bool {
			s.reads.mu.Lock()
			defer s.reads.mu.Unlock()
			return s.reads.blocked > 0
		})
		s.stop() // the submit is cut short without an answer: the job may exist
		recs := s.mergedRecords()
		if len(recs) != 1 || recs[0].JobID != "" {
			t.Fatalf("records %+v; want the merged job's, without an id", recs)
		}
		if recs[0].Ambiguous.IsZero() {
			t.Errorf("the record of the submit the shutdown cut short is not marked ambiguous; want it marked: the job may exist")
		}
		fence := recs[0].Submitted.Add(deadline)

		o := s.bulkOptions(20, deadline) // without --coalesce: each redelivered update is an item of its own
		s.start(o)
		s.waitDrained(60 * time.Second)
		if !time.Now().Before(fence) {
			t.Fatalf("drained after the fence ended at %v; want the redelivered updates sent at once", fence)
		}
		wantBulkFinal(t, s.fake)
	})

	t.Run("a merged item the job failed goes again as one merged PUT, which applies every member", func(t *testing.T) {
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond, BulkFailRate: 1}, time.Minute, "", "u-0")
		s.reads.release("u-0")
		s.waitDrained(60 * time.Second)
		wantBulkFinal(t, s.fake)
		s.wantAckedInOrder()
		for c := range bulkConvs {
			singles := s.singles(c)
			if len(singles) != 2 {
				t.Errorf("conversation %d: %d single PUTs; want 2 (its first update, then the merged three)", c, len(singles))
				continue
			}
			var body map[string]any
			_ = json.Unmarshal(singles[1].Body, &body)
			if body["name"] != "u-3" || body["priority"] != float64(2) || body["status"] != "done" {
				t.Errorf("conversation %d: second PUT %s; want the merged update", c, singles[1].Body)
			}
		}
		if n := len(s.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
		if got := testutil.ToFloat64(s.metrics.CoalesceSaved); got != 2*bulkConvs {
			t.Errorf("coalesce_units_saved_total %v; want %d (each merged PUT applied spared two)", got, 2*bulkConvs)
		}
	})

	t.Run("a merged item handed back while its job may still apply it is not split by a 422: every update is dead-lettered naming the group", func(t *testing.T) {
		const deadline = 5 * time.Second // the jobs take a minute: each goes past it
		s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: time.Minute}, deadline, "", "u-0")
		for c := range bulkConvs { // the first update's single PUT applies, the merged one's is refused
			s.fake.Script(id(c), kustomertest.Answer{}, kustomertest.Status(http.StatusUnprocessableEntity))
		}
		s.reads.release("u-0")
		s.waitDrained(60 * time.Second)
		dls := s.deadLetters()
		if len(dls) != len(bulkRounds)*bulkConvs {
			t.Errorf("%d dead letters; want %d, every merged update's", len(dls), len(bulkRounds)*bulkConvs)
		}
		for _, d := range dls {
			if g := d.header.Get(queue.HeaderGroup); strings.Count(g, ",") != len(bulkRounds)-1 {
				t.Errorf("dead letter %s names the group %q; want its %d messages", d.data, g, len(bulkRounds))
			}
		}
		for c := range bulkConvs {
			if n := len(s.singles(c)); n != 2 {
				t.Errorf("conversation %d: %d single PUTs; want 2 (its first update, the merged one, not split)", c, n)
			}
		}
	})

	for _, tc := range []struct {
		name        string
		fail        float64
		bulk, units int64
	}{
		{"every line of a run merged into a bulk item counts as applied in its job", 0, 4 * bulkConvs, 0},
		{"every line of a run merged into a single PUT counts as applied, its units on the first", 1, 0, 2 * bulkConvs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := setupBulkCoalescing(t, kustomertest.Config{BulkDuration: 200 * time.Millisecond, BulkFailRate: tc.fail}, time.Minute, "r1", "u-0")
			s.reads.release("u-0")
			s.waitDrained(60 * time.Second)
			wantBulkFinal(t, s.fake)
			var st queue.RunStatus
			testwait.Until(t, "the run done", 30*time.Second, func() bool { st = s.runStatus(); return st.Finished() })
			if want := int64(bulkConvs * (1 + len(bulkRounds))); st.Applied != want || st.State != queue.RunDone {
				t.Errorf("run status %s with %d applied; want %s with %d", st.State, st.Applied, queue.RunDone, want)
			}
			if st.BulkApplied != tc.bulk || st.Units < tc.units {
				t.Errorf("run status: %d applied in bulk jobs, %d units; want %d in bulk, at least %d units", st.BulkApplied, st.Units, tc.bulk, tc.units)
			}
		})
	}
}
