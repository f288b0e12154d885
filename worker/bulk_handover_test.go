package worker_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

// Order across a handover in bulk mode: a backfill job that Kustomer applies long after the
// new active replica stopped waiting for the old one's messages (2 x AckWait + slack) must
// still not apply an older update after a newer one.
func TestBulkHandoverMidJob(t *testing.T) {
	const (
		ackWait = 4 * time.Second
		jobTime = 30 * time.Second // longer than 2 x AckWait + 10 s
		convs   = 12               // the first replica's share of the backfill lane: it pulls no more
	)
	h := bulkHandoverSetup(t, ackWait, kustomertest.Config{Budget: -1, BulkDuration: jobTime}, 2*time.Minute, nil)
	a, b := h.activeAndStandby(queue.LaneBackfill, 4, nil)

	// The active replica puts every conversation's backfill update in one job.
	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "the first replica to submit the job", 20*time.Second, func() bool { return h.fake.Stats().BulkJobs == 1 })

	// Both pins move to the running standby mid-job; a newer live update of each
	// conversation follows.
	// The live pin first: the backfill lane follows its holder (queue.Follower), so a
	// backfill pin moved alone could come back to the first replica before the live one moved.
	h.pinLive(b, a)
	h.pinBackfill(b, a, 1)
	h.publishRound(queue.LaneLive, convs, 1)

	testwait.Until(t, "the job complete and every update settled", 3*jobTime, func() bool {
		job := h.fake.BulkJobs()
		return len(job) >= 1 && job[0].State == kustomertest.JobComplete && queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0
	})
	stale := 0
	for c := range convs {
		conv, _ := h.fake.Conversation(id(c))
		if got := fmt.Sprint(conv.Attributes["name"]); got != "u-1" {
			stale++
			t.Logf("conversation %d ends as %s", c, got)
		}
	}
	singles := 0
	for c := range convs {
		for _, r := range h.fake.RequestsFor(id(c)) {
			if r.Kind == kustomertest.KindUpdate && r.Status == 200 && string(r.Body) == `{"name":"u-0"}` {
				singles++
			}
		}
	}
	t.Logf("%d of %d old updates also sent as single PUTs; %d jobs", singles, convs, h.fake.Stats().BulkJobs)
	if stale > 0 {
		t.Errorf("%d of %d conversations ended at their older update; want 0", stale, convs)
	}
}

// The pins split between the replicas mid-job: the new active takes the backfill lane, while
// the old one keeps the live lane and gets each conversation's newer live update. The old
// one reads the older backfill update (in its job, now followed by the other) directly from
// the stream, as the order across lanes has it; it must still not apply the newer update
// before that job is over, or the job applies the older one after it.
func TestBulkHandoverWithThePinsSplit(t *testing.T) {
	const (
		ackWait = 4 * time.Second
		jobTime = 20 * time.Second
		convs   = 12
	)
	h := bulkHandoverSetup(t, ackWait, kustomertest.Config{Budget: -1, BulkDuration: jobTime}, 2*time.Minute, nil)
	a, b := h.activeAndStandby(queue.LaneBackfill, 4, nil)
	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "the first replica to submit the job", 20*time.Second, func() bool { return h.fake.Stats().BulkJobs == 1 })

	h.unpin(queue.LaneBackfill)
	h.publish(queue.LaneBackfill, warmup, 1) // the next delivery pins the puller: the second replica
	testwait.Until(t, "the second replica pinned on the backfill lane, and the first to know it lost the pin", 20*time.Second, func() bool {
		return b.pin(queue.LaneBackfill).Active() && !a.pin(queue.LaneBackfill).Active()
	})
	h.pinLive(a, b) // the live lane stays with the first replica
	h.publishRound(queue.LaneLive, convs, 1)

	testwait.Until(t, "the job complete and every update settled", 4*jobTime, func() bool {
		job := h.fake.BulkJobs()
		return len(job) >= 1 && job[0].State == kustomertest.JobComplete && queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0
	})
	h.wantNoneStale(convs)
}

// The pins split the other way round: the live pin comes to one replica while the other,
// pinned on the backfill lane, still pulls it (it learns of the live pin at its next check of
// the server's, up to a quarter of PinnedTTL later) and submits a job of what it pulled. The
// replica on the live lane read the bulk bucket when its turn began, before that job was
// stored. Its order check finds each conversation's older backfill update in the stream,
// delivered to the other replica and in its job: it must not apply it directly, and the newer
// live update after it, while the job can still apply the older one.
func TestBulkPinsSplitJobAfterTheLiveTurnBegan(t *testing.T) {
	const (
		ackWait = 4 * time.Second
		jobTime = 20 * time.Second
		convs   = 12
	)
	// PinnedTTL one minute: the backfill replica checks the live pin every 15 s, so that it
	// keeps pulling for a while after the live pin went to the other.
	top := queue.Topology{AckWait: ackWait, MaxAckPending: 128, PinnedTTL: time.Minute, DedupWindow: time.Minute}
	var submits []*submitCounter // one per replica, in the order they start
	h := bulkHandoverSetupOn(t, handoverSetupOn(t, top, kustomertest.Config{Budget: -1, BulkDuration: jobTime}), 2*time.Minute, func(c *kustomer.Client) bulk.Client {
		sc := &submitCounter{Client: c}
		submits = append(submits, sc)
		return sc
	})
	a, b := h.activeAndStandby(queue.LaneBackfill, 4, nil)
	h.pinBackfill(b, a, 1)
	h.pinLive(a, b) // the first replica's live turn begins: nothing in the bulk bucket yet
	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "a replica to submit the job", 20*time.Second, func() bool { return h.fake.Stats().BulkJobs == 1 })
	if submits[1].n.Load() == 0 {
		t.Fatal("the first replica submitted the job: the second learned of the live pin before it pulled the backfill, and the case did not arise")
	}
	h.publishRound(queue.LaneLive, convs, 1)

	testwait.Until(t, "the job complete and every update settled", 4*jobTime, func() bool {
		job := h.fake.BulkJobs()
		return len(job) >= 1 && job[0].State == kustomertest.JobComplete && queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0
	})
	h.wantNoneStale(convs)
}

// The pins move twice mid-job, to the standby and back, as a connection that drops twice
// moves them, with a newer live update of each conversation between the moves.
func TestBulkHandoverThereAndBack(t *testing.T) {
	const (
		ackWait = 4 * time.Second
		jobTime = 20 * time.Second
		convs   = 12
	)
	h := bulkHandoverSetup(t, ackWait, kustomertest.Config{Budget: -1, BulkDuration: jobTime}, 2*time.Minute, nil)
	a, b := h.activeAndStandby(queue.LaneBackfill, 4, nil)
	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "the first replica to submit the job", 20*time.Second, func() bool { return h.fake.Stats().BulkJobs == 1 })
	move := func(to, from *replica, round int) {
		// The live pin first: the backfill lane follows it (queue.Follower).
		h.pinLive(to, from)
		h.pinBackfill(to, from, round)
	}
	move(b, a, 1)
	h.publishRound(queue.LaneLive, convs, 1)
	move(a, b, 2)

	testwait.Until(t, "the job complete and every update settled", 4*jobTime, func() bool {
		job := h.fake.BulkJobs()
		return len(job) >= 1 && job[0].State == kustomertest.JobComplete && queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0
	})
	h.wantNoneStale(convs)
}

// A replica whose bulk submit got no clear answer (a 503: the job may exist) stops submitting
// once it is no longer the active replica: a job it submitted later could apply its old
// updates after the new active replica applied newer ones. The new active sends the items
// again and holds their conversations' newer updates until the first job would be past its
// deadline.
func TestBulkHandoverStopsAnAmbiguousSubmit(t *testing.T) {
	const (
		ackWait  = 4 * time.Second
		deadline = 20 * time.Second
		convs    = 12
	)
	var submits []*submitCounter // one per replica, in the order they start
	h := bulkHandoverSetup(t, ackWait, kustomertest.Config{Budget: -1}, deadline, func(c *kustomer.Client) bulk.Client {
		sc := &submitCounter{Client: c}
		submits = append(submits, sc)
		return sc
	})
	a, b := h.activeAndStandby(queue.LaneBackfill, 4, nil)
	answers := make([]kustomertest.Answer, 40) // 503s: the first replica retries every 200 ms at most
	for i := range answers {
		answers[i] = kustomertest.Status(http.StatusServiceUnavailable)
	}
	h.fake.ScriptBulkSubmit(answers...)

	h.publishRound(queue.LaneBackfill, convs, 0)
	testwait.Until(t, "the first replica to retry its submit", 20*time.Second, func() bool { return submits[0].n.Load() >= 3 })
	// The live pin first: the backfill lane follows its holder (queue.Follower), so a
	// backfill pin moved alone could come back to the first replica before the live one moved.
	h.pinLive(b, a)
	h.pinBackfill(b, a, 1)
	testwait.Until(t, "the first replica to stop submitting", 20*time.Second, func() bool {
		return strings.Contains(a.logs.String(), "no longer the active replica: stopped submitting a bulk job")
	})
	stopped := submits[0].n.Load()
	h.publishRound(queue.LaneLive, convs, 1)
	testwait.Until(t, "every update settled", 4*deadline, func() bool { return queuetest.StreamMsgs(t, h.js, h.top.Stream) == 0 })
	h.wantNoneStale(convs)
	if more := submits[0].n.Load() - stopped; more > 0 {
		t.Errorf("the first replica submitted %d more times after it said it stopped; want none", more)
	}
}

// submitCounter counts the bulk submits one replica sends through the real client.
type submitCounter struct {
	*kustomer.Client
	n atomic.Int64
}

func (c *submitCounter) SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error) {
	c.n.Add(1)
	return c.Client.SubmitBulk(ctx, items)
}

// bulkHandoverSetup is handoverSetupWith with every replica in bulk mode (jobs of up to 100,
// the given deadline) on the bulk bucket; client, when set, wraps the replica's bulk client.
func bulkHandoverSetup(t *testing.T, ackWait time.Duration, fake kustomertest.Config, deadline time.Duration, client func(*kustomer.Client) bulk.Client) *handover {
	t.Helper()
	return bulkHandoverSetupOn(t, handoverSetupWith(t, ackWait, fake), deadline, client)
}

// bulkHandoverSetupOn puts every replica of h in bulk mode, as bulkHandoverSetup.
func bulkHandoverSetupOn(t *testing.T, h *handover, deadline time.Duration, client func(*kustomer.Client) bulk.Client) *handover {
	t.Helper()
	h.wire = func(p *worker.Pool, js jetstream.JetStream) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		store, err := queue.BindBulk(ctx, js, h.top, true)
		if err != nil {
			t.Fatal(err)
		}
		p.Config.Bulk = bulk.Config{Enabled: true, Size: 100, Min: 2, Linger: 100 * time.Millisecond, Deadline: deadline}
		p.BulkClient, p.BulkJobs = h.client, store
		if client != nil {
			p.BulkClient = client(h.client)
		}
	}
	return h
}

// pinBackfill moves the backfill lane's pin from replica from to replica to: it unpins the
// lane and publishes an update of conversation warmup (round tells it apart), whose delivery
// pins whichever replica's pull the server serves first, until to is pinned and from knows it
// is not.
func (h *handover) pinBackfill(to, from *replica, round int) {
	h.t.Helper()
	moved := func() bool { return to.pin(queue.LaneBackfill).Active() && !from.pin(queue.LaneBackfill).Active() }
	for try := 0; !moved(); try++ {
		if try == 10 {
			h.t.Fatal("the backfill pin never moved")
		}
		h.unpin(queue.LaneBackfill)
		h.publish(queue.LaneBackfill, warmup, 10*round+try)
		testwait.WithinEvery(5*time.Second, 20*time.Millisecond, moved)
	}
}

// wantNoneStale checks that each of conversations 0..convs-1 ended at its newer update, u-1.
func (h *handover) wantNoneStale(convs int) {
	h.t.Helper()
	stale := 0
	for c := range convs {
		conv, _ := h.fake.Conversation(id(c))
		if got := fmt.Sprint(conv.Attributes["name"]); got != "u-1" {
			stale++
			h.t.Logf("conversation %d ends as %s", c, got)
		}
	}
	if stale > 0 {
		h.t.Errorf("%d of %d conversations ended at their older update; want 0", stale, convs)
	}
}
