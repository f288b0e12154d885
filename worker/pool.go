package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// updater applies one update; *kustomer.Client is the real one.
type updater interface {
	UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error)
}

// deadLetterer stores a message that can never succeed; *queue.DeadLetterPublisher is the real one.
type deadLetterer interface {
	Publish(ctx context.Context, msg jetstream.Msg, dl queue.Failure) error
}

// attemptStore remembers attempts across deliveries; *queue.Attempts is the real one.
type attemptStore interface {
	Get(ctx context.Context, seq uint64) (int, error)
	Set(ctx context.Context, seq uint64, n int) error
	Delete(ctx context.Context, seq uint64) error
}

// Pool applies update messages from a JetStream pull consumer to Kustomer.
//
// It promises at-least-once: a message is acknowledged only after Kustomer accepted the update
// or after its dead letter was stored; anything else is handed back for redelivery. Updates to
// one conversation are applied in the order the pool received them, one at a time, even while
// an earlier one waits for a retry; a conversation waiting for a retry holds up no other.
type Pool struct {
	Consumer    jetstream.Consumer // the durable pull consumer on the work stream
	Client      updater            // sends the PUT
	DeadLetters deadLetterer       // stores dead letters
	Attempts    attemptStore       // optional: without it attempts are counted per delivery only
	Pacer       *Pacer             // shared rate limiter; default NewPacer(1000)
	Metrics     *Metrics           // optional
	Log         *slog.Logger       // default: discard
	Config      Config

	cfg     Config
	ackWait    time.Duration // the consumer's
	maxDeliver int           // the consumer's; 0 or less: unlimited
	gate    *authGate
	running atomic.Bool

	mu      sync.Mutex
	convs   map[string]*conv // conversations with held messages
	bySeq   map[uint64]*job  // held messages by stream sequence
	closing bool
	ready   chan *conv    // conversations whose head job can be processed now
	slots   chan struct{} // one token per held message, at most MaxAckPending

	inflight atomic.Int64
}

// conv is one conversation's held messages, in the order received. A conv in the map is always
// in exactly one place: the ready channel, a worker's hands, or a retry timer.
type conv struct {
	key   string
	jobs  []*job
	timer *time.Timer
}

// job is one held message.
type job struct {
	msg       jetstream.Msg // the newest delivery; guarded by Pool.mu
	seq       uint64
	delivered uint64 // NumDelivered of msg; guarded by Pool.mu
	progress  time.Time
	update    kustomer.Update
	invalid   error

	attempts       int  // failed requests, across deliveries once loaded
	loaded         bool // attempts read from the store
	recorded       bool // the store holds a count for this message
	bo, throttleBo backoff.BackOff
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
	if p.gate.Blocked() {
		return ErrAuthBlocked
	}
	return nil
}

// Run works until ctx ends, then shuts down gracefully: it stops taking messages, lets
// requests in flight finish within ShutdownTimeout, hands every unfinished message back for
// redelivery, and returns once every goroutine it started has stopped.
func (p *Pool) Run(ctx context.Context) error {
	p.cfg = p.Config.WithDefaults()
	if err := p.cfg.Validate(); err != nil {
		return err
	}
	if p.Consumer == nil || p.Client == nil || p.DeadLetters == nil {
		return errors.New("worker: Pool needs Consumer, Client and DeadLetters")
	}
	if p.Pacer == nil {
		p.Pacer = NewPacer(1000)
	}
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	p.ackWait, p.maxDeliver = defaultAckWaitIfUnknown, -1
	if info := p.Consumer.CachedInfo(); info != nil {
		p.ackWait, p.maxDeliver = max(info.Config.AckWait, ackWaitFloor), info.Config.MaxDeliver
	}
	p.gate = newAuthGate()
	p.convs = make(map[string]*conv)
	p.bySeq = make(map[uint64]*job)
	p.ready = make(chan *conv, p.cfg.MaxAckPending+1)
	p.slots = make(chan struct{}, p.cfg.MaxAckPending)
	p.closing = false

	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()

	var wg sync.WaitGroup
	wg.Go(func() { p.fetch(ctx) })
	for range p.cfg.Concurrency {
		wg.Go(func() { p.work(ctx, hard) })
	}
	hbStop := make(chan struct{})
	var hb sync.WaitGroup
	hb.Go(func() { p.heartbeat(hbStop) })
	p.running.Store(true)
	p.Log.Info("worker pool started", "concurrency", p.cfg.Concurrency, "max_held", p.cfg.MaxAckPending,
		"max_attempts", p.cfg.MaxAttempts)

	<-ctx.Done()
	p.running.Store(false)
	p.Log.Info("shutting down: no new messages; waiting for requests in flight",
		"in_flight", p.inflight.Load(), "timeout", p.cfg.ShutdownTimeout)
	deadline := time.AfterFunc(p.cfg.ShutdownTimeout, cancelHard)
	wg.Wait()
	deadline.Stop()
	p.handBack()
	close(hbStop)
	hb.Wait()
	return nil
}

// fetch takes messages from the consumer while there is room, and never while Kustomer
// refuses the key or the org budget is paused.
func (p *Pool) fetch(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		if p.gate.Blocked() {
			_ = sleep(ctx, 200*time.Millisecond)
			continue
		}
		if until := p.Pacer.PausedUntil(); !until.IsZero() {
			_ = sleep(ctx, time.Until(until))
			continue
		}
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
		if len(p.slots) > 1 {
			// Messages are still held: gather room for a batch, briefly, so that a backlog
			// is pulled in batches rather than one pull request per message.
			n += p.gather(ctx, p.cfg.MaxAckPending/2-1)
		}
	more:
		for n < p.cfg.MaxAckPending {
			select {
			case p.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		fctx, cancel := context.WithTimeout(ctx, p.cfg.FetchWait)
		batch, err := p.Consumer.Fetch(n, jetstream.FetchContext(fctx))
		got := 0
		if err == nil {
			for msg := range batch.Messages() {
				got++
				p.add(msg)
			}
			err = batch.Error()
		}
		cancel()
		for range n - got {
			<-p.slots
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			failures++
			p.Log.Debug("fetch failed", "error", err)
			_ = sleep(ctx, min(time.Duration(failures)*100*time.Millisecond, 2*time.Second))
			continue
		}
		failures = 0
	}
}

// gather takes up to want more slots as they free up, for at most batchGather.
func (p *Pool) gather(ctx context.Context, want int) int {
	t := time.NewTimer(batchGather)
	defer t.Stop()
	got := 0
	for got < want {
		select {
		case p.slots <- struct{}{}:
			got++
		case <-t.C:
			return got
		case <-ctx.Done():
			return got
		}
	}
	return got
}

// batchGather is how long the fetch loop waits for room for a batch while messages are held.
const batchGather = 10 * time.Millisecond

// add holds a fetched message behind any earlier one for the same conversation.
func (p *Pool) add(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil { // not a JetStream message; cannot be acked either
		p.Log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		<-p.slots
		return
	}
	update, invalid := kustomer.Decode(msg.Data()) // outside the lock: workers ack under it
	p.mu.Lock()
	defer p.mu.Unlock()
	if j, ok := p.bySeq[md.Sequence.Stream]; ok {
		// Redelivered while still held (AckWait ran out during a broker outage): keep one job,
		// answering on the newest delivery.
		j.msg, j.delivered, j.progress = msg, md.NumDelivered, time.Now()
		<-p.slots
		return
	}
	j := &job{msg: msg, seq: md.Sequence.Stream, delivered: md.NumDelivered, progress: time.Now(), update: update, invalid: invalid}
	key := j.update.ID
	if j.invalid != nil {
		key = "\x00" + strconv.FormatUint(j.seq, 10) // invalid: no conversation, no order
	}
	p.bySeq[j.seq] = j
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	if c, ok := p.convs[key]; ok {
		c.jobs = append(c.jobs, j)
		return
	}
	c := &conv{key: key, jobs: []*job{j}}
	p.convs[key] = c
	p.ready <- c
}

func (p *Pool) work(ctx, hard context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-p.ready:
			p.process(ctx, hard, c)
		}
	}
}

// process makes one attempt at the head job of c, then acks it, dead-letters it, or schedules
// c again. Shutdown leaves the job held for handBack.
func (p *Pool) process(ctx, hard context.Context, c *conv) {
	p.mu.Lock()
	j := c.jobs[0]
	msg := j.msg
	delivered := j.delivered
	p.mu.Unlock()
	probe := false
	defer func() {
		if r := recover(); r != nil {
			p.jobLog(j).Error("panic while handling a message; it will be retried", "panic", r, "stack", string(debug.Stack()))
			p.Metrics.retry("panic")
			if probe {
				p.gate.Release()
			}
			p.failed(c, j, 0, fmt.Sprintf("panic: %v", r), 0)
		}
	}()

	if j.invalid != nil {
		p.deadLetter(c, j, queue.ClassInvalid, 0, j.invalid.Error())
		return
	}
	if !j.loaded {
		if delivered > 1 && p.Attempts != nil {
			n, err := p.Attempts.Get(hard, j.seq)
			if err != nil {
				p.jobLog(j).Warn("cannot read attempts; counting from this delivery", "error", err)
			}
			j.attempts = max(j.attempts, n)
			j.recorded = n > 0
		}
		j.loaded = true
	}

	var err error
	if probe, err = p.gate.Acquire(ctx); err != nil {
		return
	}
	start := time.Now()
	err = p.Pacer.Wait(ctx, PriorityLive)
	p.Metrics.pacerWait(time.Since(start).Seconds())
	if err != nil {
		if probe {
			p.gate.Release()
		}
		return
	}

	res, elapsed, err := p.send(hard, j)

	if err == nil {
		p.Metrics.request(res.Status, elapsed)
		p.Pacer.Observe(res.RateLimit, int(p.inflight.Load()))
		p.keyWorks(probe, j)
		p.ack(c, j, msg)
		p.Metrics.update("applied")
		return
	}
	if hard.Err() != nil {
		if probe {
			p.gate.Release()
		}
		return // cut short by the shutdown deadline: handed back
	}
	var apiErr *kustomer.APIError
	if !errors.As(err, &apiErr) {
		if errors.Is(err, kustomer.ErrInvalid) {
			p.deadLetter(c, j, queue.ClassInvalid, 0, err.Error())
			return
		}
		p.Metrics.request(0, elapsed)
		if probe {
			p.gate.Fail()
		}
		p.failed(c, j, 0, err.Error(), 0)
		return
	}
	p.Metrics.request(apiErr.Status, elapsed)
	p.Pacer.Observe(apiErr.RateLimit, int(p.inflight.Load()))
	switch apiErr.Class {
	case kustomer.ClassAuth:
		p.Metrics.retry("auth")
		if p.gate.Fail() {
			p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 1)
			p.jobLog(j).Error("Kustomer refused the API key: stopped taking messages; probing until it works again (fix the key or its role; nothing is dead-lettered)",
				"status", apiErr.Status, "reason", apiErr.Reason)
		}
		p.schedule(c, 0)
	case kustomer.ClassThrottled:
		p.keyWorks(probe, j)
		if apiErr.Scope == kustomer.ScopeConversation {
			if j.throttleBo == nil {
				j.throttleBo = p.newBackOff()
			}
			d := max(apiErr.Wait, j.throttleBo.NextBackOff())
			p.Metrics.retry("throttled_conversation")
			p.jobLog(j).Info("conversation rate-limited; retrying it later", "status", apiErr.Status, "retry_in", d)
			p.schedule(c, d)
			return
		}
		d := p.Pacer.OrgThrottled(apiErr.RateLimit)
		p.Metrics.retry("throttled_org")
		p.jobLog(j).Info("org rate budget spent; pausing every request", "status", apiErr.Status, "pause", d)
		p.schedule(c, 0)
	case kustomer.ClassPermanent:
		p.keyWorks(probe, j)
		j.attempts++
		p.deadLetter(c, j, queue.ClassRejected, apiErr.Status, apiErr.Error())
	default: // transient
		if probe {
			p.gate.Fail()
		}
		p.failed(c, j, apiErr.Status, apiErr.Error(), apiErr.Wait)
	}
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

// jobLog is the logger for lines about j. It is built only when a line is written: most
// messages never need one.
func (p *Pool) jobLog(j *job) *slog.Logger {
	return p.Log.With("conversation", j.update.ID, "seq", j.seq)
}

// keyWorks reopens the gate after an answer that got past Kustomer's key check.
func (p *Pool) keyWorks(probe bool, j *job) {
	if (probe || p.gate.Blocked()) && p.gate.Open() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.AuthBlocked }, 0)
		p.jobLog(j).Info("Kustomer accepts the API key again: resuming")
	}
}

// failed spends an attempt on a retryable failure, then retries with backoff or, once
// attempts (or deliveries) run out, dead-letters the message as exhausted.
func (p *Pool) failed(c *conv, j *job, status int, reason string, wait time.Duration) {
	j.attempts++
	p.mu.Lock()
	delivered := j.delivered
	p.mu.Unlock()
	if j.attempts >= p.cfg.MaxAttempts || p.onLastDelivery(delivered) {
		p.deadLetter(c, j, queue.ClassExhausted, status,
			fmt.Sprintf("gave up after %d attempts (delivery %d): %s", j.attempts, delivered, reason))
		return
	}
	if p.Attempts != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := p.Attempts.Set(sctx, j.seq, j.attempts); err != nil {
			p.jobLog(j).Warn("cannot record attempts", "error", err)
		} else {
			j.recorded = true
		}
		cancel()
	}
	if j.bo == nil {
		j.bo = p.newBackOff()
	}
	d := max(j.bo.NextBackOff(), wait)
	p.Metrics.retry("transient")
	p.jobLog(j).Info("request failed; retrying", "attempt", j.attempts, "max_attempts", p.cfg.MaxAttempts,
		"status", status, "reason", reason, "retry_in", d)
	p.schedule(c, d)
}

func (p *Pool) newBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.cfg.RetryInitial
	b.MaxInterval = p.cfg.RetryMax
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// deadLetter stores the message in the dead-letter stream and, once JetStream acknowledged
// that, acks the original. If the dead letter cannot be stored the message stays held and is
// tried again later: it is never acked without its dead letter.
func (p *Pool) deadLetter(c *conv, j *job, class queue.DeadLetterClass, status int, reason string) {
	p.mu.Lock()
	msg := j.msg
	p.mu.Unlock()
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := p.DeadLetters.Publish(dctx, msg, queue.Failure{
		Class: class, Reason: reason, Status: status, Attempts: j.attempts, FailedAt: time.Now(),
	})
	cancel()
	if err != nil {
		p.jobLog(j).Error("cannot store dead letter; keeping the message and trying again", "class", class, "error", err)
		p.schedule(c, 2*time.Second)
		return
	}
	p.jobLog(j).Warn("dead-lettered", "class", class, "status", status, "attempts", j.attempts, "reason", reason)
	p.Metrics.deadLetter(string(class))
	p.Metrics.update(string(class))
	p.ack(c, j, msg)
}

// ack acknowledges j's message and moves on to the conversation's next job.
func (p *Pool) ack(c *conv, j *job, msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		p.jobLog(j).Warn("ack failed; the message will be redelivered", "error", err)
	}
	if j.recorded {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := p.Attempts.Delete(dctx, j.seq); err != nil {
			p.jobLog(j).Debug("cannot forget attempts", "error", err)
		}
		cancel()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c.jobs = c.jobs[1:]
	delete(p.bySeq, j.seq)
	<-p.slots
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	if len(c.jobs) == 0 {
		delete(p.convs, c.key)
		return
	}
	p.ready <- c
}

// schedule makes c ready again after d.
func (p *Pool) schedule(c *conv, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return
	}
	if d <= 0 {
		p.ready <- c
		return
	}
	c.timer = time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.closing {
			return
		}
		c.timer = nil
		p.ready <- c
	})
}

// heartbeat marks held messages in progress well before AckWait runs out, so that waiting for
// budget, order or backoff never causes a redelivery.
func (p *Pool) heartbeat(stop <-chan struct{}) {
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
	p.bySeq = make(map[uint64]*job)
	p.mu.Unlock()
	for len(p.ready) > 0 {
		<-p.ready
	}
	for _, j := range jobs {
		if p.onLastDelivery(j.delivered) {
			p.lastDelivery(j)
			continue
		}
		if err := j.msg.Nak(); err != nil {
			p.Log.Debug("hand back failed; redelivery follows AckWait", "seq", j.seq, "error", err)
		}
	}
	for len(p.slots) > 0 {
		<-p.slots
	}
	if len(jobs) > 0 {
		p.Log.Info("handed unfinished messages back for redelivery", "count", len(jobs))
	}
}

func (p *Pool) lastDelivery(j *job) {
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.DeadLetters.Publish(dctx, j.msg, queue.Failure{
		Class: queue.ClassExhausted, Attempts: j.attempts, FailedAt: time.Now(),
		Reason: fmt.Sprintf("delivered %d times (max-deliver) without an outcome", j.delivered),
	})
	if err != nil {
		p.jobLog(j).Error("cannot store dead letter for a message on its last delivery", "error", err)
		_ = j.msg.Nak()
		return
	}
	_ = j.msg.Ack()
}

// onLastDelivery reports whether the consumer will not deliver a message again after its
// delivered-th delivery.
func (p *Pool) onLastDelivery(delivered uint64) bool {
	return p.maxDeliver > 0 && delivered >= uint64(p.maxDeliver)
}
