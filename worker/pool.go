package worker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
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
	Runs        RunRecorder  // optional: records the lines of runs applied (see RunRecorder)
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
	// acknowledgement of a conversation's last held message is not waited for: see ack. With
	// it too, the pool dead-letters stranded messages (at start and every
	// Config.StrandedEvery): see sweepStranded.
	Outstanding Outstanding
	// Reader, optional, reads a conversation: the outage breaker's probe, so that it tells
	// Kustomer down from conversations whose updates fail on their own (see gate.Breaker and
	// Config.OutageSpread). Default Client, if it is one. Without either, the breaker probes
	// with the held updates and takes any answer for Kustomer being up.
	Reader Reader
	// BulkClient, with Config.Bulk.Enabled, submits and reads bulk jobs; default Client, if it
	// is one. Without either, bulk mode stays off.
	BulkClient bulk.Client
	// BulkJobs, optional with Config.Bulk.Enabled, keeps the bulk jobs in flight so that a
	// process started after this one reads their results instead of re-sending their items.
	BulkJobs bulk.Store
	// HardStop, optional, cuts a graceful shutdown short when it ends (a second signal):
	// requests in flight are abandoned at once and handed back, spending no attempt, as when
	// ShutdownTimeout passes.
	HardStop context.Context

	// Written by Run before it starts any goroutine, read-only after.
	cfg     Config
	policy  policy
	ackWait time.Duration   // the consumer's
	hard    context.Context // ends when requests in flight must be abandoned
	auth    *gate.Gate      // closed while Kustomer refuses the API key
	outage  *gate.Breaker   // pauses every request while Kustomer is down, for everybody or for updates
	reader  Reader          // Reader, or Client if it is one; nil: the breaker probes with updates
	bulk    *bulk.Bulker    // nil unless bulk mode is on; made by Run

	running atomic.Bool // written by Run; read by Ready from any goroutine
	// healing is set while a goroutine runs Heal (fetchFailed starts it, at most one at a
	// time, so that the lanes' pulls go on being retried meanwhile); Run waits for healWG.
	healing  atomic.Bool
	healWG   sync.WaitGroup
	inflight atomic.Int64 // requests sent and not answered
	probes   probeIDs     // conversations for the breaker's read probes
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
	// handover keeps order when this replica becomes or stops being the active one (standby.go).
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
	// fetch goroutine puts a token in (takeSlots), whoever lets go of a message takes one out
	// (freeSlots); the channel is its own lock.
	slots chan struct{}
	// role is cons's, if it has one (standby.go), set by init. turn is role's Lost channel of
	// the turn as the active replica the pool works for, closed while a standby: set by init,
	// then written by the lane's fetch goroutine under Pool.mu.
	role Role
	turn <-chan struct{}

	// fetch is whether the lane's pulls fail, for Ready and the log: each lane has its own,
	// so that pulls that work on one lane cannot hide a lane whose pulls keep failing.
	// Guarded by its own mu.
	fetch fetchState

	// The lane's acknowledgement floor as last read for previousGone (laneFloor), when the
	// next read is due, the failed reads in a row, and the read in progress (nil when none).
	// Guarded by floorMu, which is never held across the read itself.
	floorMu    sync.Mutex
	floor      uint64
	floorNext  time.Time
	floorFails int
	floorRead  *floorRead
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
	noBulk    bool // bulk mode: send it as a single PUT (bulkhost.go)
	// Coalescing (coalesce.go). sent: the job was tried as a head, so its group is fixed.
	// alone: it goes alone (a merged PUT it was in was split). ambiguous: a try of its group
	// may have been applied (a timeout, a 5xx). merged: the group's body, when it has members.
	sent, alone, ambiguous bool
	merged                 *kustomer.Update
	// members are the jobs behind this one, in stream order, that go in its PUT: fixed when it
	// is first sent, emptied only by a split. Guarded by Pool.mu (insert and giveBackFrom read it).
	members []*job
	// accepted: Kustomer applied the update (in bulk job bulkJob, or as a single PUT) but
	// its run's record is not stored yet: only that is tried again, never the update.
	accepted bool
	bulkJob  string
	// runRecorded: the run record of this member of an applied merged update is stored
	// (groupApplied), so that a later try of the group's records skips it. Written only by
	// the holder of the group's conversation.
	runRecorded bool
	// settled: Kustomer applied the update (or its dead letter is stored) but the
	// acknowledgement is not confirmed yet. The job is only acknowledged again, never sent.
	// Written under Pool.mu by the holder (ack), so that others may read it under Pool.mu.
	settled bool
}

// Ready reports whether the pool is taking messages.
func (p *Pool) Ready() error {
	if !p.running.Load() {
		return ErrNotRunning
	}
	if closed, _ := p.auth.Closed(); closed {
		return ErrAuthBlocked
	}
	switch phase, since := p.outage.Phase(); phase {
	case gate.Outage:
		return &Unavailable{Since: since}
	case gate.WritesDown:
		return &Unavailable{Since: since, Writes: true}
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

	var wg sync.WaitGroup
	if w, ok := p.Order.(warmer); ok && p.Backfill != nil {
		// Read alongside the recovery and the first pulls: the first messages' checks
		// find it read, or wait for the read in progress, which is bounded as one of
		// theirs would be.
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, orderCheckTimeout)
			defer cancel()
			w.Warm(wctx)
		})
	}
	p.recoverOrder(ctx, recoverStart, queue.Own{})
	if p.cfg.Bulk.Enabled { // before the workers, which hand it messages
		p.bulk = bulk.New(ctx, bulkHost{p}, p.bulkClient(), p.BulkJobs, p.bulkSettings())
		p.sayBulkLane()
		wg.Go(p.bulk.Run)
	}
	for _, src := range p.lanes {
		wg.Go(func() { p.fetch(ctx, src) })
	}
	if p.Outstanding != nil {
		wg.Go(func() { p.sweepStranded(ctx) })
	}
	for range p.cfg.Concurrency {
		wg.Go(func() { p.work(ctx, hard) })
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
		p.bulk.Wait()
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
	p.auth = gate.New(gate.ProbeMin, gate.ProbeMax, func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 1)
		p.Log.Error("Kustomer refused the API key: stopped taking messages; probing until it works again (fix the key or its role; nothing is dead-lettered)")
	}, func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 0)
		p.Log.Info("Kustomer accepts the API key again: resuming")
	})
	p.reader = p.Reader
	if r, ok := p.Client.(Reader); ok && p.reader == nil {
		p.reader = r
	}
	p.outage = p.newBreaker()
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
	for _, src := range p.lanes {
		// Known before any goroutine starts: until its first turn a lane with a role is a
		// standby's, for the bulker's Active as for the fetch loop.
		if r, ok := src.cons.(Role); ok {
			src.role, src.turn = r, r.Lost()
		}
	}
	p.closing = false
	p.bulk = nil
	if p.cfg.Bulk.Enabled && p.bulkClient() == nil {
		return errors.New("worker: Config.Bulk needs a BulkClient (or a Client that is one)")
	}
	return nil
}

// heartbeat marks held messages in progress well before AckWait runs out, so that waiting for
// budget, order or backoff never causes a redelivery. The housekeeping that reads NATS
// (forgetApplied, recheckWaiting: seconds while NATS is slow) runs on a goroutine of its own
// (tidy), so that no mark of progress ever waits for it.
func (p *Pool) heartbeat(stop <-chan struct{}) {
	var tidy sync.WaitGroup
	defer tidy.Wait()
	tidy.Go(func() { p.tidy(stop) })
	every := min(p.ackWait/3, 10*time.Second)
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			p.mu.Lock()
			for _, j := range p.bySeq {
				if now.Sub(j.progress) >= every {
					_ = j.msg.InProgress() // a publish: no round trip
					j.progress = now
				}
			}
			p.mu.Unlock()
		}
	}
}

// tidy forgets what the acknowledgement floor has passed and lets go of the outstanding
// messages that were settled elsewhere, every forgetEvery, until stop is closed.
func (p *Pool) tidy(stop <-chan struct{}) {
	t := time.NewTicker(forgetEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p.forgetApplied(context.Background())
			p.recheckWaiting(context.Background())
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
			p.deadLetterLastDelivery(j)
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

// deadLetterLastDelivery dead-letters a message the consumer will not deliver again, at shutdown.
func (p *Pool) deadLetterLastDelivery(j *job) {
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

// jobLog is the logger for lines about j. It is built only when a line is written: most
// messages never need one.
func (p *Pool) jobLog(j *job) *slog.Logger {
	return p.Log.With("conversation", j.update.ID, "seq", j.ref.Seq)
}
