package worker

import (
	"context"
	"errors"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// Bulk mode (Config.Bulk): partial updates of distinct conversations go to Kustomer in bulk
// jobs, up to 100 updates for one unit of the org budget.
//
// The bulker takes a conversation's head job when a worker would send it (Pool.process calls
// take): from then on the conversation is in the bulker's hands, so its next update waits
// until this one is settled, as with a single PUT. Items gather into the next job; a job goes
// out when it is full, or after Linger with at least Min items; with fewer, they go back to
// the workers as single PUTs. Each job has a goroutine of its own that stores it in the bulk
// bucket (BulkStore), submits it through the gates and the pacer, reads its batches the same
// way (class pacer.BulkRead) at times learned from the jobs before, and settles each item once
// its outcome is known: a succeeded item is acknowledged like an applied single PUT; a failed
// one goes back to the workers as a single PUT whose answer decides as for any other. What
// cannot go in bulk (a refused submit, a job past its deadline, reads the key may not make)
// goes as single PUTs too.
//
// Order: a job that Kustomer may still apply after its items were re-sent (a submit without
// an answer, a job past its deadline or unreadable) fences its conversations: their newer
// updates wait until the job is complete or known lost (its deadline, or twice it, passed).
// Fences and jobs live in the bucket, so that a process started after a crash settles a
// redelivered item by its job's result instead of sending it again.

// BulkClient is what bulk mode uses of the client; *kustomer.Client is the real one.
type BulkClient interface {
	SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error)
	ReadBulkBatches(ctx context.Context, jobID string) (*kustomer.BulkBatches, error)
}

// BulkStore keeps the bulk jobs in flight across processes; *queue.BulkJobs is the real one.
type BulkStore interface {
	Put(ctx context.Context, r queue.BulkRecord) error
	Delete(ctx context.Context, key string) error
	List(ctx context.Context) ([]queue.BulkRecord, error)
}

var (
	_ BulkClient = (*kustomer.Client)(nil)
	_ BulkStore  = (*queue.BulkJobs)(nil)
)

// Tuned values of following jobs.
const (
	bulkReadMin      = time.Second      // the first wait after a read that found the job unfinished
	bulkReadMax      = 15 * time.Second // the longest wait between two reads of a job
	bulkFirstReadMin = 200 * time.Millisecond
	bulkEstimate0    = time.Second // what a job is taken to last before one was seen
	bulkLearnWeight  = 0.3         // weight of the newest job in the learned duration
	bulkReloadEvery  = 2 * time.Second
	bulkTick         = 20 * time.Millisecond // the batcher's check of Linger
	bulkLingerMax    = 4                     // times Linger a job waits at most while items still come
)

// bulker batches conversations' head updates into bulk jobs and follows the jobs; see above.
type bulker struct {
	p     *Pool
	cfg   BulkConfig
	cli   BulkClient
	store BulkStore // nil: jobs are not kept across processes

	off atomic.Bool // the key may not read jobs: bulk is off for the process

	ctx context.Context // ends when the pool begins to shut down; written by Pool.Run before any goroutine starts

	kick chan struct{} // cap 1: the gathering job is full

	mu      sync.Mutex // guards every field below
	pending []bulkItem // the job gathering
	since   time.Time  // when pending's first item came
	last    time.Time  // when pending's last item came
	fences  map[string]bulkFence
	fenced  map[string]bulkItem       // conversations held back by a fence, in the bulker's hands
	known   map[queue.MsgRef]*bulkJob // items of jobs this process did not submit, by message
	jobs    map[string]*bulkJob       // jobs followed by this process, by record key
	forget  map[string]time.Time      // records to delete from the store, and when
	loaded  time.Time                 // when the store was last read
	est     time.Duration             // how long a job takes, as learned
	seq     uint64                    // for record keys
	warned  bool                      // the read refusal was logged

	wg sync.WaitGroup // the jobs' goroutines
}

// bulkItem is a held message in the bulker's hands: its conversation and head job.
type bulkItem struct {
	c *conv
	j *job
}

// bulkFence holds back a conversation's updates newer than seq until until.
type bulkFence struct {
	seq   uint64
	until time.Time
}

// bulkJob is one job followed by this process. Its fields are guarded by bulker.mu, except
// kitems and key, set before it is shared.
type bulkJob struct {
	key      string
	kitems   []kustomer.BulkItem
	rec      queue.BulkRecord
	held     map[queue.MsgRef]bulkItem // items in the bulker's hands, not settled yet
	outcome  map[queue.MsgRef]kustomer.ItemOutcome
	sent     time.Time // when the submit that created the job went out
	adopted  bool      // submitted by another process
	follows  bool      // a goroutine follows it
	finished bool
}

func newBulker(p *Pool) *bulker {
	cli := p.BulkClient
	if cli == nil {
		cli, _ = p.Client.(BulkClient)
	}
	if cli == nil {
		return nil
	}
	return &bulker{
		p: p, cfg: p.cfg.Bulk, cli: cli, store: p.BulkJobs, kick: make(chan struct{}, 1),
		fences: make(map[string]bulkFence), fenced: make(map[string]bulkItem), known: make(map[queue.MsgRef]*bulkJob),
		jobs: make(map[string]*bulkJob), forget: make(map[string]time.Time), est: bulkEstimate0,
	}
}

// take is called for c's head job j (delivered that many times) by the worker that holds c,
// before it would send j. It reports whether the bulker took c: then c is in its hands until
// j is settled or handed back as a single PUT.
func (b *bulker) take(c *conv, j *job, delivered uint64) bool {
	if delivered > 1 && b.store != nil {
		b.mu.Lock()
		stale := time.Since(b.loaded) >= bulkReloadEvery
		b.mu.Unlock()
		if stale {
			b.load(b.p.hard)
		}
	}
	now := time.Now()
	b.mu.Lock()
	if f, ok := b.fences[c.key]; ok {
		switch {
		case !now.Before(f.until):
			delete(b.fences, c.key)
		case j.ref.Seq > f.seq:
			// A standby hands the head back rather than hold it for the fence (yieldFenced
			// covers a pin lost after this check: it waits for b.mu).
			b.p.mu.Lock()
			standby := b.p.giveBackFrom(c, true) == 0
			b.p.mu.Unlock()
			if standby {
				b.mu.Unlock()
				b.p.schedule(c, 0) // its worker hands it back (Pool.giveBack)
				return true
			}
			b.fenced[c.key] = bulkItem{c, j} // released by release, or by yieldFenced
			b.mu.Unlock()
			b.p.jobLog(j).Debug("holding an update until an older bulk job of its conversation is complete or lost", "until", f.until)
			return true
		}
	}
	if bj := b.known[j.ref]; bj != nil {
		defer b.mu.Unlock()
		if o, ok := bj.outcome[j.ref]; ok {
			delete(b.known, j.ref)
			b.settleItem(bj, bulkItem{c, j}, o, "recovered")
			return true
		}
		bj.held[j.ref] = bulkItem{c, j}
		if !bj.follows {
			bj.follows = true
			b.p.jobLog(j).Info("redelivered update belongs to a bulk job a previous process submitted; reading its result instead of sending it again", "job", bj.rec.JobID)
			b.wg.Go(func() { b.guard(bj, b.follow) })
		}
		return true
	}
	// With two lanes, live updates go as single PUTs: a job takes seconds to minutes, and a
	// live update must not wait behind a backfill's job (issue 13). With the live lane alone,
	// its backlog is what bulk mode is for.
	liveBesideBackfill := j.class == pacer.Live && b.p.Backfill != nil
	if b.off.Load() || j.noBulk || j.invalid != nil || j.update.Replace || liveBesideBackfill {
		b.mu.Unlock()
		return false
	}
	if len(b.pending) == 0 {
		b.since = now
	}
	b.pending = append(b.pending, bulkItem{c, j})
	b.last = now
	full := len(b.pending) >= b.cfg.Size
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// run gathers jobs and sends them until ctx ends. The jobs' goroutines end soon after,
// leaving their unsettled items held for handBack; Pool.Run waits for them (wait).
func (b *bulker) run(ctx context.Context) {
	b.load(ctx)
	t := time.NewTicker(min(bulkTick, max(b.cfg.Linger/5, time.Millisecond)))
	defer t.Stop()
	var housekeeping time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		case now := <-t.C:
			if now.Sub(housekeeping) >= time.Second {
				housekeeping = now
				b.housekeep(ctx, now)
			}
		}
		b.gather(ctx, time.Now())
	}
}

// wait returns once every job's goroutine has ended; only after the workers stopped, since
// a worker may start one.
func (b *bulker) wait() { b.wg.Wait() }

// gather sends the jobs that are ready: full ones, and one that lingered long enough with
// at least Min items; items that lingered in a smaller one go as single PUTs.
func (b *bulker) gather(ctx context.Context, now time.Time) {
	b.mu.Lock()
	var jobs [][]bulkItem
	for len(b.pending) >= b.cfg.Size {
		jobs = append(jobs, b.pending[:b.cfg.Size:b.cfg.Size])
		b.pending = b.pending[b.cfg.Size:]
		b.since = now
	}
	var singles []bulkItem
	if b.off.Load() {
		for _, items := range jobs {
			singles = append(singles, items...)
		}
		jobs = nil
		singles, b.pending = append(singles, b.pending...), nil
	}
	// Linger runs from the first item; while items still trickle in (a backlog being
	// fetched), the job waits for them a little longer, up to bulkLingerMax times Linger.
	quiet := now.Sub(b.last) >= b.cfg.Linger/5 || now.Sub(b.since) >= bulkLingerMax*b.cfg.Linger
	if len(b.pending) > 0 && now.Sub(b.since) >= b.cfg.Linger && quiet {
		if len(b.pending) >= b.cfg.Min {
			jobs = append(jobs, b.pending)
		} else {
			singles = b.pending
		}
		b.pending = nil
	}
	if len(b.pending) == 0 {
		b.pending = nil
	}
	b.mu.Unlock()
	for _, it := range singles {
		b.single(it, "few")
	}
	for _, items := range jobs {
		if ctx.Err() != nil {
			return // shutdown: the items stay held for handBack
		}
		b.start(items)
	}
}

// single hands an item back to the workers to go as a single PUT, decided as any other.
func (b *bulker) single(it bulkItem, why string) {
	it.j.noBulk = true
	b.p.Metrics.bulkItem(why)
	b.p.schedule(it.c, 0)
}

// start makes a job of items and follows it in a goroutine of its own.
func (b *bulker) start(items []bulkItem) {
	b.mu.Lock()
	b.seq++
	key := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(b.seq, 36)
	bj := &bulkJob{key: key, held: make(map[queue.MsgRef]bulkItem, len(items)),
		outcome: make(map[queue.MsgRef]kustomer.ItemOutcome), follows: true}
	bj.rec = queue.BulkRecord{Key: key, Submitted: time.Now()}
	for _, it := range items {
		ref := it.j.ref.Key()
		bj.kitems = append(bj.kitems, kustomer.BulkItem{Ref: ref, Update: it.j.update})
		bj.rec.Items = append(bj.rec.Items, queue.BulkRecordItem{Conv: it.j.update.ID, Seq: it.j.ref.Seq, Stored: it.j.ref.Stored, Ref: ref})
		bj.held[it.j.ref] = it
	}
	b.jobs[key] = bj
	b.mu.Unlock()
	b.wg.Go(func() { b.guard(bj, b.submitAndFollow) })
}

// class is the pacer class of a job: live if any item is.
func (bj *bulkJob) class() pacer.Priority {
	c := pacer.Backfill
	for _, it := range bj.held {
		c = min(c, it.j.class)
	}
	return c
}

// guard runs run(bj) on a job's goroutine. A panic there (a bug, say in the BulkClient) must
// not end the daemon: it is logged, and the job's unsettled items go as single PUTs, their
// conversations' newer updates fenced as long as Kustomer may still apply the job: until its
// deadline if it may have been submitted (as after a submit whose answer was lost), until
// twice the deadline once Kustomer gave it an id (as for a job overdue while followed).
// (A panic while b.mu is held, in the bulker's own code, would still block here.)
func (b *bulker) guard(bj *bulkJob, run func(*bulkJob)) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		b.mu.Lock()
		if bj.rec.Ambiguous.IsZero() {
			bj.rec.Ambiguous = time.Now()
		}
		id := bj.rec.JobID
		fence := bj.rec.Submitted.Add(b.cfg.Deadline)
		if id != "" {
			fence = bj.rec.Submitted.Add(2 * b.cfg.Deadline)
		}
		b.mu.Unlock()
		b.p.Log.Error("panic in a bulk job; its items go as single PUTs", "job", id, "panic", r, "stack", string(debug.Stack()))
		b.fallback(bj, "panic", fence, false)
	}()
	run(bj)
}

// submitAndFollow submits bj, retrying what may heal, and follows it to its end.
func (b *bulker) submitAndFollow(bj *bulkJob) {
	p := b.p
	ctx := b.ctx
	b.mu.Lock()
	class, rec := bj.class(), bj.rec
	b.mu.Unlock()
	if !b.put(rec) {
		// Without its record a crash would re-send the items blindly; single PUTs do not
		// need one.
		b.fallback(bj, "store", time.Time{}, false)
		return
	}
	deadline := rec.Submitted.Add(b.cfg.Deadline)
	// Waiting for the gates and the budget ends at the job's deadline: a job submitted after
	// it would be given up before Kustomer had time to apply it.
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(p.cfg.RetryInitial),
		backoff.WithMaxInterval(p.cfg.RetryMax), backoff.WithMaxElapsedTime(0)) // the deadline ends it
	for {
		if time.Now().After(deadline) {
			b.fallback(bj, "deadline", b.ambiguousFence(bj), false)
			return
		}
		var job *kustomer.BulkJob
		var sent time.Time
		went, err := b.pass(wctx, class, bj.key, func(ctx context.Context) (kustomer.RateLimit, error) {
			var err error
			sent = time.Now()
			job, err = b.cli.SubmitBulk(ctx, bj.kitems)
			if job != nil {
				return job.RateLimit, err
			}
			return kustomer.RateLimit{}, err
		})
		if !went {
			if ctx.Err() == nil {
				continue // the deadline passed while waiting: the check above falls back
			}
			b.shutdownBeforeSubmit(bj)
			return
		}
		var apiErr *kustomer.APIError
		switch {
		case err == nil:
			p.Metrics.bulkSubmitted()
			b.mu.Lock()
			bj.rec.JobID, bj.sent = job.ID, sent
			rec = bj.rec
			b.mu.Unlock()
			b.put(rec)
			b.followLoop(ctx, bj)
			return
		case p.hard.Err() != nil:
			b.mu.Lock()
			bj.rec.Ambiguous = time.Now()
			rec = bj.rec
			bj.finished = true
			delete(b.jobs, bj.key)
			b.mu.Unlock()
			b.put(rec)
			return // cut short by the shutdown deadline: the record tells the next process
		case errors.Is(err, kustomer.ErrInvalid):
			b.fallback(bj, "invalid", time.Time{}, false)
			return
		case !errors.As(err, &apiErr):
			b.fallback(bj, "error", b.ambiguousFence(bj), false)
			return
		case apiErr.Malformed() || apiErr.Status == 0:
			// The job may exist all the same: remember that, then retry.
			b.mu.Lock()
			if bj.rec.Ambiguous.IsZero() {
				bj.rec.Ambiguous = time.Now()
			}
			rec = bj.rec
			b.mu.Unlock()
			b.put(rec)
		case apiErr.Class == kustomer.ClassThrottled:
			pause := p.Pacer.OrgThrottled(apiErr.RateLimit)
			p.Metrics.retry("throttled_org")
			p.Log.Info("org rate budget spent at a bulk submit; pausing every request", "status", apiErr.Status, "pause", pause)
			continue
		case apiErr.Class == kustomer.ClassAuth:
			b.fallback(bj, "auth", b.ambiguousFence(bj), false)
			return
		case apiErr.Class == kustomer.ClassPermanent:
			p.Log.Warn("Kustomer refused a bulk submit as a whole; sending its items as single PUTs", "status", apiErr.Status, "reason", apiErr.Reason, "items", len(bj.kitems))
			b.fallback(bj, "rejected", b.ambiguousFence(bj), false)
			return
		}
		d := retry.NextBackOff()
		p.Metrics.retry("transient")
		p.Log.Info("bulk submit failed; retrying", "error", err, "retry_in", d)
		if sleep(ctx, d) != nil {
			b.shutdownBeforeSubmit(bj)
			return
		}
	}
}

// shutdownBeforeSubmit ends a job at shutdown before a submit was answered: its items stay
// held for handBack; the record stays if a submit may have taken effect.
func (b *bulker) shutdownBeforeSubmit(bj *bulkJob) {
	b.mu.Lock()
	rec := bj.rec
	bj.finished = true
	delete(b.jobs, bj.key)
	b.mu.Unlock()
	if rec.Ambiguous.IsZero() {
		b.del(rec.Key)
	}
}

// ambiguousFence is until when a job with a submit that got no answer may still be applied.
func (b *bulker) ambiguousFence(bj *bulkJob) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bj.rec.Ambiguous.IsZero() {
		return time.Time{}
	}
	return bj.rec.Submitted.Add(b.cfg.Deadline)
}

// pass makes one bulk request (do) as a single PUT is made: through the auth gate and the
// outage breaker, each handing out a ticket that goes back when pass returns, panic or not,
// then through the pacer's budget for class; it tells the gates what the answer taught. The
// breaker counts the failures of one job (key) as those of one conversation. went is false,
// with ctx's cause, when ctx ended before the request went out.
func (b *bulker) pass(ctx context.Context, class pacer.Priority, key string, do func(ctx context.Context) (kustomer.RateLimit, error)) (went bool, err error) {
	p := b.p
	tk, err := p.auth.Acquire(ctx)
	if err != nil {
		return false, err
	}
	defer tk.Done()
	tkDown, err := p.outage.gate.Acquire(ctx)
	if err != nil {
		return false, err
	}
	defer tkDown.Done()
	if err := p.Pacer.Wait(ctx, class); err != nil {
		return false, err
	}
	err = b.request(do)
	o := outcome{err: err}
	if err != nil && p.hard.Err() != nil {
		o = outcome{canceled: true} // cut short by the shutdown deadline: nothing learned
	}
	tk.Report(keyOf(o))
	p.outage.observe(tkDown, "bulk job "+key, 0, healthOf(o), reasonOf(o))
	return true, err
}

// request makes one bulk request, counted in flight and in the metrics, and feeds its
// rate-limit reading to the pacer.
func (b *bulker) request(do func(ctx context.Context) (kustomer.RateLimit, error)) error {
	p := b.p
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(1)))
	start := time.Now()
	rl, err := do(p.hard)
	elapsed := time.Since(start).Seconds()
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(-1)))
	var apiErr *kustomer.APIError
	switch {
	case err == nil:
		p.Metrics.request(okStatus, elapsed)
		p.Pacer.Observe(rl, int(p.inflight.Load()))
	case errors.As(err, &apiErr):
		p.Metrics.request(apiErr.Status, elapsed)
		p.Pacer.Observe(apiErr.RateLimit, int(p.inflight.Load()))
	case errors.Is(err, kustomer.ErrInvalid), p.hard.Err() != nil:
	default:
		p.Metrics.request(0, elapsed)
	}
	return err
}

// okStatus stands for the 2xx of a bulk answer in the metrics.
const okStatus = 200

// followLoop reads bj's batches until every item is settled, the job is past its deadline,
// or the pool shuts down.
func (b *bulker) followLoop(ctx context.Context, bj *bulkJob) {
	p := b.p
	b.mu.Lock()
	rec, est, adopted, sent := bj.rec, b.est, bj.adopted, bj.sent
	b.mu.Unlock()
	deadline := rec.Submitted.Add(b.cfg.Deadline)
	lost := rec.Submitted.Add(2 * b.cfg.Deadline)
	wait := min(max(est+est/10+50*time.Millisecond-time.Since(sent), bulkFirstReadMin), bulkReadMax)
	if adopted {
		wait = 0
	}
	next := bulkReadMin
	overdue := false
	for {
		// Wake at the deadline and at the end, at the latest: a read then decides.
		if !overdue {
			wait = min(wait, time.Until(deadline))
		}
		wait = max(min(wait, time.Until(lost)), 0)
		if sleep(ctx, wait) != nil {
			b.stopFollowing(bj)
			return
		}
		var bb *kustomer.BulkBatches
		went, err := b.pass(ctx, pacer.BulkRead, bj.key, func(ctx context.Context) (kustomer.RateLimit, error) {
			var err error
			bb, err = b.cli.ReadBulkBatches(ctx, rec.JobID)
			if bb != nil {
				return bb.RateLimit, err
			}
			return kustomer.RateLimit{}, err
		})
		if !went {
			b.stopFollowing(bj)
			return
		}
		var apiErr *kustomer.APIError
		switch {
		case err == nil:
			if b.apply(bj, bb) {
				return
			}
		case p.hard.Err() != nil:
			b.stopFollowing(bj)
			return
		case errors.Is(err, kustomer.ErrBulkReadDenied):
			b.deny(err)
			return
		case errors.As(err, &apiErr) && apiErr.Class == kustomer.ClassThrottled:
			p.Pacer.OrgThrottled(apiErr.RateLimit)
			p.Metrics.retry("throttled_org")
			wait = 0
			continue
		case errors.As(err, &apiErr) && apiErr.Class == kustomer.ClassPermanent:
			p.Log.Warn("Kustomer does not know a bulk job any more; sending its items as single PUTs", "job", rec.JobID, "status", apiErr.Status, "reason", apiErr.Reason)
			b.fallback(bj, "unknown", time.Time{}, false)
			return
		default:
			p.Log.Info("cannot read a bulk job; reading it again later", "job", rec.JobID, "error", err)
		}
		now := time.Now()
		if !now.Before(lost) {
			p.Log.Warn("bulk job given up as lost: not complete within twice its deadline; its conversations go on", "job", rec.JobID)
			b.finish(bj, true)
			return
		}
		if !overdue && !now.Before(deadline) {
			overdue = true
			p.Log.Warn("bulk job past its deadline; sending its unsettled items as single PUTs and holding their conversations' newer updates until it is complete",
				"job", rec.JobID, "deadline", b.cfg.Deadline, "lost_after", lost.Format(time.RFC3339))
			b.fallback(bj, "deadline", lost, true)
		}
		wait, next = next, min(2*next, bulkReadMax)
	}
}

// stopFollowing leaves bj at shutdown: its items stay held for handBack, its record for the
// next process.
func (b *bulker) stopFollowing(bj *bulkJob) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bj.finished = true
	delete(b.jobs, bj.key)
}

// apply settles bj's items that the batches settle and reports whether the job is over.
func (b *bulker) apply(bj *bulkJob, bb *kustomer.BulkBatches) bool {
	outs := bb.Outcomes(bj.kitems)
	b.mu.Lock()
	settled := 0
	for i, o := range outs {
		ref := bj.rec.Items[i].MsgRef()
		if o.State == kustomer.ItemPending {
			continue
		}
		settled++
		if _, ok := bj.outcome[ref]; ok {
			continue
		}
		bj.outcome[ref] = o
		bj.rec.Items[i].Outcome, bj.rec.Items[i].Reason = queue.BulkSucceeded, ""
		if o.State == kustomer.ItemFailed {
			bj.rec.Items[i].Outcome, bj.rec.Items[i].Reason = queue.BulkFailed, o.Reason
		}
		if it, ok := bj.held[ref]; ok {
			delete(bj.held, ref)
			b.settleItem(bj, it, o, "")
		}
	}
	done := settled == len(outs)
	if done {
		var last time.Time
		for _, bt := range bb.Batches {
			if bt.CompletedAt.After(last) {
				last = bt.CompletedAt
			}
		}
		took := time.Since(bj.sent)
		if d := last.Sub(bj.sent); !last.IsZero() && d > 0 && d < took {
			took = d
		}
		if !bj.adopted {
			b.est = time.Duration(float64(b.est)*(1-bulkLearnWeight) + float64(took)*bulkLearnWeight)
		}
		b.p.Metrics.bulkCompleted(took.Seconds())
	}
	b.mu.Unlock()
	if done {
		b.finish(bj, true)
	}
	return done
}

// settleItem carries out an item's outcome; b.mu is held.
func (b *bulker) settleItem(bj *bulkJob, it bulkItem, o kustomer.ItemOutcome, how string) {
	switch o.State {
	case kustomer.ItemSucceeded:
		b.p.Metrics.bulkItem("succeeded")
		b.p.Metrics.update("applied")
		b.p.ack(it.c, it.j)
	default:
		b.p.Metrics.bulkItem("failed")
		b.p.jobLog(it.j).Info("bulk item failed; sending it as a single PUT", "job", bj.rec.JobID, "reason", o.Reason, "how", how)
		it.j.noBulk = true
		b.p.schedule(it.c, 0)
	}
}

// fallback sends bj's unsettled items as single PUTs, counting the job failed for reason.
// With a fence time, the job may still apply them late: their conversations' newer updates
// wait until then (or until the job is complete), and the record keeps the fence for the
// next process. Unless following, b stops following the job.
func (b *bulker) fallback(bj *bulkJob, reason string, fence time.Time, following bool) {
	b.p.Metrics.bulkFailed(reason)
	b.mu.Lock()
	held := bj.held
	bj.held = make(map[queue.MsgRef]bulkItem)
	if !fence.IsZero() {
		bj.rec.FenceUntil = later(bj.rec.FenceUntil, fence)
		for _, it := range bj.rec.Items {
			b.addFence(it.Conv, it.Seq, fence)
		}
	}
	rec := bj.rec
	b.mu.Unlock()
	if following && !fence.IsZero() {
		b.put(rec)
	}
	for _, it := range held {
		b.single(it, "single")
	}
	if !following {
		b.finish(bj, false)
	}
}

// addFence holds conversation conv's updates newer than seq until until; b.mu is held.
func (b *bulker) addFence(conv string, seq uint64, until time.Time) {
	f := b.fences[conv]
	b.fences[conv] = bulkFence{seq: max(f.seq, seq), until: later(f.until, until)}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// finish ends b's following of bj. With lift the job is over (complete, lost, or unknown to
// Kustomer): its fences are lifted. An unanswered submit of its items may still be a second
// job, whose fence stays until that one would be past its deadline. The record is deleted,
// or kept while a fence holds, and for a job another process submitted, while redeliveries
// of its items may still come.
func (b *bulker) finish(bj *bulkJob, lift bool) {
	now := time.Now()
	b.mu.Lock()
	if bj.finished {
		b.mu.Unlock()
		return
	}
	bj.finished = true
	delete(b.jobs, bj.key)
	if lift && !bj.rec.FenceUntil.IsZero() {
		for _, it := range bj.rec.Items {
			if f, ok := b.fences[it.Conv]; ok && !f.until.After(bj.rec.FenceUntil) {
				delete(b.fences, it.Conv)
			}
		}
		bj.rec.FenceUntil = time.Time{}
	}
	if !bj.rec.Ambiguous.IsZero() {
		if until := bj.rec.Submitted.Add(b.cfg.Deadline); until.After(now) {
			for _, it := range bj.rec.Items {
				b.addFence(it.Conv, it.Seq, until)
			}
			bj.rec.FenceUntil = later(bj.rec.FenceUntil, until)
		}
	}
	bj.rec.Settled = now
	rec := bj.rec
	var keep time.Time
	if rec.FenceUntil.After(now) {
		keep = rec.FenceUntil
	}
	if bj.adopted {
		keep = later(keep, now.Add(2*b.p.ackWait+recoverSlack))
	}
	for ref, kb := range b.known {
		if kb == bj && bj.outcome[ref].State == kustomer.ItemPending {
			delete(b.known, ref) // lost: a redelivery goes on as any update
		}
	}
	if !keep.IsZero() {
		b.forget[rec.Key] = keep
	}
	b.mu.Unlock()
	if lift {
		b.release()
	}
	if !keep.IsZero() {
		b.put(rec)
		return
	}
	b.del(rec.Key)
}

// release hands the conversations whose fence is gone back to the workers.
func (b *bulker) release() {
	b.mu.Lock()
	var free []bulkItem
	for conv, it := range b.fenced {
		if _, held := b.fences[conv]; !held {
			free = append(free, it)
			delete(b.fenced, conv)
		}
	}
	b.mu.Unlock()
	for _, it := range free {
		b.p.schedule(it.c, 0)
	}
}

// yieldFenced takes out of b's hands, for handing back, the conversations a fence holds back
// whose head goes back now that this replica is a standby on its lane (Pool.giveBackFrom). Such a
// conversation is at rest, as a parked one is: held here until the fence ends (minutes), its
// head would come back to the workers long after the new active replica stopped waiting for
// it (recover.go) and applied the conversation's newer updates. Pool.yield calls it, then
// hands these to the workers (Pool.schedule), whose giveBack hands them back. b.mu is taken
// before Pool.mu, as everywhere.
func (b *bulker) yieldFenced() []bulkItem {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	var out []bulkItem
	for conv, it := range b.fenced {
		if b.p.giveBackFrom(it.c, true) == 0 {
			out = append(out, it)
			delete(b.fenced, conv)
		}
	}
	return out
}

// follow follows a job another process submitted, once one of its items came here.
func (b *bulker) follow(bj *bulkJob) {
	b.followLoop(b.ctx, bj)
}

// deny turns bulk off for the process: the key may not read jobs. Every unsettled item goes
// as a single PUT; the jobs' conversations wait for their newer updates until the jobs'
// deadlines, since nobody can tell when Kustomer applies them.
func (b *bulker) deny(err error) {
	b.off.Store(true)
	b.mu.Lock()
	if !b.warned {
		b.warned = true
		b.p.Log.Warn("the API key may submit bulk jobs but not read them: it lacks the role org.permission.bulk.read; bulk mode is off until restart, pending items go as single PUTs",
			"error", err)
	}
	jobs := make([]*bulkJob, 0, len(b.jobs))
	for _, bj := range b.jobs {
		jobs = append(jobs, bj)
	}
	pending := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, bj := range jobs {
		b.mu.Lock()
		fence := bj.rec.Submitted.Add(b.cfg.Deadline)
		b.mu.Unlock()
		b.fallback(bj, "read_denied", fence, false)
	}
	for _, it := range pending {
		b.single(it, "single")
	}
}

// load reads the store: jobs another process submitted become known, so that their
// redelivered items are settled by their results; their fences hold here too.
func (b *bulker) load(ctx context.Context) {
	if b.store == nil {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	recs, err := b.store.List(lctx)
	cancel()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.loaded = now
	if err != nil {
		b.p.Log.Warn("cannot read the bulk jobs in flight; redelivered items of a job another process submitted are sent again", "error", err)
		return
	}
	for _, r := range recs {
		if _, own := b.jobs[r.Key]; own {
			continue
		}
		if r.FenceUntil.After(now) {
			for _, it := range r.Items {
				b.addFence(it.Conv, it.Seq, r.FenceUntil)
			}
		}
		if r.JobID == "" {
			// A submit that was never answered: its job, if any, is unknown. The items go
			// again; their conversations' newer updates wait until it would be past its
			// deadline.
			if until := r.Submitted.Add(b.cfg.Deadline); until.After(now) {
				for _, it := range r.Items {
					b.addFence(it.Conv, it.Seq, until)
				}
				if _, ok := b.forget[r.Key]; !ok {
					b.forget[r.Key] = until
				}
			} else if _, ok := b.forget[r.Key]; !ok {
				b.forget[r.Key] = now
			}
			continue
		}
		if !r.Ambiguous.IsZero() {
			if until := r.Submitted.Add(b.cfg.Deadline); until.After(now) {
				for _, it := range r.Items {
					b.addFence(it.Conv, it.Seq, until)
				}
			}
		}
		if len(r.Items) == 0 {
			continue
		}
		if _, ok := b.known[r.Items[0].MsgRef()]; ok {
			continue
		}
		if r.Submitted.Add(2 * b.cfg.Deadline).Before(now) {
			if _, ok := b.forget[r.Key]; !ok {
				b.forget[r.Key] = now // nobody came for its items: they were settled
			}
			continue
		}
		bj := &bulkJob{key: r.Key, rec: r, adopted: true, sent: r.Submitted, held: make(map[queue.MsgRef]bulkItem),
			outcome: make(map[queue.MsgRef]kustomer.ItemOutcome)}
		for _, it := range r.Items {
			bj.kitems = append(bj.kitems, kustomer.BulkItem{Ref: it.Ref, Update: kustomer.Update{ID: it.Conv}})
			switch it.Outcome {
			case queue.BulkSucceeded:
				bj.outcome[it.MsgRef()] = kustomer.ItemOutcome{State: kustomer.ItemSucceeded}
			case queue.BulkFailed:
				bj.outcome[it.MsgRef()] = kustomer.ItemOutcome{State: kustomer.ItemFailed, Reason: it.Reason}
			}
			b.known[it.MsgRef()] = bj
		}
		if !r.Settled.IsZero() {
			bj.follows, bj.finished = true, true // nothing to read: the outcomes are stored
			for _, it := range r.Items {
				if it.Outcome == "" {
					delete(b.known, it.MsgRef())
				}
			}
		}
	}
}

// housekeep lifts fences that ran out and deletes the records nobody needs any more.
func (b *bulker) housekeep(ctx context.Context, now time.Time) {
	b.mu.Lock()
	for conv, f := range b.fences {
		if !now.Before(f.until) {
			delete(b.fences, conv)
		}
	}
	b.mu.Unlock()
	b.release()
	b.mu.Lock()
	var keys []string
	gone := make(map[string]bool)
	for key, at := range b.forget {
		if !now.Before(at) {
			keys = append(keys, key)
			gone[key] = true
			delete(b.forget, key)
		}
	}
	for ref, bj := range b.known {
		if gone[bj.key] {
			delete(b.known, ref) // its redeliveries are over: the record goes too
		}
	}
	b.mu.Unlock()
	for _, k := range keys {
		if ctx.Err() != nil {
			return
		}
		b.del(k)
	}
}

// put stores rec, reporting whether it could.
func (b *bulker) put(rec queue.BulkRecord) bool {
	if b.store == nil {
		return true
	}
	sctx, cancel := context.WithTimeout(b.p.hard, storeTimeout)
	defer cancel()
	if err := b.store.Put(sctx, rec); err != nil {
		b.p.Log.Warn("cannot store a bulk job in flight", "job", rec.JobID, "error", err)
		return false
	}
	return true
}

func (b *bulker) del(key string) {
	if b.store == nil {
		return
	}
	sctx, cancel := context.WithTimeout(b.p.hard, storeTimeout)
	defer cancel()
	if err := b.store.Delete(sctx, key); err != nil {
		b.p.Log.Debug("cannot delete a bulk job's record", "error", err)
	}
}
