package worker

import (
	"context"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// In bulk mode (Config.Bulk) process offers each head message to the bulker (package bulk)
// before it would send it; the bulker reaches the pool only through bulkHost, with items
// whose handle is the conversation and its head job. While the bulker holds an item, the
// conversation is in its hands (see the package documentation's invariants).

// heldItem is a bulk.Item's handle: the conversation and its head job.
type heldItem struct {
	c *conv
	j *job
}

// bulkItem is c's head job j, delivered that many times, as the bulker sees it. Called by
// the worker holding c. With --coalesce on j's lane, an item that goes in a job is offered
// with its group fixed (gather, as at a single PUT's first try): the merged update, and its
// members, which the job's record lists. A redelivery that belongs to a job another process
// submitted goes as it is, alone, to be settled by that job's result.
func (p *Pool) bulkItem(c *conv, j *job, delivered uint64) bulk.Item {
	// With two lanes, live updates go as single PUTs: a job takes seconds to minutes, and a
	// live update must not wait behind a backfill's job. With the live lane alone, its
	// backlog is what bulk mode is for.
	liveBesideBackfill := j.class == pacer.Live && p.Backfill != nil
	p.mu.Lock()
	run := j.msg.Headers().Get(queue.HeaderRunID)
	p.mu.Unlock()
	it := bulk.Item{Conv: c.key, Ref: j.ref, Update: j.update, Class: j.class, Delivered: delivered, Run: run,
		Single: j.noBulk || j.invalid != nil || j.update.Replace || liveBesideBackfill, Handle: &heldItem{c, j}}
	if it.Single || !p.coalesces(j.class) {
		return it
	}
	if !j.sent && p.bulk.Known(it) {
		j.sent = true // its group is fixed empty: only what the job carried is settled by it
	}
	p.gather(c, j, true)
	p.mu.Lock()
	for _, m := range j.members {
		it.Members = append(it.Members, bulk.Member{Ref: m.ref, Run: m.msg.Headers().Get(queue.HeaderRunID)})
	}
	p.mu.Unlock()
	it.Update = j.sendable()
	return it
}

// BulkLane names the lane whose partial updates go in bulk jobs: "backfill" if the pool has a
// backfill lane, else "live"; "" without bulk mode. It reads only the pool's fields, so it
// may be called before Run.
func (p *Pool) BulkLane() string {
	switch {
	case !p.Config.Bulk.Enabled:
		return ""
	case p.Backfill != nil:
		return "backfill"
	}
	return "live"
}

// sayBulkLane logs, at start, which lane goes in bulk: with both lanes, a backfill published
// on the live subject gets no bulk at all.
func (p *Pool) sayBulkLane() {
	if len(p.lanes) > 1 {
		p.Log.Info("bulk mode: partial updates of the backfill lane go in bulk jobs; live updates go as single PUTs, so publish backfills on the backfill subject",
			"bulk_lane", p.BulkLane())
		return
	}
	p.Log.Info("bulk mode: partial updates of the live lane go in bulk jobs", "bulk_lane", p.BulkLane())
}

// bulkClient is the client of bulk mode: BulkClient, else Client if it is one; nil if none.
func (p *Pool) bulkClient() bulk.Client {
	if p.BulkClient != nil {
		return p.BulkClient
	}
	cli, _ := p.Client.(bulk.Client)
	return cli
}

// bulkSettings are what the bulker reads of the pool's configuration.
func (p *Pool) bulkSettings() bulk.Settings {
	s := bulk.Settings{Config: p.cfg.Bulk, RetryInitial: p.cfg.RetryInitial, RetryMax: p.cfg.RetryMax,
		Redeliveries: 2*p.ackWait + recoverSlack, Lane: p.BulkLane(), Log: p.Log}
	if p.Metrics != nil {
		s.Metrics = &p.Metrics.Bulk
	}
	return s
}

// bulkHost is the pool as the bulker sees it.
type bulkHost struct{ p *Pool }

var _ bulk.Host = bulkHost{}

func held(it bulk.Item) *heldItem { return it.Handle.(*heldItem) }

// Request makes a bulk request through the passage a single PUT takes.
func (h bulkHost) Request(ctx context.Context, class pacer.Priority, job string, do func(ctx context.Context) (kustomer.RateLimit, error)) (bool, error) {
	ps := &passage{p: h.p}
	defer ps.done()
	if !ps.enter(ctx, class) {
		return false, context.Cause(ctx)
	}
	var err error
	o := ps.send(h.p.hard, func(ctx context.Context) (int, kustomer.RateLimit, error) {
		var rl kustomer.RateLimit
		rl, err = do(ctx)
		return okStatus, rl, err
	})
	ps.report(o, "bulk job "+job, 0, false)
	return true, err
}

// okStatus stands for the 2xx of a bulk answer in the metrics.
const okStatus = 200

func (h bulkHost) Throttled(rl kustomer.RateLimit) time.Duration { return h.p.Pacer.OrgThrottled(rl) }

// Applied acknowledges an item a job applied, as an applied single PUT; a merged item, each
// of its messages, in stream order (groupApplied), each counted applied. A merged item
// saves items of a job, not requests: coalesce_units_saved_total does not count it.
func (h bulkHost) Applied(it bulk.Item) {
	c, j := held(it).c, held(it).j
	h.p.mu.Lock()
	n := len(j.members)
	h.p.mu.Unlock()
	for range n + 1 {
		h.p.Metrics.update("applied")
	}
	if n > 0 {
		h.p.groupApplied(c, j, it.Job)
		return
	}
	h.p.appliedOK(c, j, it.Job)
}

// Single makes the item's conversation ready again, its head to go as a single PUT: a merged
// item as one merged PUT, decided as any (coalesce.go); if the job may still apply it
// (MayApply), as after an ambiguous try, so that a 400 or 422 never splits it.
func (h bulkHost) Single(it bulk.Item) {
	j := held(it).j
	j.noBulk = true
	if it.MayApply {
		j.ambiguous = true
	}
	h.p.schedule(held(it).c, 0)
}

// Resume makes the item's conversation ready again.
func (h bulkHost) Resume(it bulk.Item) { h.p.schedule(held(it).c, 0) }

// Standby reports whether the item's conversation goes back to the active replica: the
// standby decision of a conversation in the bulker's hands (giveBackFrom).
func (h bulkHost) Standby(it bulk.Item) bool {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	return h.p.giveBackFrom(held(it).c, true) == 0
}

// Active reports whether this replica is the active one on some lane.
func (h bulkHost) Active() bool {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	for _, src := range h.p.lanes {
		if !h.p.standbyOn(src) {
			return true
		}
	}
	return false
}

func (h bulkHost) Hard() context.Context { return h.p.hard }
