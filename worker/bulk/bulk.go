package bulk

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/kustomer-worker/kustomer-worker/internal/ctxtime"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// Client is what bulk mode uses of the Kustomer client; *kustomer.Client is the real one.
type Client interface {
	SubmitBulk(ctx context.Context, items []kustomer.BulkItem) (*kustomer.BulkJob, error)
	ReadBulkBatches(ctx context.Context, jobID string) (*kustomer.BulkBatches, error)
	// ReadBulkJob reads a job's own status: only when its batches give no counts and cannot
	// tell whether it is complete (kustomer.BulkBatches.NeedsJob).
	ReadBulkJob(ctx context.Context, jobID string) (*kustomer.BulkJob, error)
}

// Store keeps the bulk jobs in flight across processes; *queue.BulkJobs is the real one.
type Store interface {
	Put(ctx context.Context, r queue.BulkRecord) error
	Delete(ctx context.Context, key string) error
	List(ctx context.Context) ([]queue.BulkRecord, error)
}

// Host is what the bulker uses of the pool whose held updates it takes: the pool's gates for
// its requests, and the way back to the pool for each item. Every Item the host gets back
// is one it handed to Take.
type Host interface {
	// Request makes one bulk request (do) as a single PUT is made: through the pool's gates
	// and the budget for class, counted in flight and in the metrics, its answer told to
	// the gates; job names the bulk job for the outage breaker. went is false, with ctx's
	// cause, when ctx ended before the request went out.
	Request(ctx context.Context, class pacer.Priority, job string, do func(ctx context.Context) (kustomer.RateLimit, error)) (went bool, err error)
	// Throttled pauses every request after an org-wide 429 and says for how long.
	Throttled(rl kustomer.RateLimit) time.Duration
	// Applied acknowledges an item Kustomer applied in a job, as an applied single PUT.
	Applied(it Item)
	// Single hands an item back to go as a single PUT.
	Single(it Item)
	// Resume hands an item back as it came: the fence that held it back is gone.
	Resume(it Item)
	// Standby reports whether the item goes back to the active replica now: this replica is
	// a standby on its lane, and nobody else holds it.
	Standby(it Item) bool
	// Active reports whether this replica is the active one on some lane (always, without
	// replicas taking turns): its updates may then overtake a job another replica submitted,
	// which it follows (handover.go).
	Active() bool
	// Hard ends when requests in flight must be abandoned (the end of a shutdown).
	Hard() context.Context
}

var (
	_ Client = (*kustomer.Client)(nil)
	_ Store  = (*queue.BulkJobs)(nil)
)

// Item is a conversation's head update that the host offers the bulker (Take).
type Item struct {
	Conv      string // the conversation's key in the host
	Ref       queue.MsgRef
	Update    kustomer.Update
	Class     pacer.Priority
	Delivered uint64 // the delivery's number: a redelivery may belong to a job another process submitted
	// Single says it goes as a single PUT (a replace, an invalid message, a live update beside
	// a backfill lane, an item a job failed): the bulker only holds it back for a fence.
	Single bool
	// Handle is the host's own, opaque to the bulker.
	Handle any
	// Job is the bulk job that applied it, set when it is handed to Host.Applied.
	Job string
	// Run is the run the update belongs to (queue.HeaderRunID), kept in the job's record so
	// that a run's status counts its lines in bulk jobs; "" for none.
	Run string
	// Members are the messages merged into Update behind Ref (the host's --coalesce), in
	// stream order, fixed before the host offers the item: the job's record lists them, so
	// that a redelivery of any of them after a crash is settled by the item's outcome
	// (Known), and a fence of the item stands at the last one's sequence.
	Members []Member
	// MayApply is set on an item handed back as a single PUT (Host.Single) while the job it
	// was in may still apply it late: a submit without an answer, a job past its deadline.
	MayApply bool
}

// Member is one message merged into an Item behind its own.
type Member struct {
	Ref queue.MsgRef
	Run string // as Item.Run
}

// Settings are what the bulker reads of the pool's configuration.
type Settings struct {
	Config
	// RetryInitial and RetryMax bound the backoff between submits that failed transiently.
	RetryInitial, RetryMax time.Duration
	// Redeliveries is how long after a job ends redeliveries of its items may still come (a
	// job another process submitted): its record is kept that long.
	Redeliveries time.Duration
	// Lane names the lane whose updates go in bulk, for the records (status shows it).
	Lane    string
	Log     *slog.Logger // default: discard
	Metrics *Metrics     // optional
}

// Tuned values of following jobs, and the timeout of a call to the store.
const (
	readMin      = time.Second      // the first wait after a read that found the job unfinished
	readMax      = 15 * time.Second // the longest wait between two reads of a job
	firstReadMin = 200 * time.Millisecond
	estimate0    = time.Second            // what a job is taken to last before one was seen
	learnWeight  = 0.3                    // weight of the newest job in the learned duration
	reloadEvery  = 200 * time.Millisecond // at most this often for redelivered items not known
	tick         = 20 * time.Millisecond  // the batcher's check of Linger
	lingerMax    = 4                      // times Linger a job waits at most while items still come
	storeTimeout = 5 * time.Second
	// lastStoreTimeout bounds the store of a record after the shutdown deadline passed.
	lastStoreTimeout = time.Second
)

// Bulker batches conversations' head updates into bulk jobs and follows the jobs; see the
// package documentation.
type Bulker struct {
	host    Host
	cli     Client
	store   Store // nil: jobs are not kept across processes
	cfg     Config
	set     Settings
	log     *slog.Logger
	metrics *Metrics

	off atomic.Bool // the key may not read jobs: bulk is off for the process

	ctx context.Context // ends when the pool begins to shut down

	kick chan struct{} // cap 1: the gathering job is full

	reloading sync.Mutex // held by a Take that reads the store again for a redelivery

	mu      sync.Mutex // guards every field below
	pending []Item     // the job gathering
	since   time.Time  // when pending's first item came
	last    time.Time  // when pending's last item came
	fences  map[string]fence
	fenced  map[string]Item       // conversations held back by a fence, in the bulker's hands
	known   map[queue.MsgRef]*job // items of jobs this process did not submit, by message
	jobs    map[string]*job       // jobs followed by this process, by record key
	forget  map[string]time.Time  // records to delete from the store, and when
	loaded  time.Time             // when the store was last read
	est     time.Duration         // how long a job takes, as learned
	seq     uint64                // for record keys
	warned  bool                  // the read refusal was logged

	wasActive bool // the host was active at the last housekeeping; owned by Run's goroutine

	wg sync.WaitGroup // the jobs' goroutines
}

// fence holds back a conversation's updates newer than seq until until.
type fence struct {
	seq   uint64
	until time.Time
}

// job is one job followed by this process. Its fields are guarded by Bulker.mu, except
// kitems and key, set before it is shared.
type job struct {
	key    string
	kitems []kustomer.BulkItem
	rec    queue.BulkRecord
	held   map[queue.MsgRef]Item // items in the bulker's hands, not settled yet, by their message
	// of maps a member merged into an item (Item.Members) to the item's own message, for a
	// job another process submitted: a redelivered member is settled by the item's outcome.
	of       map[queue.MsgRef]queue.MsgRef
	outcome  map[queue.MsgRef]kustomer.ItemOutcome
	sent     time.Time // when the submit that created the job went out
	adopted  bool      // submitted by another process
	follows  bool      // a goroutine follows it
	finished bool
	// submitting: a submit request went out (or is going out) after the gates let it; until
	// then a job that is finished (fell back) is never submitted.
	submitting bool
	stop       context.CancelFunc // ends the wait for the gates before the submit; nil before it
}

// New returns a bulker for host that submits through cli and keeps its jobs in store (nil:
// not across processes). ctx ends when the host begins to shut down: jobs stop being
// followed, their unsettled items stay with the host.
func New(ctx context.Context, host Host, cli Client, store Store, s Settings) *Bulker {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	return &Bulker{
		host: host, cli: cli, store: store, cfg: s.Config, set: s, log: s.Log, metrics: s.Metrics, ctx: ctx,
		kick:   make(chan struct{}, 1),
		fences: make(map[string]fence), fenced: make(map[string]Item), known: make(map[queue.MsgRef]*job),
		jobs: make(map[string]*job), forget: make(map[string]time.Time), est: estimate0,
	}
}

// itemLog is the logger for lines about it.
func (b *Bulker) itemLog(it Item) *slog.Logger {
	return b.log.With("conversation", it.Update.ID, "seq", it.Ref.Seq)
}

// Take is called for a conversation's head update by the host's goroutine that holds the
// conversation, before it would send it as a single PUT. It reports whether the bulker took
// it: then the conversation is in the bulker's hands until the item goes back to the host
// (Applied, Single, Resume).
func (b *Bulker) Take(it Item) bool {
	if it.Delivered > 1 {
		b.reloadIfStale(it)
	}
	now := time.Now()
	b.mu.Lock()
	if until, ok := b.fencedAt(it, now); ok {
		b.fenced[it.Conv] = it // released by resumeUnfenced, or by Yield
		b.mu.Unlock()
		b.holdBack(it, until)
		return true
	}
	if bj := b.known[it.Ref]; bj != nil {
		b.takeKnown(bj, it)
		return true
	}
	if b.off.Load() || it.Single {
		b.mu.Unlock()
		return false
	}
	if len(b.pending) == 0 {
		b.since = now
	}
	b.pending = append(b.pending, it)
	b.last = now
	full := b.full(b.pending) > 0
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// reloadIfStale reads the store again for it, a redelivered item not known here, if it was
// last read reloadEvery ago: it may belong to a job another process submitted since (a
// replica that lost its turn hands back the items of its jobs at once).
func (b *Bulker) reloadIfStale(it Item) {
	if b.store == nil {
		return
	}
	// A burst of redeliveries waits for one reload, which may make them known.
	b.reloading.Lock()
	defer b.reloading.Unlock()
	b.mu.Lock()
	_, known := b.known[it.Ref]
	stale := !known && time.Since(b.loaded) >= reloadEvery
	b.mu.Unlock()
	if stale {
		b.load(b.hard())
	}
}

// fencedAt reports whether a fence holds it back at now, and until when; a fence that ran
// out is lifted. b.mu is held.
func (b *Bulker) fencedAt(it Item, now time.Time) (time.Time, bool) {
	f, ok := b.fences[it.Conv]
	switch {
	case !ok:
		return time.Time{}, false
	case !now.Before(f.until):
		delete(b.fences, it.Conv)
		return time.Time{}, false
	}
	return f.until, it.Ref.Seq > f.seq
}

// holdBack keeps it, fenced, until the fence ends; a standby hands it back at once instead
// (Yield covers a pin lost after this check: it is in fenced already).
func (b *Bulker) holdBack(it Item, until time.Time) {
	if b.host.Standby(it) && b.unfence(it) {
		b.host.Resume(it) // its worker hands it back
		return
	}
	b.itemLog(it).Debug("holding an update until an older bulk job of its conversation is complete or lost", "until", until)
}

// takeKnown settles it, a redelivered item of bj, a job another process submitted, by bj's
// outcome for it, or holds it until a read of bj tells. b.mu is held, and let go.
func (b *Bulker) takeKnown(bj *job, it Item) {
	if o, ok := bj.outcome[bj.itemRef(it.Ref)]; ok {
		delete(b.known, it.Ref)
		id := bj.rec.JobID
		b.mu.Unlock()
		b.settleItem(id, it, o, "recovered")
		return
	}
	defer b.mu.Unlock()
	bj.held[it.Ref] = it
	if !bj.follows {
		bj.follows = true
		b.itemLog(it).Info("redelivered update belongs to a bulk job a previous process submitted; reading its result instead of sending it again", "job", bj.rec.JobID)
		b.wg.Go(func() { b.guard(bj, b.follow) })
	}
}

// Known reports whether it, a redelivery, belongs to a job another process submitted, whose
// result settles it: the host then offers it as it is, merging nothing into it, since only
// what the job carried is settled by the job. It reads the store again first, as Take does.
func (b *Bulker) Known(it Item) bool {
	if it.Delivered <= 1 {
		return false
	}
	b.reloadIfStale(it)
	return b.KnownRef(it.Ref)
}

// KnownRef reports whether the message ref belongs to a job another process submitted, as
// Known, without reading the store.
func (b *Bulker) KnownRef(ref queue.MsgRef) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.known[ref]
	return ok
}

// itemRef is the message of bj's item that ref is (its own, or one merged into it).
func (bj *job) itemRef(ref queue.MsgRef) queue.MsgRef {
	if r, ok := bj.of[ref]; ok {
		return r
	}
	return ref
}

// unfence takes it out of the fenced conversations if it is still there, and reports whether
// it did: whoever takes it out hands it back.
func (b *Bulker) unfence(it Item) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.fenced[it.Conv]; ok && f.Ref == it.Ref {
		delete(b.fenced, it.Conv)
		return true
	}
	return false
}

func (b *Bulker) hard() context.Context { return b.host.Hard() }

// Run gathers jobs and sends them until the context given to New ends. The jobs' goroutines
// end soon after, leaving their unsettled items with the host; Wait waits for them.
func (b *Bulker) Run() {
	ctx := b.ctx
	b.load(ctx)
	t := time.NewTicker(min(tick, max(b.cfg.Linger/5, time.Millisecond)))
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

// Wait returns once every job's goroutine has ended; only after the host stopped calling
// Take, since Take may start one.
func (b *Bulker) Wait() { b.wg.Wait() }

// gather sends the jobs that are ready: full ones, and one that lingered long enough with
// at least Min items; items that lingered in a smaller one go as single PUTs.
func (b *Bulker) gather(ctx context.Context, now time.Time) {
	b.mu.Lock()
	var jobs [][]Item
	for n := b.full(b.pending); n > 0; n = b.full(b.pending) {
		jobs = append(jobs, b.pending[:n:n])
		b.pending = b.pending[n:]
		b.since = now
	}
	var singles []Item
	if b.off.Load() {
		for _, items := range jobs {
			singles = append(singles, items...)
		}
		jobs = nil
		singles, b.pending = append(singles, b.pending...), nil
	}
	// Linger runs from the first item; while items still trickle in (a backlog being
	// fetched), the job waits for them a little longer, up to lingerMax times Linger.
	quiet := now.Sub(b.last) >= b.cfg.Linger/5 || now.Sub(b.since) >= lingerMax*b.cfg.Linger
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

// full is how many of items, from the first, make a full job: Size of them, or as many as
// fit in MaxBytes of update bodies before the next (at least one); 0 while they fill none.
func (b *Bulker) full(items []Item) int {
	size := 0
	for i, it := range items {
		if i == b.cfg.Size {
			return i
		}
		size += len(it.Update.Body)
		if size > b.cfg.MaxBytes {
			return max(i, 1)
		}
	}
	if len(items) == b.cfg.Size {
		return len(items)
	}
	return 0
}

// single hands an item back to the workers to go as a single PUT, decided as any other.
func (b *Bulker) single(it Item, why string) {
	b.metrics.item(why)
	b.host.Single(it)
}

// start makes a job of items and follows it in a goroutine of its own.
func (b *Bulker) start(items []Item) {
	b.mu.Lock()
	b.seq++
	key := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(b.seq, 36)
	bj := &job{key: key, held: make(map[queue.MsgRef]Item, len(items)),
		outcome: make(map[queue.MsgRef]kustomer.ItemOutcome), follows: true}
	bj.rec = queue.BulkRecord{Key: key, Lane: b.set.Lane, Submitted: time.Now()}
	for _, it := range items {
		ref := it.Ref.Key()
		bj.kitems = append(bj.kitems, kustomer.BulkItem{Ref: ref, Update: it.Update})
		ri := queue.BulkRecordItem{Conv: it.Update.ID, Seq: it.Ref.Seq, Stored: it.Ref.Stored, Ref: ref, Run: it.Run}
		for _, m := range it.Members {
			ri.Members = append(ri.Members, queue.BulkRecordMember{Conv: it.Update.ID, Seq: m.Ref.Seq, Stored: m.Ref.Stored, Run: m.Run})
		}
		bj.rec.Items = append(bj.rec.Items, ri)
		bj.held[it.Ref] = it
	}
	b.jobs[key] = bj
	b.mu.Unlock()
	b.wg.Go(func() { b.guard(bj, b.submitAndFollow) })
}

// class is the pacer class of a job: live if any item is.
func (bj *job) class() pacer.Priority {
	c := pacer.Backfill
	for _, it := range bj.held {
		c = min(c, it.Class)
	}
	return c
}

// guard runs run(bj) on a job's goroutine. A panic there (a bug, say in the BulkClient) must
// not end the daemon: it is logged, and the job's unsettled items go as single PUTs, their
// conversations' newer updates fenced as long as Kustomer may still apply the job: until its
// deadline if it may have been submitted (as after a submit whose answer was lost), until
// twice the deadline once Kustomer gave it an id (as for a job overdue while followed).
// Code on a job's goroutine holds b.mu only through locked, so that a panic there lets it go.
func (b *Bulker) guard(bj *job, run func(*job)) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		var (
			id    string
			fence time.Time
		)
		b.locked(func() {
			if bj.rec.Ambiguous.IsZero() {
				bj.rec.Ambiguous = time.Now()
			}
			id = bj.rec.JobID
			fence = bj.rec.Submitted.Add(b.cfg.Deadline)
			if id != "" {
				fence = bj.rec.Submitted.Add(2 * b.cfg.Deadline)
			}
		})
		b.log.Error("panic in a bulk job; its items go as single PUTs", "job", id, "panic", r, "stack", string(debug.Stack()))
		b.fallback(bj, "panic", fence, false)
	}()
	run(bj)
}

// locked runs f with b.mu held, and lets b.mu go even when f panics: a panic on a job's
// goroutine (a bug, or an answer the code did not expect) is recovered by guard, which takes
// b.mu again.
func (b *Bulker) locked(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f()
}

// submitAndFollow submits bj, retrying what may heal, and follows it to its end.
func (b *Bulker) submitAndFollow(bj *job) {
	ctx := b.ctx
	var (
		class pacer.Priority
		rec   queue.BulkRecord
	)
	b.locked(func() { class, rec = bj.class(), bj.rec })
	if !b.put(rec) {
		// Without its record a crash would re-send the items blindly; single PUTs do not
		// need one.
		b.fallback(bj, "store", time.Time{}, false)
		return
	}
	deadline := rec.Submitted.Add(b.cfg.Deadline)
	// Waiting for the gates and the budget ends at the job's deadline (a job submitted after
	// it would be given up before Kustomer had time to apply it), or when the job falls back
	// meanwhile (finish).
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	b.locked(func() { bj.stop = cancel })
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(b.set.RetryInitial),
		backoff.WithMaxInterval(b.set.RetryMax), backoff.WithMaxElapsedTime(0)) // the deadline ends it
	for {
		if b.over(bj) {
			return // fell back while it waited: its items went as single PUTs
		}
		if b.leaveAmbiguous(bj) {
			return
		}
		if time.Now().After(deadline) {
			b.fallback(bj, "deadline", b.ambiguousFence(bj), false)
			return
		}
		job, sent, went, err := b.submit(wctx, class, bj)
		if errors.Is(err, errNotSubmitted) {
			return
		}
		if !went {
			if ctx.Err() == nil {
				continue // the deadline passed while waiting: the check above falls back
			}
			b.shutdownBeforeSubmit(bj)
			return
		}
		switch b.submitted(ctx, bj, job, sent, err) {
		case submitOver:
			return
		case submitAgain:
			continue
		}
		d := retry.NextBackOff()
		b.metrics.retry("transient")
		b.log.Info("bulk submit failed; retrying", "error", err, "retry_in", d)
		if ctxtime.Sleep(ctx, d) != nil {
			b.shutdownBeforeSubmit(bj)
			return
		}
	}
}

// over reports whether bj is finished: settled, fallen back or left.
func (b *Bulker) over(bj *job) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bj.finished
}

// errNotSubmitted: the job fell back while its submit waited for the gates.
var errNotSubmitted = errors.New("bulk: the job fell back before its submit")

// submit sends bj's submit request through the host once the gates and the budget let it,
// unless bj fell back meanwhile (errNotSubmitted); went is false when wctx ended first.
func (b *Bulker) submit(wctx context.Context, class pacer.Priority, bj *job) (job *kustomer.BulkJob, sent time.Time, went bool, err error) {
	went, err = b.host.Request(wctx, class, bj.key, func(ctx context.Context) (kustomer.RateLimit, error) {
		var over bool
		b.locked(func() {
			over = bj.finished
			bj.submitting = !over
		})
		if over {
			return kustomer.RateLimit{}, errNotSubmitted
		}
		var err error
		sent = time.Now()
		job, err = b.cli.SubmitBulk(ctx, bj.kitems)
		if job != nil {
			return job.RateLimit, err
		}
		return kustomer.RateLimit{}, err
	})
	return job, sent, went, err
}

// submitStep is what follows a submit's answer.
type submitStep int

const (
	submitOver    submitStep = iota // the job is followed to its end, fell back, or shutdown cut it
	submitAgain                     // submit again at once (after an org-wide pause)
	submitBackOff                   // submit again after the backoff
)

// submitted carries out what the answer to bj's submit (job, sent at sent, or err) says.
func (b *Bulker) submitted(ctx context.Context, bj *job, job *kustomer.BulkJob, sent time.Time, err error) submitStep {
	var apiErr *kustomer.APIError
	switch {
	case err == nil:
		b.accepted(ctx, bj, job, sent)
		return submitOver
	case b.hard().Err() != nil:
		var rec queue.BulkRecord
		b.locked(func() {
			bj.rec.Ambiguous = time.Now()
			rec = bj.rec
			bj.finished = true
			delete(b.jobs, bj.key)
		})
		// The shutdown deadline ended the process's context: the mark is stored apart from
		// it, within a short time of its own.
		b.putWithin(context.WithoutCancel(b.hard()), lastStoreTimeout, rec)
		return submitOver // cut short by the shutdown deadline: the record tells the next process
	case errors.Is(err, kustomer.ErrInvalid):
		b.fallback(bj, "invalid", time.Time{}, false)
		return submitOver
	case !errors.As(err, &apiErr):
		b.fallback(bj, "error", b.ambiguousFence(bj), false)
		return submitOver
	case apiErr.Malformed() || apiErr.Status == 0 || apiErr.Status >= 500:
		// The job may exist all the same (a 5xx may come from a proxy after Kustomer made
		// it): remember that, then retry.
		var rec queue.BulkRecord
		b.locked(func() {
			if bj.rec.Ambiguous.IsZero() {
				bj.rec.Ambiguous = time.Now()
			}
			rec = bj.rec
		})
		b.put(rec)
	case apiErr.Class == kustomer.ClassThrottled:
		pause := b.host.Throttled(apiErr.RateLimit)
		b.metrics.retry("throttled_org")
		b.log.Info("org rate budget spent at a bulk submit; pausing every request", "status", apiErr.Status, "pause", pause)
		return submitAgain
	case apiErr.Class == kustomer.ClassAuth:
		b.fallback(bj, "auth", b.ambiguousFence(bj), false)
		return submitOver
	case apiErr.Status == http.StatusRequestEntityTooLarge && len(bj.kitems) > 1 && b.ambiguousFence(bj).IsZero():
		b.log.Info("Kustomer found a bulk job too large; splitting it in two", "items", len(bj.kitems))
		b.split(bj)
		return submitOver
	case apiErr.Class == kustomer.ClassPermanent:
		b.log.Warn("Kustomer refused a bulk submit as a whole; sending its items as single PUTs", "status", apiErr.Status, "reason", apiErr.Reason, "items", len(bj.kitems))
		b.fallback(bj, "rejected", b.ambiguousFence(bj), false)
		return submitOver
	}
	return submitBackOff
}

// accepted follows bj, which Kustomer accepted as job (submitted at sent), to its end.
func (b *Bulker) accepted(ctx context.Context, bj *job, job *kustomer.BulkJob, sent time.Time) {
	b.metrics.submitted()
	var (
		rec  queue.BulkRecord
		over bool
	)
	b.locked(func() {
		bj.rec.JobID, bj.sent = job.ID, sent
		rec, over = bj.rec, bj.finished
	})
	if over && !rec.FenceUntil.After(time.Now()) {
		return // fell back while the submit went out; its fence is kept, if any
	}
	b.put(rec)
	if !over {
		b.followLoop(ctx, bj)
	}
}

// split ends bj, a job Kustomer refused as too large (no job made), and makes two jobs of its
// items instead.
func (b *Bulker) split(bj *job) {
	var items []Item
	b.locked(func() {
		for _, ri := range bj.rec.Items {
			if it, ok := bj.held[ri.MsgRef()]; ok {
				items = append(items, it)
			}
		}
		bj.held = make(map[queue.MsgRef]Item)
		bj.finished = true
		delete(b.jobs, bj.key)
	})
	b.del(bj.key)
	if len(items) == 0 {
		return
	}
	half := max(len(items)/2, 1)
	b.start(items[:half])
	if len(items) > half {
		b.start(items[half:])
	}
}

// shutdownBeforeSubmit ends a job at shutdown before a submit was answered: its items stay
// held for handBack; the record stays if a submit may have taken effect.
func (b *Bulker) shutdownBeforeSubmit(bj *job) {
	var rec queue.BulkRecord
	b.locked(func() {
		rec = bj.rec
		bj.finished = true
		delete(b.jobs, bj.key)
	})
	if rec.Ambiguous.IsZero() {
		b.del(rec.Key)
	}
}

// ambiguousFence is until when a job with a submit that got no answer may still be applied.
func (b *Bulker) ambiguousFence(bj *job) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bj.rec.Ambiguous.IsZero() {
		return time.Time{}
	}
	return bj.rec.Submitted.Add(b.cfg.Deadline)
}

// followLoop reads bj's batches until every item is settled, the job is past its deadline,
// or the pool shuts down.
func (b *Bulker) followLoop(ctx context.Context, bj *job) {
	var (
		rec     queue.BulkRecord
		est     time.Duration
		adopted bool
		sent    time.Time
	)
	b.locked(func() { rec, est, adopted, sent = bj.rec, b.est, bj.adopted, bj.sent })
	deadline := rec.Submitted.Add(b.cfg.Deadline)
	lost := rec.Submitted.Add(2 * b.cfg.Deadline)
	wait := min(max(est+est/10+50*time.Millisecond-time.Since(sent), firstReadMin), readMax)
	if adopted {
		wait = 0
	}
	next := readMin
	overdue, unknown := false, false
	for {
		// Wake at the deadline and at the end, at the latest: a read then decides.
		if !overdue {
			wait = min(wait, time.Until(deadline))
		}
		wait = max(min(wait, time.Until(lost)), 0)
		if ctxtime.Sleep(ctx, wait) != nil {
			b.stopFollowing(bj)
			return
		}
		if b.leftHere(bj) {
			return
		}
		bb, went, err := b.read(ctx, bj, rec.JobID)
		if !went {
			b.stopFollowing(bj)
			return
		}
		step := b.readAnswer(bj, rec.JobID, bb, err)
		switch step {
		case readOver:
			return
		case readAgain:
			wait = 0
			continue
		}
		unknown = step == readUnknown
		now := time.Now()
		if !now.Before(lost) {
			b.log.Warn("bulk job given up as lost: not complete within twice its deadline; its conversations go on", "job", rec.JobID)
			b.finish(bj, true)
			return
		}
		if !overdue && !now.Before(deadline) {
			overdue = true
			b.log.Warn("bulk job past its deadline; sending its unsettled items as single PUTs and holding their conversations' newer updates until it is complete",
				"job", rec.JobID, "deadline", b.cfg.Deadline, "lost_after", lost.Format(time.RFC3339))
			b.fallback(bj, cond(unknown, "unknown", "deadline"), lost, true)
		}
		wait, next = next, min(2*next, readMax)
	}
}

// leftHere hands back what bj holds that goes to the active replica now, and reports
// whether bj is no longer followed here (handOver).
func (b *Bulker) leftHere(bj *job) bool {
	items, stop := b.handOver(bj)
	for _, it := range items {
		b.host.Resume(it)
	}
	return stop
}

// read reads bj's batches (job id) through the host once the gates and the budget let it,
// and the job's own status too when the batches cannot tell whether it is complete; went is
// false when ctx ended first.
func (b *Bulker) read(ctx context.Context, bj *job, id string) (bb *kustomer.BulkBatches, went bool, err error) {
	went, err = b.host.Request(ctx, pacer.BulkRead, bj.key, func(ctx context.Context) (kustomer.RateLimit, error) {
		var err error
		bb, err = b.cli.ReadBulkBatches(ctx, id)
		if bb != nil {
			return bb.RateLimit, err
		}
		return kustomer.RateLimit{}, err
	})
	if !went || err != nil || !bb.NeedsJob(bj.kitems) {
		return bb, went, err
	}
	went, err = b.host.Request(ctx, pacer.BulkRead, bj.key, func(ctx context.Context) (kustomer.RateLimit, error) {
		job, err := b.cli.ReadBulkJob(ctx, id)
		if job == nil {
			return kustomer.RateLimit{}, err
		}
		bb.Job = job
		return job.RateLimit, err
	})
	return bb, went, err
}

// readStep is what follows the answer to a read of a job.
type readStep int

const (
	readLater   readStep = iota // read again after the wait
	readAgain                   // read again at once (after an org-wide pause)
	readOver                    // the job is settled, given up, or no longer followed
	readUnknown                 // Kustomer did not show the job: read again after the wait
)

// readAnswer carries out what the answer to a read of bj (job id) says: bb, or err.
func (b *Bulker) readAnswer(bj *job, id string, bb *kustomer.BulkBatches, err error) readStep {
	var apiErr *kustomer.APIError
	switch {
	case err == nil:
		if b.apply(bj, bb) {
			return readOver
		}
	case b.hard().Err() != nil:
		b.stopFollowing(bj)
		return readOver
	case errors.Is(err, kustomer.ErrBulkReadDenied):
		b.deny(err)
		return readOver
	case errors.As(err, &apiErr) && apiErr.Class == kustomer.ClassThrottled:
		b.host.Throttled(apiErr.RateLimit)
		b.metrics.retry("throttled_org")
		return readAgain
	case errors.As(err, &apiErr) && apiErr.Class == kustomer.ClassPermanent:
		// Kustomer accepted the job: a 404 (or another refusal) may only mean it does not
		// show it yet, and it may still apply it. Its deadline decides, as for a job that
		// stays unfinished.
		b.log.Warn("Kustomer does not show a bulk job it accepted; reading it again until its deadline", "job", id, "status", apiErr.Status, "reason", apiErr.Reason)
		return readUnknown
	default:
		b.log.Info("cannot read a bulk job; reading it again later", "job", id, "error", err)
	}
	return readLater
}

// stopFollowing leaves bj at shutdown: its items stay held for handBack, its record for the
// next process.
func (b *Bulker) stopFollowing(bj *job) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bj.finished = true
	delete(b.jobs, bj.key)
}

// apply settles bj's items that the batches settle and reports whether the job is over.
func (b *Bulker) apply(bj *job, bb *kustomer.BulkBatches) bool {
	outs := bb.Outcomes(bj.kitems)
	now, done, id := b.record(bj, outs)
	if done {
		b.learn(bj, bb)
	}
	for _, s := range now {
		b.settleItem(id, s.it, s.o, "")
	}
	if done {
		b.finish(bj, true)
	}
	return done
}

// record notes in bj the outcomes outs tell, returning the held items they settle, whether
// every item is settled, and the job's id.
func (b *Bulker) record(bj *job, outs []kustomer.ItemOutcome) (now []settlement, done bool, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
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
		// Held by its own message, or (a job of another process) by a redelivered member's.
		for _, r := range bj.rec.Items[i].MsgRefs() {
			if it, ok := bj.held[r]; ok {
				delete(bj.held, r)
				now = append(now, settlement{it, o})
			}
		}
	}
	return now, settled == len(outs), bj.rec.JobID
}

// learn takes in how long bj, complete by bb, took: the first read of the next jobs comes then.
func (b *Bulker) learn(bj *job, bb *kustomer.BulkBatches) {
	var last time.Time
	for _, bt := range bb.Batches {
		if bt.CompletedAt.After(last) {
			last = bt.CompletedAt
		}
	}
	var took time.Duration
	b.locked(func() {
		took = time.Since(bj.sent)
		if d := last.Sub(bj.sent); !last.IsZero() && d > 0 && d < took {
			took = d
		}
		if !bj.adopted {
			b.est = time.Duration(float64(b.est)*(1-learnWeight) + float64(took)*learnWeight)
		}
	})
	b.metrics.completed(took.Seconds())
}

// settlement is an item and its outcome, to carry out once b.mu is let go.
type settlement struct {
	it Item
	o  kustomer.ItemOutcome
}

// settleItem carries out the outcome job gave an item; b.mu is not held.
func (b *Bulker) settleItem(job string, it Item, o kustomer.ItemOutcome, how string) {
	switch o.State {
	case kustomer.ItemSucceeded:
		b.metrics.item("succeeded")
		it.Job = job
		b.host.Applied(it)
	default:
		b.metrics.item("failed")
		b.itemLog(it).Info("bulk item failed; sending it as a single PUT", "job", job, "reason", o.Reason, "how", how)
		b.host.Single(it)
	}
}

// fallback sends bj's unsettled items as single PUTs, counting the job failed for reason.
// With a fence time, the job may still apply them late: their conversations' newer updates
// wait until then (or until the job is complete), and the record keeps the fence for the
// next process. Unless following, b stops following the job.
func (b *Bulker) fallback(bj *job, reason string, fence time.Time, following bool) {
	b.metrics.failed(reason)
	var (
		held map[queue.MsgRef]Item
		rec  queue.BulkRecord
	)
	b.locked(func() {
		held = bj.held
		bj.held = make(map[queue.MsgRef]Item)
		if !fence.IsZero() {
			bj.rec.FenceUntil = later(bj.rec.FenceUntil, fence)
			for _, it := range bj.rec.Items {
				b.addFence(it.Conv, it.LastSeq(), fence)
			}
		}
		rec = bj.rec
	})
	if !fence.IsZero() {
		for ref, it := range held {
			it.MayApply = true
			held[ref] = it
		}
	}
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
func (b *Bulker) addFence(conv string, seq uint64, until time.Time) {
	f := b.fences[conv]
	b.fences[conv] = fence{seq: max(f.seq, seq), until: later(f.until, until)}
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
func (b *Bulker) finish(bj *job, lift bool) {
	rec, keep, ok := b.finished(bj, lift, time.Now())
	if !ok {
		return
	}
	if lift {
		b.resumeUnfenced()
	}
	if !keep.IsZero() {
		b.put(rec)
		return
	}
	b.del(rec.Key)
}

// finished marks bj finished at now, as finish says, and returns its record and until when
// to keep it (zero: delete it now); ok is false if bj was finished already.
func (b *Bulker) finished(bj *job, lift bool, now time.Time) (rec queue.BulkRecord, keep time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bj.finished {
		return rec, keep, false
	}
	bj.finished = true
	delete(b.jobs, bj.key)
	if bj.stop != nil {
		bj.stop() // a submit still waiting for the gates never goes
	}
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
				b.addFence(it.Conv, it.LastSeq(), until)
			}
			bj.rec.FenceUntil = later(bj.rec.FenceUntil, until)
		}
	}
	bj.rec.Settled = now
	rec = bj.rec
	if rec.FenceUntil.After(now) {
		keep = rec.FenceUntil
	}
	if bj.adopted {
		keep = later(keep, now.Add(b.set.Redeliveries))
	}
	for ref, kb := range b.known {
		if kb == bj && bj.outcome[bj.itemRef(ref)].State == kustomer.ItemPending {
			delete(b.known, ref) // lost: a redelivery goes on as any update
		}
	}
	if !keep.IsZero() {
		b.forget[rec.Key] = keep
	}
	return rec, keep, true
}

// resumeUnfenced hands the conversations whose fence is gone back to the workers.
func (b *Bulker) resumeUnfenced() {
	var free []Item
	b.locked(func() {
		for conv, it := range b.fenced {
			if _, held := b.fences[conv]; !held {
				free = append(free, it)
				delete(b.fenced, conv)
			}
		}
	})
	for _, it := range free {
		b.host.Resume(it)
	}
}

// follow follows a job another process submitted, once one of its items came here.
func (b *Bulker) follow(bj *job) {
	b.followLoop(b.ctx, bj)
}

// deny turns bulk off for the process: the key may not read jobs. Every unsettled item goes
// as a single PUT; the jobs' conversations wait for their newer updates until the jobs'
// deadlines, since nobody can tell when Kustomer applies them.
func (b *Bulker) deny(err error) {
	b.off.Store(true)
	var (
		warn    bool
		jobs    []*job
		pending []Item
	)
	b.locked(func() {
		warn, b.warned = !b.warned, true
		for _, bj := range b.jobs {
			jobs = append(jobs, bj)
		}
		pending, b.pending = b.pending, nil
	})
	if warn {
		b.log.Warn("the API key may submit bulk jobs but not read them: it lacks the role org.permission.bulk.read; bulk mode is off until restart, pending items go as single PUTs",
			"error", err)
	}
	for _, bj := range jobs {
		var fence time.Time // none for a job whose submit never went out: it never will
		b.locked(func() {
			if bj.submitting || !bj.rec.Ambiguous.IsZero() {
				fence = bj.rec.Submitted.Add(b.cfg.Deadline)
			}
		})
		b.fallback(bj, "read_denied", fence, false)
	}
	for _, it := range pending {
		b.single(it, "single")
	}
}

// Reload reads the store of jobs in flight now (load): the jobs other processes submitted
// since the last read become known, and their fences hold here.
func (b *Bulker) Reload(ctx context.Context) { b.load(ctx) }

// load reads the store: jobs another process submitted become known, so that their
// redelivered items are settled by their results; their fences hold here too.
func (b *Bulker) load(ctx context.Context) {
	if b.store == nil {
		return
	}
	active := b.host.Active()
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	recs, err := b.store.List(lctx)
	cancel()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.loaded = now
	if err != nil {
		b.log.Warn("cannot read the bulk jobs in flight; redelivered items of a job another process submitted are sent again", "error", err)
		return
	}
	for _, r := range recs {
		if _, own := b.jobs[r.Key]; !own {
			b.remember(r, now)
		}
	}
	b.takeOverLocked(active, now)
}

// remember takes in the record of a job another process submitted, read from the store at
// now: its fences hold here, and its items become known unless the record is done with;
// b.mu is held.
func (b *Bulker) remember(r queue.BulkRecord, now time.Time) {
	if r.FenceUntil.After(now) {
		for _, it := range r.Items {
			b.addFence(it.Conv, it.LastSeq(), r.FenceUntil)
		}
	}
	if r.JobID == "" {
		// A submit that was never answered: its job, if any, is unknown. The items go
		// again; their conversations' newer updates wait until it would be past its
		// deadline.
		if until := r.Submitted.Add(b.cfg.Deadline); until.After(now) {
			for _, it := range r.Items {
				b.addFence(it.Conv, it.LastSeq(), until)
			}
			if _, ok := b.forget[r.Key]; !ok {
				b.forget[r.Key] = until
			}
		} else if _, ok := b.forget[r.Key]; !ok {
			b.forget[r.Key] = now
		}
		return
	}
	if !r.Ambiguous.IsZero() {
		if until := r.Submitted.Add(b.cfg.Deadline); until.After(now) {
			for _, it := range r.Items {
				b.addFence(it.Conv, it.LastSeq(), until)
			}
		}
	}
	if len(r.Items) == 0 {
		return
	}
	if _, ok := b.known[r.Items[0].MsgRef()]; ok {
		return
	}
	if r.Submitted.Add(2 * b.cfg.Deadline).Before(now) {
		if _, ok := b.forget[r.Key]; !ok {
			b.forget[r.Key] = now // nobody came for its items: they were settled
		}
		return
	}
	b.adopt(r)
}

// adopt makes r's job known, so that a redelivery of one of its items is settled by the job's
// outcome for it; b.mu is held.
func (b *Bulker) adopt(r queue.BulkRecord) {
	bj := &job{key: r.Key, rec: r, adopted: true, sent: r.Submitted, held: make(map[queue.MsgRef]Item),
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
		for _, m := range it.Members {
			if bj.of == nil {
				bj.of = make(map[queue.MsgRef]queue.MsgRef)
			}
			bj.of[m.MsgRef()] = it.MsgRef()
			b.known[m.MsgRef()] = bj
		}
	}
	if !r.Settled.IsZero() {
		bj.follows, bj.finished = true, true // nothing to read: the outcomes are stored
		for _, it := range r.Items {
			if it.Outcome == "" {
				for _, ref := range it.MsgRefs() {
					delete(b.known, ref)
				}
			}
		}
	}
}

// housekeep lifts fences that ran out and deletes the records nobody needs any more.
func (b *Bulker) housekeep(ctx context.Context, now time.Time) {
	b.activated(ctx)
	b.mu.Lock()
	for conv, f := range b.fences {
		if !now.Before(f.until) {
			delete(b.fences, conv)
		}
	}
	b.mu.Unlock()
	b.resumeUnfenced()
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
func (b *Bulker) put(rec queue.BulkRecord) bool { return b.putWithin(b.hard(), storeTimeout, rec) }

// putWithin stores rec within d under ctx, reporting whether it could.
func (b *Bulker) putWithin(ctx context.Context, d time.Duration, rec queue.BulkRecord) bool {
	if b.store == nil {
		return true
	}
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := b.store.Put(sctx, rec); err != nil {
		b.log.Warn("cannot store a bulk job in flight", "job", rec.JobID, "error", err)
		return false
	}
	return true
}

func (b *Bulker) del(key string) {
	if b.store == nil {
		return
	}
	sctx, cancel := context.WithTimeout(b.hard(), storeTimeout)
	defer cancel()
	if err := b.store.Delete(sctx, key); err != nil {
		b.log.Debug("cannot delete a bulk job's record", "error", err)
	}
}

// cond is a if c, else b.
func cond[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}
