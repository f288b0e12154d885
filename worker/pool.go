package worker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// Pool applies update messages from a JetStream pull consumer to Kustomer.
//
// It promises at-least-once: a message is acknowledged only after Kustomer accepted the update
// or after its dead letter was stored; anything else is handed back for redelivery. Updates to
// one conversation are applied in the order the pool received them, one at a time, even while
// an earlier one waits for a retry; a conversation waiting for a retry holds up no other.
// See the package documentation for how a message flows and the invariants that keep these.
type Pool struct {
	// The collaborators and settings: set before Run, never changed after.
	Consumer    Consumer     // the durable pull consumer on the work stream; its AckWait and MaxDeliver apply
	Client      Updater      // sends the PUT
	DeadLetters DeadLetterer // stores dead letters
	Attempts    AttemptStore // optional: without it attempts are counted per delivery only
	Pacer       Budget       // paces every request; default pacer.New(DefaultRatePerMinute)
	Metrics     *Metrics     // optional
	Log         *slog.Logger // default: discard
	Config      Config
	// Heal, optional, re-creates the consumer and the streams when pulls find them missing
	// (deleted under a running worker); the command passes queue.Ensure when it manages them.
	Heal func(ctx context.Context) error
	// Backfill, optional, is the backfill lane's consumer: its messages get the budget that
	// live ones (from Consumer) leave, and never more than MaxAckPending less a reserve for
	// live ones are held. Without it, Consumer is the only lane and its messages are live.
	Backfill Consumer
	// Order, optional with Backfill, finds the older updates of a conversation still pending
	// in the other lane when a message arrives, so that it does not overtake them (a live
	// update an older backfill one, a backfill update an older live one): they are applied
	// first.
	Order OlderFinder
	// Outstanding, optional, reads the messages that were delivered and never acknowledged
	// when the pool starts, so that a conversation whose older update a dead process held is
	// not updated again before that one (see the package documentation). With it, the
	// acknowledgement of a conversation's last held message is not waited for: see ack.
	Outstanding Outstanding
	// BulkClient, with Config.Bulk.Enabled, submits and reads bulk jobs; default Client, if it
	// is one. Without either, bulk mode stays off.
	BulkClient BulkClient
	// BulkJobs, optional with Config.Bulk.Enabled, keeps the bulk jobs in flight so that a
	// process started after this one reads their results instead of re-sending their items.
	BulkJobs BulkStore
	// HardStop, optional, cuts a graceful shutdown short when it ends (a second signal):
	// requests in flight are abandoned at once and handed back, spending no attempt, as when
	// ShutdownTimeout passes.
	HardStop context.Context

	// Written by Run before it starts any goroutine, read-only after.
	cfg     Config
	policy  policy
	ackWait time.Duration   // the consumer's
	hard    context.Context // ends when requests in flight must be abandoned
	auth    *gate           // closed while Kustomer refuses the API key
	outage  *breaker        // open while Kustomer is down for everybody
	bulk    *bulker         // nil unless bulk mode is on (bulk.go)

	running atomic.Bool // written by Run; read by Ready from any goroutine
	// healing is set while a goroutine runs Heal (fetchFailed starts it, at most one at a
	// time, so that the lanes' pulls go on being retried meanwhile); Run waits for healWG.
	healing  atomic.Bool
	healWG   sync.WaitGroup
	inflight atomic.Int64 // requests sent and not answered
	// confirming counts the acknowledgements being waited for: Run waits for them before it
	// hands back what is left.
	confirming sync.WaitGroup

	// Dispatch state. mu guards the maps, closing, every conv's jobs and timer, and the fields
	// of job marked "guarded by Pool.mu".
	mu      sync.Mutex
	convs   map[string]*conv      // conversations with held messages, by key
	bySeq   map[queue.MsgRef]*job // held messages
	closing bool                  // handBack began: no conversation is made ready again
	// applied holds the sequences of messages settled (applied, or dead-lettered) whose
	// acknowledgement JetStream confirmed, until the consumer's acknowledgement floor passes
	// them: a broker that restarts right after confirming can still lose an acknowledgement,
	// and a redelivery of one of these is acknowledged again without a second request.
	applied map[queue.MsgRef]struct{}
	// unconfirmed holds, by conversation, its last message acknowledged without waiting for
	// JetStream's confirmation (no newer one was held then), until the acknowledgement floor
	// passes it: the conversation's next update is sent only once that message is gone from
	// the work stream (see ack).
	unconfirmed map[string]unconfirmed
	// waiting holds, by conversation, the older messages that a process that died held when
	// this one started: delivered, unacknowledged, and not in this pool's hands yet. A
	// conversation with any is parked, so that none of its newer updates overtakes them.
	waiting      map[string]map[queue.MsgRef]struct{}
	waitingUntil time.Time // then waiting is given up: those messages were never redelivered

	// readyLive and readyBackfill hold conversations whose head message may be tried now, by
	// the head's class: workers take live ones first. Sends happen only under mu and never
	// block: every conversation in convs holds at least one slot (a conversation of messages
	// read directly for the order across lanes is joined at once by the live message that
	// found them, which holds one), so there are never more than cap(slots) of them, and each
	// channel has room for twice that. Workers receive without the lock.
	readyLive, readyBackfill chan *conv
	// slots has one token per held message that a pull brought: a fetch goroutine puts one in
	// before it pulls a message and whoever lets go of a held message takes one out. At most
	// MaxAckPending. Messages read directly for the order across lanes hold none.
	slots chan struct{}
	lanes []*source // the live lane first; written by init
	// handover keeps order when this replica becomes or stops being the active one (handover.go).
	handover handover
}

// source is one lane the pool pulls from.
type source struct {
	// Set by init before Run starts any goroutine, never changed after; read without a lock
	// by the lane's fetch goroutine, the workers and the heartbeat.
	name  string         // for the log
	cons  Consumer       // pulled by the lane's fetch goroutine; its Info read by laneFloor and forgetApplied
	class pacer.Priority // the class of the lane's messages (add)
	// slots is nil, or a cap of the lane's own below MaxAckPending (the backfill lane): its
	// fetch goroutine puts a token in (take), whoever lets go of a message takes one out
	// (release); the channel is its own lock.
	slots chan struct{}
	// role is cons's, if it has one (handover.go); turn is role's Lost channel of the turn as
	// the active replica the pool works for, closed while a standby. Written by the lane's
	// fetch goroutine under Pool.mu.
	role Role
	turn <-chan struct{}

	// fetch is whether the lane's pulls fail, for Ready and the log: each lane has its own,
	// so that pulls that work on one lane cannot hide a lane whose pulls keep failing.
	// Guarded by its own mu.
	fetch fetchState

	// The lane's acknowledgement floor as last read for previousGone, and when that read
	// began. Guarded by floorMu, which is held while it is read.
	floorMu sync.Mutex
	floor   uint64
	floorAt time.Time
}

// unconfirmed is a message acknowledged without waiting for the confirmation.
type unconfirmed struct {
	ref queue.MsgRef
	src *source // its lane (one read directly is acknowledged confirmed)
}

// conv is one conversation's held messages, in stream order. A conv in Pool.convs is always in
// exactly one place (see the package documentation's invariants): parked, a ready channel, one
// worker's hands, a retry timer, the bulker's hands, or the goroutine awaiting its head's
// acknowledgement. Its fields are guarded by Pool.mu.
type conv struct {
	key    string
	jobs   []*job
	timer  *time.Timer
	parked bool // waiting for older messages that another process held (Pool.waiting)
}

// job is one held message.
type job struct {
	// Set when the message is taken, never changed after.
	src     *source // the lane whose pull brought it and holds its slots; nil if read directly
	class   pacer.Priority
	ref     queue.MsgRef
	update  kustomer.Update
	invalid error

	// Guarded by Pool.mu: a redelivery replaces the message, the heartbeat marks progress.
	msg       jetstream.Msg // the newest delivery
	delivered uint64        // NumDelivered of msg
	progress  time.Time     // when msg was last marked in progress

	// Owned by the goroutine that holds the job's conversation (one at a time, by conv's
	// invariant): no lock.
	attempts  int  // requests spent on retryable failures, across deliveries once loaded
	throttles int  // per-conversation 429s in this process
	loaded    bool // attempts read from the store
	recorded  bool // the store holds a count for this message
	acks      int  // acknowledgements that failed
	checks    int  // reads finding the conversation's unconfirmed message still in the stream
	noBulk    bool // bulk mode: send it as a single PUT (bulk.go)
	// settled: Kustomer applied the update (or its dead letter is stored) but the
	// acknowledgement is not confirmed yet. The job is only acknowledged again, never sent.
	settled bool
}

// ErrAuthBlocked is Ready's answer while Kustomer refuses the API key.
var ErrAuthBlocked = errors.New("Kustomer refuses the API key (401/403): not taking messages")

// ErrNotRunning is Ready's answer before Run binds the consumer or after it returned.
var ErrNotRunning = errors.New("worker pool not running")

// Ready reports whether the pool is taking messages.
func (p *Pool) Ready() error {
	if !p.running.Load() {
		return ErrNotRunning
	}
	if closed, _ := p.auth.Closed(); closed {
		return ErrAuthBlocked
	}
	if closed, since := p.outage.gate.Closed(); closed {
		return &Unavailable{Since: since}
	}
	for _, src := range p.lanes {
		if err := src.fetch.err(src.name); err != nil {
			return err
		}
	}
	return nil
}

// Run works until ctx ends, then shuts down gracefully: it stops taking messages, lets
// requests in flight finish within ShutdownTimeout, hands every unfinished message back for
// redelivery, and returns once every goroutine it started has stopped.
func (p *Pool) Run(ctx context.Context) error {
	if err := p.init(); err != nil {
		return err
	}
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	if p.HardStop != nil {
		defer context.AfterFunc(p.HardStop, cancelHard)()
	}
	p.hard = hard

	p.recoverOrder(ctx, recoverStart)
	var wg sync.WaitGroup
	for _, src := range p.lanes {
		wg.Go(func() { p.fetch(ctx, src) })
	}
	for range p.cfg.Concurrency {
		wg.Go(func() { p.work(ctx, hard) })
	}
	if p.bulk != nil {
		p.bulk.ctx = ctx
		wg.Go(func() { p.bulk.run(ctx) })
	}
	hbStop := make(chan struct{})
	var hb sync.WaitGroup
	hb.Go(func() { p.heartbeat(hbStop) })
	p.running.Store(true)
	p.Log.Info("worker pool started", "concurrency", p.cfg.Concurrency, "max_ack_pending", p.cfg.MaxAckPending,
		"max_attempts", p.cfg.MaxAttempts, "ack_wait", p.ackWait, "max_deliver", p.policy.maxDeliver)

	<-ctx.Done()
	p.running.Store(false)
	p.Log.Info("shutting down: no new messages; waiting for requests in flight",
		"in_flight", p.inflight.Load(), "timeout", p.cfg.ShutdownTimeout)
	deadline := time.AfterFunc(p.cfg.ShutdownTimeout, cancelHard)
	wg.Wait()
	p.healWG.Wait()
	if p.bulk != nil {
		p.bulk.wait()
	}
	p.confirming.Wait()
	deadline.Stop()
	p.handBack()
	close(hbStop)
	hb.Wait()
	return nil
}

// init checks the configuration and sets up the state Run's goroutines share.
func (p *Pool) init() error {
	p.cfg = p.Config.WithDefaults()
	if err := p.cfg.Validate(); err != nil {
		return err
	}
	if p.Consumer == nil || p.Client == nil || p.DeadLetters == nil {
		return errors.New("worker: Pool needs Consumer, Client and DeadLetters")
	}
	if p.Pacer == nil {
		p.Pacer = pacer.New(DefaultRatePerMinute)
	}
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	p.ackWait, p.policy = defaultAckWaitIfUnknown, policy{maxAttempts: p.cfg.MaxAttempts,
		retryInitial: p.cfg.RetryInitial, retryMax: p.cfg.RetryMax}
	if info := p.Consumer.CachedInfo(); info != nil {
		p.ackWait, p.policy.maxDeliver = max(info.Config.AckWait, ackWaitFloor), info.Config.MaxDeliver
	}
	p.auth = newGate(authProbeMin, authProbeMax, func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 1)
		p.Log.Error("Kustomer refused the API key: stopped taking messages; probing until it works again (fix the key or its role; nothing is dead-lettered)")
	}, func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 0)
		p.Log.Info("Kustomer accepts the API key again: resuming")
	})
	p.outage = newBreaker(p.cfg.OutageThreshold, func(cause string) {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.KustomerDown }, 1)
		p.Metrics.breakerTrip()
		p.Log.Error("Kustomer unavailable: pausing every request and probing until it answers (no attempts are spent, nothing is dead-lettered)",
			"cause", cause)
	}, func(down time.Duration) {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.KustomerDown }, 0)
		p.Log.Info("Kustomer answers again: resuming", "unavailable_for", down.Round(time.Millisecond))
	})
	p.convs = make(map[string]*conv)
	p.bySeq = make(map[queue.MsgRef]*job)
	p.applied = make(map[queue.MsgRef]struct{})
	p.unconfirmed = make(map[string]unconfirmed)
	p.waiting = make(map[string]map[queue.MsgRef]struct{})
	p.readyLive = make(chan *conv, 2*p.cfg.MaxAckPending+1)
	p.readyBackfill = make(chan *conv, 2*p.cfg.MaxAckPending+1)
	p.slots = make(chan struct{}, p.cfg.MaxAckPending)
	p.lanes = []*source{{name: "live", cons: p.Consumer, class: pacer.Live}}
	if p.Backfill != nil {
		reserve := max(p.cfg.Concurrency, p.cfg.MaxAckPending/4)
		p.lanes = append(p.lanes, &source{name: "backfill", cons: p.Backfill, class: pacer.Backfill,
			slots: make(chan struct{}, max(p.cfg.MaxAckPending-reserve, 1))})
	}
	p.closing = false
	p.bulk = nil
	if p.cfg.Bulk.Enabled {
		if p.bulk = newBulker(p); p.bulk == nil {
			return errors.New("worker: Config.Bulk needs a BulkClient (or a Client that is one)")
		}
	}
	return nil
}

// Waits of the fetch loop: while the key is refused it checks again this often, and a failing
// pull is retried with backoff from fetchRetryMin to fetchRetryMax.
const (
	blockedRecheck = 200 * time.Millisecond
	fetchRetryMin  = 100 * time.Millisecond
	fetchRetryMax  = 2 * time.Second
	// batchGather is how long the fetch loop waits for room for a batch while messages are held.
	batchGather = 10 * time.Millisecond
)

// fetch takes messages from one lane's consumer while there is room, and never while Kustomer
// refuses the key or the org budget is paused.
func (p *Pool) fetch(ctx context.Context, src *source) {
	defer p.followRole(ctx, src)() // active and standby (handover.go)
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(fetchRetryMin),
		backoff.WithMaxInterval(fetchRetryMax), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		if p.gated() {
			_ = sleep(ctx, blockedRecheck)
			continue
		}
		if until := p.Pacer.PausedUntil(); !until.IsZero() {
			_ = sleep(ctx, time.Until(until))
			continue
		}
		n, ok := p.room(ctx, src)
		if !ok {
			return
		}
		// The pull is not cut short by shutdown: messages the server already sent to a
		// cancelled pull would be lost to this process and wait out AckWait before anyone
		// else gets them. A pull lasts FetchWait at most.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.FetchWait)
		batch, err := src.cons.Fetch(n, jetstream.FetchContext(fctx))
		got := 0
		if err == nil {
			for msg := range batch.Messages() {
				got++
				p.admit(ctx, msg, src)
			}
			err = batch.Error()
		}
		cancel()
		for range n - got {
			p.release(src)
		}
		if pullFailed(ctx, err) {
			p.fetchFailed(ctx, src, err)
			_ = sleep(ctx, retry.NextBackOff())
			continue
		}
		p.fetchWorks(src)
		retry.Reset()
	}
}

// gated reports whether a gate stops every request: the key is refused, or Kustomer is down.
func (p *Pool) gated() bool {
	auth, _ := p.auth.Closed()
	down, _ := p.outage.gate.Closed()
	return auth || down
}

// room takes slots for the next pull: at least one (waiting for it), and while messages are
// held it gathers more for a moment, so that a backlog is pulled in batches rather than one
// pull request per message. ok is false when ctx ended.
func (p *Pool) room(ctx context.Context, src *source) (n int, ok bool) {
	if !p.take(ctx, src, nil) {
		return 0, false
	}
	n = 1
	if len(p.slots) > 1 {
		t := time.NewTimer(batchGather)
		for n < p.cfg.MaxAckPending/2 && p.take(ctx, src, t.C) {
			n++
		}
		t.Stop()
	}
	for n < p.cfg.MaxAckPending && p.take(ctx, src, closed) {
		n++
	}
	return n, true
}

// closed is a channel that is always ready: take with it does not wait.
var closed = func() chan time.Time { c := make(chan time.Time); close(c); return c }()

// take puts a token into src's slots (if it has its own) and the pool's, waiting until both
// have room, stop fires (nil: never) or ctx ends; it reports whether it took them.
func (p *Pool) take(ctx context.Context, src *source, stop <-chan time.Time) bool {
	if src.slots != nil {
		select {
		case src.slots <- struct{}{}:
		case <-stop:
			return false
		case <-ctx.Done():
			return false
		}
	}
	select {
	case p.slots <- struct{}{}:
		return true
	case <-stop:
	case <-ctx.Done():
	}
	if src.slots != nil {
		<-src.slots
	}
	return false
}

// release gives back the tokens a message of src held; nil src (read directly) holds none.
func (p *Pool) release(src *source) {
	if src == nil {
		return
	}
	<-p.slots
	if src.slots != nil {
		<-src.slots
	}
}

// add holds a fetched message of src behind any earlier one for the same conversation. The
// slots taken for it stay with it until it is let go. A message is first checked for older
// updates of its conversation still pending in the other lane (Order); those are held too,
// ahead of it.
func (p *Pool) add(msg jetstream.Msg, src *source) {
	md, err := msg.Metadata()
	if err != nil { // not a JetStream message; cannot be acked either
		p.Log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		p.release(src)
		return
	}
	ref := queue.NewMsgRef(md.Sequence.Stream, md.Timestamp)
	p.mu.Lock()
	_, done := p.applied[ref]
	_, held := p.bySeq[ref]
	p.mu.Unlock()
	if done {
		// Settled and acknowledged before, but the acknowledgement was lost (a broker
		// restart): acknowledge again, never apply again.
		if err := msg.Ack(); err != nil {
			p.Log.Debug("ack of a redelivered settled message failed", "seq", ref.Seq, "error", err)
		}
		p.release(src)
		return
	}
	update, invalid := kustomer.Decode(msg.Data()) // outside the lock: workers ack under it
	if invalid == nil && !held && src != nil && p.Order != nil && p.Backfill != nil {
		p.addOlder(update.ID, ref.Seq, src.class)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if j, ok := p.bySeq[ref]; ok {
		// Redelivered while still held (AckWait ran out during a broker outage), or delivered
		// by its lane after it was read directly: keep one job, answering on the delivery.
		j.msg, j.delivered, j.progress = msg, md.NumDelivered, time.Now()
		if j.src == nil && src != nil {
			j.src = src // it holds the delivery's slots from now on
		} else {
			p.release(src)
		}
		return
	}
	class := pacer.Live
	if src != nil {
		class = src.class
	}
	j := &job{msg: msg, src: src, class: class, ref: ref, delivered: md.NumDelivered, progress: time.Now(), update: update, invalid: invalid}
	key := j.update.ID
	if j.invalid != nil {
		key = "\x00" + strconv.FormatUint(ref.Seq, 10) // invalid: no conversation, no order
	}
	p.bySeq[ref] = j
	p.file(j, key)
}

// file puts a new job under its conversation, in stream order, and makes the conversation
// ready if it may go; p.mu is held.
func (p *Pool) file(j *job, key string) {
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	c, ok := p.convs[key]
	if ok {
		c.insert(j)
	} else {
		c = &conv{key: key, jobs: []*job{j}, parked: true}
		p.convs[key] = c
	}
	if w := p.waiting[key]; w != nil && j.src != nil {
		// An older message held elsewhere: here now, and first in line. One read directly is
		// not: its holder may be applying it (recover.go lets go once its lane delivers it).
		delete(w, j.ref)
	}
	p.unpark(c)
}

// insert files j in stream order among c's jobs, behind the head unless c is parked: the
// head of a conversation that is not parked may be in a worker's hands. c is guarded by
// Pool.mu.
func (c *conv) insert(j *job) {
	i := len(c.jobs)
	for i > 0 && c.jobs[i-1].ref.Seq > j.ref.Seq && (c.parked || i > 1) {
		i--
	}
	c.jobs = slices.Insert(c.jobs, i, j)
}

// unpark makes a parked conversation ready once no older message of it is outstanding
// elsewhere; p.mu is held.
func (p *Pool) unpark(c *conv) {
	if !c.parked || len(p.waiting[c.key]) > 0 || len(c.jobs) == 0 {
		return
	}
	delete(p.waiting, c.key)
	c.parked = false
	p.makeReady(c)
}

func (p *Pool) work(ctx, hard context.Context) {
	// The contexts of this worker's requests hang under a context of its own rather than all
	// under hard, whose lock every worker would take twice a request.
	hard, cancel := context.WithCancel(hard)
	defer cancel()
	for {
		select { // a live conversation first, whenever one is ready
		case c := <-p.readyLive:
			p.process(ctx, hard, c)
			continue
		default:
		}
		select {
		case <-ctx.Done():
			return
		case c := <-p.readyLive:
			p.process(ctx, hard, c)
		case c := <-p.readyBackfill:
			p.process(ctx, hard, c)
		}
	}
}

// makeReady hands c to the workers, by its head message's class; p.mu is held.
func (p *Pool) makeReady(c *conv) {
	if c.jobs[0].class == pacer.Backfill {
		p.readyBackfill <- c
		return
	}
	p.readyLive <- c
}

// process makes one try at the head message of c (send), turns what happened into a decision
// (decide) and carries it out (settle). Shutdown leaves the message held for handBack.
func (p *Pool) process(ctx, hard context.Context, c *conv) {
	if p.giveBack(c) { // this replica is a standby now: handed back (handover.go)
		return
	}
	p.mu.Lock()
	j := c.jobs[0]
	t := tries{delivered: j.delivered}
	prev, unsure := p.unconfirmed[c.key]
	p.mu.Unlock()
	if unsure && !j.settled && !p.previousGone(hard, c, j, prev) {
		return // c is made ready again later
	}
	var tk, tkDown *ticket // the gates' tickets, once try took them
	defer func() {
		if r := recover(); r != nil {
			p.jobLog(j).Error("panic while handling a message; it will be retried", "panic", r, "stack", string(debug.Stack()))
			t.attempts, t.throttles = j.attempts, j.throttles
			p.settle(c, j, decide(outcome{panicked: r}, t, p.policy, rand.Float64()))
		}
	}()
	// Every ticket try takes is handed back here, panic or not: a probe that panicked learned
	// nothing and is given back (deferred after the recover, this runs before it). On the
	// normal path it runs after settle, so that the gates' log lines follow the message's.
	defer func() {
		if tkDown != nil {
			tkDown.Done()
		}
		if tk != nil {
			tk.Done()
		}
	}()
	if j.settled { // only its acknowledgement is missing
		p.ack(c, j)
		return
	}
	if p.bulk != nil && p.bulk.take(c, j, t.delivered) {
		return // in a bulk job, or held back for an older one (bulk.go)
	}
	o := p.try(ctx, hard, j, &tk, &tkDown)
	if o == nil {
		return // shutdown began while waiting: the message stays held for handBack
	}
	if p.outage.refund(j.ref.Seq) {
		j.attempts = max(j.attempts-1, 0) // spent on a failure that turned out to be an outage
	}
	if tkDown != nil {
		t.outage = p.outage.observe(tkDown, c.key, j.ref.Seq, healthOf(*o), reasonOf(*o))
	}
	t.attempts, t.throttles = j.attempts, j.throttles
	d := decide(*o, t, p.policy, rand.Float64())
	if tk != nil {
		tk.Report(d.key)
	}
	p.settle(c, j, d)
}

// try sends j's update once the gates (the key, Kustomer's health) and the pacer let it, and
// says what happened; nil when shutdown began before anything was sent. Each gate's ticket
// is stored in tk or tkDown the moment it is taken, even if try then panics, for the caller's
// deferred hand-back.
func (p *Pool) try(ctx, hard context.Context, j *job, tk, tkDown **ticket) *outcome {
	if j.invalid != nil {
		return &outcome{invalid: j.invalid}
	}
	p.loadAttempts(hard, j)
	var err error
	if *tk, err = p.auth.Acquire(ctx); err != nil {
		return nil
	}
	if *tkDown, err = p.outage.gate.Acquire(ctx); err != nil {
		return nil
	}
	start := time.Now()
	err = p.Pacer.Wait(ctx, j.class)
	p.Metrics.pacerWait(time.Since(start).Seconds())
	if err != nil {
		return nil
	}
	res, elapsed, err := p.send(hard, j)
	var apiErr *kustomer.APIError
	switch {
	case err == nil:
		p.Metrics.request(res.Status, elapsed)
		p.Pacer.Observe(res.RateLimit, int(p.inflight.Load()))
	case hard.Err() != nil:
		return &outcome{canceled: true} // cut short by the shutdown deadline: handed back
	case errors.As(err, &apiErr):
		p.Metrics.request(apiErr.Status, elapsed)
		p.Pacer.Observe(apiErr.RateLimit, int(p.inflight.Load()))
	case !errors.Is(err, kustomer.ErrInvalid):
		p.Metrics.request(0, elapsed)
	}
	return &outcome{err: err}
}

// loadAttempts reads the attempts an earlier delivery spent on j, once per job.
func (p *Pool) loadAttempts(ctx context.Context, j *job) {
	if j.loaded {
		return
	}
	j.loaded = true
	p.mu.Lock()
	delivered := j.delivered
	p.mu.Unlock()
	if delivered <= 1 || p.Attempts == nil {
		return
	}
	n, err := p.Attempts.Get(ctx, j.ref)
	if err != nil {
		p.jobLog(j).Warn("cannot read attempts; counting from this delivery", "error", err)
	}
	j.attempts = max(j.attempts, n)
	j.recorded = n > 0
}

// send makes the request, counting it in flight until it returns, panic or not.
func (p *Pool) send(ctx context.Context, j *job) (*kustomer.Result, float64, error) {
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(1)))
	defer func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(-1)))
	}()
	start := time.Now()
	res, err := p.Client.UpdateConversation(ctx, j.update)
	return res, time.Since(start).Seconds(), err
}

// settle carries out a decision: the one place where a message is acknowledged,
// dead-lettered, retried or held.
func (p *Pool) settle(c *conv, j *job, d decision) {
	j.attempts = d.attempts
	switch d.verdict {
	case verdictAck:
		p.Metrics.update(d.metric)
		p.ack(c, j)
	case verdictDeadLetter:
		p.deadLetter(c, j, d)
	case verdictRetry:
		p.recordAttempts(j)
		p.Metrics.retry(d.metric)
		p.jobLog(j).Info("request failed; retrying", "attempt", j.attempts, "max_attempts", p.cfg.MaxAttempts,
			"status", d.status, "reason", d.reason, "retry_in", d.delay)
		p.schedule(c, d.delay)
	case verdictBackOff:
		j.throttles++
		p.Metrics.retry(d.metric)
		p.jobLog(j).Info("conversation rate-limited; retrying it later", "status", d.status, "retry_in", d.delay)
		p.schedule(c, d.delay)
	case verdictPauseAll:
		pause := p.Pacer.OrgThrottled(d.apiErr.RateLimit)
		p.Metrics.retry(d.metric)
		p.jobLog(j).Info("org rate budget spent; pausing every request", "status", d.status, "pause", pause)
		p.schedule(c, 0)
	case verdictHoldForKey:
		p.Metrics.retry(d.metric)
		p.jobLog(j).Debug("Kustomer refused the API key", "status", d.status, "reason", d.reason)
		p.schedule(c, 0)
	case verdictKeep:
	}
}

// recordAttempts stores j's attempts so that a redelivery, a restart or another replica
// counts on from them.
func (p *Pool) recordAttempts(j *job) {
	if p.Attempts == nil {
		return
	}
	sctx, cancel := context.WithTimeout(p.hard, storeTimeout)
	defer cancel()
	if err := p.Attempts.Set(sctx, j.ref, j.attempts); err != nil {
		p.jobLog(j).Warn("cannot record attempts", "error", err)
		return
	}
	j.recorded = true
}

// Timeouts of the pool's own calls to NATS, and how soon a dead letter that could not be
// stored is tried again.
const (
	storeTimeout      = 5 * time.Second
	ackTimeout        = 5 * time.Second
	ackRetryMin       = 100 * time.Millisecond
	ackRetryMax       = 5 * time.Second
	forgetEvery       = 5 * time.Second // how often the acknowledgement floor is read
	deadLetterTimeout = 10 * time.Second
	deadLetterRetry   = 2 * time.Second
)

// deadLetter stores the message in the dead-letter stream and, once JetStream acknowledged
// that, acks the original. If the dead letter cannot be stored the message stays held and is
// tried again later: it is never acked without its dead letter.
func (p *Pool) deadLetter(c *conv, j *job, d decision) {
	p.mu.Lock()
	msg := j.msg
	p.mu.Unlock()
	dctx, cancel := context.WithTimeout(p.hard, deadLetterTimeout)
	err := p.DeadLetters.Publish(dctx, msg, queue.Failure{
		Class: d.class, Reason: d.reason, Status: d.status, Attempts: j.attempts, FailedAt: time.Now(),
	})
	cancel()
	if err != nil {
		p.jobLog(j).Error("cannot store dead letter; keeping the message and trying again", "class", d.class, "error", err)
		p.schedule(c, deadLetterRetry)
		return
	}
	p.jobLog(j).Warn("dead-lettered", "class", d.class, "status", d.status, "attempts", j.attempts, "reason", d.reason)
	p.Metrics.deadLetter(string(d.class))
	p.Metrics.update(d.metric)
	p.ack(c, j)
}

// ack acknowledges j's message and, once JetStream confirmed it, moves on to the
// conversation's next job. The next update of the conversation waits for that confirmation:
// were it applied while this acknowledgement may still be lost, a crash could bring this older
// update back after the newer one. The confirmation is awaited by a goroutine of its own, so
// the worker goes on with another conversation meanwhile; c is in that goroutine's hands until
// then. An acknowledgement that fails is tried again with backoff, the job held (and kept in
// progress) meanwhile, and never sent again.
//
// When no newer message of the conversation is held (the common case) and the pool can read
// the work stream (Outstanding), nothing waits for the confirmation yet: the message is
// acknowledged and let go at once, and remembered in unconfirmed. Should a newer update of the
// conversation come later, it is sent only once that message is gone from the work stream
// (previousGone), which on a work-queue stream is what the acknowledgement does: the same
// promise, paid for only when a conversation's updates follow each other closely.
func (p *Pool) ack(c *conv, j *job) {
	j.settled = true
	if p.ackNow(c, j) {
		return
	}
	p.confirming.Go(func() { p.confirm(c, j) })
}

// ackNow acknowledges j without waiting for the confirmation and lets it go, if no newer
// message of its conversation is held and nothing else is left to do for j; it reports
// whether it did.
func (p *Pool) ackNow(c *conv, j *job) bool {
	if p.Outstanding == nil || j.recorded {
		return false
	}
	p.mu.Lock()
	msg, alone := j.msg, len(c.jobs) == 1
	p.mu.Unlock()
	if !alone || msg.Ack() != nil {
		return false // a failed acknowledgement is retried, confirmed, by confirm
	}
	// A message read directly is settled by deleting it from the stream, and its Ack returns
	// once the leader confirmed that: nothing to check later.
	p.acked(c, j, j.src == nil)
	return true
}

// previousGone reports whether prev, the last message of c acknowledged without confirmation,
// has been acknowledged for good, so that j, the conversation's next, may be sent: its lane's
// acknowledgement floor has passed it, or (when the floor is held back) it is gone from the
// work stream. If not yet
// (the acknowledgement is on its way, or was lost and prev comes back after AckWait to be
// acknowledged again), or if NATS cannot be read, c is made ready again after a while.
func (p *Pool) previousGone(ctx context.Context, c *conv, j *job, prev unconfirmed) bool {
	floor, err := p.laneFloor(ctx, prev.src, prev.ref.Seq)
	gone := err == nil && prev.ref.Seq <= floor
	if !gone && j.checks >= floorChecks {
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		var pending bool
		pending, err = p.Outstanding.Pending(pctx, prev.ref)
		cancel()
		gone = err == nil && !pending
	}
	if gone {
		p.mu.Lock()
		if p.unconfirmed[c.key].ref == prev.ref {
			delete(p.unconfirmed, c.key)
		}
		p.mu.Unlock()
		return true
	}
	if ctx.Err() != nil {
		return false // shutdown: the message stays held for handBack
	}
	j.checks++
	d := backoffDelay(j.checks, floorEvery, ackRetryMax, rand.Float64())
	if err != nil {
		p.jobLog(j).Warn("cannot check that the conversation's previous update was acknowledged; trying again", "error", err, "retry_in", d)
	}
	p.schedule(c, d)
	return false
}

// Tuned values of previousGone: the least time between two reads of a lane's acknowledgement
// floor, and how many checks of the floor are made before the stream itself is read.
const (
	floorEvery  = 20 * time.Millisecond
	floorChecks = 3
)

// laneFloor is src's acknowledgement floor (a stream sequence): every message of the lane at
// or below it is acknowledged, and it only grows. The last one read is returned while it
// passes seq (whenever it was read, that proves seq acknowledged) or began less than
// floorEvery ago; otherwise it is read again.
func (p *Pool) laneFloor(ctx context.Context, src *source, seq uint64) (uint64, error) {
	src.floorMu.Lock()
	defer src.floorMu.Unlock()
	start := time.Now()
	if src.floor >= seq || start.Sub(src.floorAt) < floorEvery {
		return src.floor, nil
	}
	ictx, cancel := context.WithTimeout(ctx, storeTimeout)
	info, err := src.cons.Info(ictx)
	cancel()
	if err != nil {
		return 0, err
	}
	src.floor, src.floorAt = info.AckFloor.Stream, start
	return src.floor, nil
}

// confirm is ack's second half: the acknowledgement, waited for.
func (p *Pool) confirm(c *conv, j *job) {
	p.mu.Lock()
	msg := j.msg
	p.mu.Unlock()
	actx, cancel := context.WithTimeout(p.hard, ackTimeout)
	err := msg.DoubleAck(actx)
	cancel()
	if err != nil {
		j.acks++
		d := backoffDelay(j.acks, ackRetryMin, ackRetryMax, rand.Float64())
		p.jobLog(j).Warn("acknowledgement not confirmed; trying again (the update is not sent again)", "error", err, "retry_in", d)
		p.schedule(c, d)
		return
	}
	p.acked(c, j, true)
}

// acked lets go of j, acknowledged (confirmed or not), and moves on to c's next job.
func (p *Pool) acked(c *conv, j *job, confirmed bool) {
	if j.recorded {
		dctx, cancel := context.WithTimeout(p.hard, storeTimeout)
		if err := p.Attempts.Delete(dctx, j.ref); err != nil {
			p.jobLog(j).Debug("cannot forget attempts", "error", err)
		}
		cancel()
	}
	p.outage.refund(j.ref.Seq) // a refund it never took
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied[j.ref] = struct{}{}
	if !confirmed && j.invalid == nil {
		p.unconfirmed[c.key] = unconfirmed{ref: j.ref, src: j.src}
	}
	c.jobs = c.jobs[1:]
	delete(p.bySeq, j.ref)
	p.release(j.src)
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	if len(c.jobs) == 0 {
		delete(p.convs, c.key)
		return
	}
	p.makeReady(c)
}

// forgetApplied drops the remembered sequences that the consumer's acknowledgement floor has
// passed: JetStream will not deliver those again.
func (p *Pool) forgetApplied(ctx context.Context) {
	// A floor that holds for every lane: the lowest of the lanes with messages in progress (a
	// lane with none will deliver again nothing it delivered, so it sets no floor).
	infos := make([]*jetstream.ConsumerInfo, 0, len(p.lanes))
	var floor uint64
	for _, src := range p.lanes {
		ictx, cancel := context.WithTimeout(ctx, storeTimeout)
		info, err := src.cons.Info(ictx)
		cancel()
		if err != nil {
			return
		}
		infos = append(infos, info)
		floor = max(floor, info.AckFloor.Stream)
	}
	for _, info := range infos {
		if info.NumAckPending > 0 {
			floor = min(floor, info.AckFloor.Stream)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for ref := range p.applied {
		if ref.Seq <= floor {
			delete(p.applied, ref)
		}
	}
	for key, u := range p.unconfirmed {
		if u.ref.Seq <= floor {
			delete(p.unconfirmed, key)
		}
	}
}

// schedule makes c ready again after d.
func (p *Pool) schedule(c *conv, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return
	}
	if d <= 0 || p.giveBackFrom(c, true) == 0 { // a standby hands it back now (handover.go)
		p.makeReady(c)
		return
	}
	c.timer = time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.closing {
			return
		}
		c.timer = nil
		p.makeReady(c)
	})
}

// jobLog is the logger for lines about j. It is built only when a line is written: most
// messages never need one.
func (p *Pool) jobLog(j *job) *slog.Logger {
	return p.Log.With("conversation", j.update.ID, "seq", j.ref.Seq)
}

// heartbeat marks held messages in progress well before AckWait runs out, so that waiting for
// budget, order or backoff never causes a redelivery.
func (p *Pool) heartbeat(stop <-chan struct{}) {
	every := min(p.ackWait/3, 10*time.Second)
	t := time.NewTicker(every / 2)
	defer t.Stop()
	var forgot time.Time
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if now.Sub(forgot) >= forgetEvery {
				p.forgetApplied(context.Background())
				p.recheckWaiting(context.Background())
				forgot = now
			}
			p.mu.Lock()
			for _, j := range p.bySeq {
				if now.Sub(j.progress) >= every {
					_ = j.msg.InProgress()
					j.progress = now
				}
			}
			p.mu.Unlock()
		}
	}
}

// handBack returns every held message to the consumer for prompt redelivery, after the
// workers stopped. A message on its last allowed delivery is dead-lettered instead, since the
// consumer would never deliver it again.
func (p *Pool) handBack() {
	p.mu.Lock()
	p.closing = true
	var jobs []*job
	for _, c := range p.convs {
		if c.timer != nil {
			c.timer.Stop()
		}
		jobs = append(jobs, c.jobs...)
	}
	p.convs = make(map[string]*conv)
	p.bySeq = make(map[queue.MsgRef]*job)
	p.mu.Unlock()
	for len(p.readyLive) > 0 {
		<-p.readyLive
	}
	for len(p.readyBackfill) > 0 {
		<-p.readyBackfill
	}
	for _, j := range jobs {
		if j.settled { // applied; only the acknowledgement was missing: never hand it back
			if err := j.msg.Ack(); err != nil {
				p.Log.Debug("last ack of a settled message failed; its redelivery will be applied again", "seq", j.ref.Seq, "error", err)
			}
			continue
		}
		if p.policy.lastDelivery(j.delivered) {
			p.lastDelivery(j)
			continue
		}
		if err := j.msg.Nak(); err != nil {
			p.Log.Debug("hand back failed; redelivery follows AckWait", "seq", j.ref.Seq, "error", err)
		}
	}
	for len(p.slots) > 0 {
		<-p.slots
	}
	for _, src := range p.lanes {
		for src.slots != nil && len(src.slots) > 0 {
			<-src.slots
		}
	}
	if len(jobs) > 0 {
		p.Log.Info("handed unfinished messages back for redelivery", "count", len(jobs))
	}
}

// lastDelivery dead-letters a message the consumer will not deliver again, at shutdown.
func (p *Pool) lastDelivery(j *job) {
	dctx, cancel := context.WithTimeout(context.Background(), deadLetterTimeout)
	defer cancel()
	err := p.DeadLetters.Publish(dctx, j.msg, queue.Failure{
		Class: queue.ClassExhausted, Attempts: j.attempts, FailedAt: time.Now(),
		Reason: "delivered " + strconv.FormatUint(j.delivered, 10) + " times (max-deliver) without an outcome",
	})
	if err != nil {
		p.jobLog(j).Error("cannot store dead letter for a message on its last delivery", "error", err)
		_ = j.msg.Nak()
		return
	}
	_ = j.msg.Ack()
}

// Tuned value: how long the check for older updates in the other lane may take.
const orderCheckTimeout = 5 * time.Second

// addOlder holds, ahead of an update of conversation id at stream sequence seq from the lane
// of class, the older updates of the conversation still pending in the other lane, read
// directly from the stream: a live update must not overtake an older backfill one (applied
// later, it would overwrite the live change), nor a backfill update an older live one that
// another process holds or that is not pulled yet. They hold no slot (the conversation is
// joined at once by the message that found them, which holds one), go first as live ones,
// and are acknowledged by deleting them from the stream. If the check fails, the update goes
// on alone, and the failure is logged.
func (p *Pool) addOlder(id string, seq uint64, class pacer.Priority) {
	other := queue.LaneBackfill
	if class == pacer.Backfill {
		other = queue.LaneLive
	}
	ctx, cancel := context.WithTimeout(p.hard, orderCheckTimeout)
	defer cancel()
	older, err := p.Order.OlderPending(ctx, other, id, seq)
	if err != nil {
		p.Log.Warn("cannot check for older updates of a conversation in the other lane; applying this one in arrival order",
			"conversation", id, "seq", seq, "other_lane", other, "error", err)
	}
	for _, m := range older {
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		ref := queue.NewMsgRef(md.Sequence.Stream, md.Timestamp)
		update, invalid := kustomer.Decode(m.Data())
		p.mu.Lock()
		_, held := p.bySeq[ref]
		_, done := p.applied[ref]
		if !held && !done && invalid == nil && update.ID == id {
			j := &job{msg: m, class: pacer.Live, ref: ref, delivered: md.NumDelivered, progress: time.Now(), update: update}
			p.bySeq[ref] = j
			p.file(j, update.ID)
		}
		p.mu.Unlock()
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
