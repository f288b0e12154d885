package worker

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

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
	p.mu.Lock()
	j.settled = true // read by goesBack for a redelivery that arrives meanwhile
	p.mu.Unlock()
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
// passes seq (whenever it was read, that proves seq acknowledged) or the next read is not due
// yet (floorEvery after a read began; after a failed read, a backoff growing to ackRetryMax).
// Otherwise it is read again: one read at a time per lane, which every caller that comes
// meanwhile waits for and shares (without holding floorMu across the request). A caller that
// shares a failed read gets its error; one that comes during the backoff after it gets the
// floor last read.
func (p *Pool) laneFloor(ctx context.Context, src *source, seq uint64) (uint64, error) {
	src.floorMu.Lock()
	start := time.Now()
	if src.floor >= seq || start.Before(src.floorNext) {
		floor := src.floor
		src.floorMu.Unlock()
		return floor, nil
	}
	r := src.floorRead
	if r == nil {
		r = &floorRead{done: make(chan struct{})}
		src.floorRead = r
		src.floorMu.Unlock()
		p.readFloor(src, r, start)
	} else {
		src.floorMu.Unlock()
	}
	select {
	case <-r.done:
		return r.floor, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// floorRead is one read of a lane's acknowledgement floor: floor and err are written before
// done is closed, and read only after.
type floorRead struct {
	done  chan struct{}
	floor uint64
	err   error
}

// readFloor reads src's consumer's floor for r, begun at start, and publishes the result. The
// read is not cut short by the caller that started it: the others wait for it too.
func (p *Pool) readFloor(src *source, r *floorRead, start time.Time) {
	ictx, cancel := context.WithTimeout(context.WithoutCancel(p.hard), storeTimeout)
	info, err := src.cons.Info(ictx)
	cancel()
	src.floorMu.Lock()
	if err == nil {
		src.floor = max(src.floor, info.AckFloor.Stream)
		src.floorFails = 0
		src.floorNext = start.Add(floorEvery)
	} else {
		src.floorFails++
		src.floorNext = time.Now().Add(backoffDelay(src.floorFails, floorEvery, ackRetryMax, rand.Float64()))
	}
	r.floor, r.err = src.floor, err
	src.floorRead = nil
	src.floorMu.Unlock()
	close(r.done)
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
func (p *Pool) acked(c *conv, j *job, confirmed bool) { p.letGo(c, j, confirmed, true) }

// letGo lets go of j, c's head, acknowledged (confirmed or not); with next, c is made ready
// for its next job, else it stays in the caller's hands (a merged update's acknowledgements,
// coalesce.go). It reports whether c has jobs left.
func (p *Pool) letGo(c *conv, j *job, confirmed, next bool) bool {
	if j.recorded {
		dctx, cancel := context.WithTimeout(p.hard, storeTimeout)
		if err := p.Attempts.Delete(dctx, j.ref); err != nil {
			p.jobLog(j).Debug("cannot forget attempts", "error", err)
		}
		cancel()
	}
	p.outage.Refund(j.ref.Seq) // a refund it never took
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied[j.ref] = struct{}{}
	if !confirmed && j.invalid == nil {
		p.unconfirmed[c.key] = unconfirmed{ref: j.ref, src: j.src}
	}
	c.jobs = c.jobs[1:]
	delete(p.bySeq, j.ref)
	p.freeSlots(j.src)
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	if len(c.jobs) == 0 {
		delete(p.convs, c.key)
		return false
	}
	if next {
		p.makeReady(c)
	}
	return true
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
