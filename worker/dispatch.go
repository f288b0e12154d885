package worker

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/internal/ctxtime"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// add holds a fetched message of src behind any earlier one for the same conversation. The
// slots taken for it stay with it until it is let go. A message is first checked for older
// updates of its conversation still pending in the other lane (Order); those are held too,
// ahead of it. md and err are msg.Metadata()'s.
func (p *Pool) add(ctx context.Context, msg jetstream.Msg, md *jetstream.MsgMetadata, err error, src *source) {
	if err != nil { // not a JetStream message; cannot be acked either
		p.Log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		p.freeSlots(src)
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
		p.freeSlots(src)
		return
	}
	update, invalid := kustomer.Decode(msg.Data()) // outside the lock: workers ack under it
	if invalid == nil && !held && src != nil && p.Order != nil && p.Backfill != nil {
		if !p.addOlder(ctx, msg, update.ID, ref.Seq, src.class) {
			// Shutdown began before the check could answer: handed back, never applied
			// unchecked.
			if err := msg.Nak(); err != nil {
				p.Log.Debug("hand back failed; redelivery follows AckWait", "seq", ref.Seq, "error", err)
			}
			p.freeSlots(src)
			return
		}
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
			p.freeSlots(src)
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

// Tuned values of the check for older updates in the other lane: how long one check may
// take, and how long a held update waits between failed checks (doubling from the first to
// the second).
const (
	orderCheckTimeout  = 5 * time.Second
	orderRetryInitial  = 100 * time.Millisecond
	orderRetryMaxDelay = 5 * time.Second
)

// addOlder holds, ahead of the update msg of conversation id at stream sequence seq from the
// lane of class, the older updates of the conversation still pending in the other lane, read
// directly from the stream: a live update must not overtake an older backfill one (applied
// later, it would overwrite the live change), nor a backfill update an older live one that
// another process holds or that is not pulled yet. They hold no slot (the conversation is
// joined at once by the message that found them, which holds one), go first as live ones,
// and are acknowledged by deleting them from the stream.
//
// A check that fails (NATS slow or away) is tried again, msg kept in progress meanwhile,
// until one answers: the update is held, never applied unchecked, and the lane pulls nothing
// more in the meantime. addOlder returns false if ctx ended first; msg is then the caller's
// to hand back.
func (p *Pool) addOlder(ctx context.Context, msg jetstream.Msg, id string, seq uint64, class pacer.Priority) bool {
	other := queue.LaneBackfill
	if class == pacer.Backfill {
		other = queue.LaneLive
	}
	older, ok := p.checkOlder(ctx, msg, other, id, seq)
	if !ok {
		return false
	}
	p.holdOlder(id, other, older)
	return true
}

// checkOlder reads the older updates of conversation id below seq still pending in lane
// other, trying again after each failed check, msg kept in progress meanwhile, until a check
// answers; ok is false if ctx ended first.
func (p *Pool) checkOlder(ctx context.Context, msg jetstream.Msg, other queue.Lane, id string, seq uint64) (older []*queue.DirectMsg, ok bool) {
	var retry *backoff.ExponentialBackOff // made at the first failure: most checks answer at once
	for failures := 0; ; failures++ {
		cctx, cancel := context.WithTimeout(ctx, orderCheckTimeout)
		found, err := p.Order.OlderPending(cctx, other, id, seq)
		cancel()
		if err == nil {
			if failures > 0 {
				p.Log.Info("checked for older updates of a conversation in the other lane; the held update goes on",
					"conversation", id, "seq", seq, "failed_checks", failures)
			}
			return found, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if retry == nil {
			retry = backoff.NewExponentialBackOff(backoff.WithInitialInterval(orderRetryInitial),
				backoff.WithMaxInterval(orderRetryMaxDelay), backoff.WithMaxElapsedTime(0))
		}
		wait := retry.NextBackOff()
		level := slog.LevelDebug
		if failures == 0 {
			level = slog.LevelWarn
		}
		p.Log.Log(ctx, level, "cannot check for older updates of a conversation in the other lane; holding this update and checking again",
			"conversation", id, "seq", seq, "other_lane", other, "error", err, "retry_in", wait)
		if err := msg.InProgress(); err != nil {
			p.Log.Debug("in-progress mark failed", "seq", seq, "error", err)
		}
		if ctxtime.Sleep(ctx, wait) != nil {
			return nil, false
		}
	}
}

// holdOlder files the messages read directly from lane other, older updates of conversation
// id, ahead of the message that found them; those held or settled already are left alone.
// One the lane's consumer delivered already is in the hands of whoever it went to (another
// replica, say, pinned on that lane a moment while this one took the other lane's pin, its
// update perhaps in a bulk job that Kustomer applies later), and one not delivered goes to
// the replica active on that lane if this one is a standby there: applied here as well, it
// could be applied there after the conversation's newer update. The conversation waits for
// such a message instead, as for one a process that died held (recover.go): until it is gone
// from the stream or delivered here, within twice AckWait.
func (p *Pool) holdOlder(id string, other queue.Lane, older []*queue.DirectMsg) {
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
		switch {
		case held || done || invalid != nil || update.ID != id:
		case m.Delivered() || p.standbyOn(p.laneSource(other)):
			p.awaitElsewhere(id, ref)
		default:
			j := &job{msg: m, class: pacer.Live, ref: ref, delivered: md.NumDelivered, progress: time.Now(), update: update}
			p.bySeq[ref] = j
			p.file(j, update.ID)
		}
		p.mu.Unlock()
	}
}

// laneSource is the source of lane l: the backfill lane's is nil when the pool has none.
func (p *Pool) laneSource(l queue.Lane) *source {
	if l == queue.LaneBackfill {
		if len(p.lanes) < 2 {
			return nil
		}
		return p.lanes[1]
	}
	return p.lanes[0]
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
	fixed := 0 // the head and the members of its PUT (coalesce.go) stay ahead
	if !c.parked && len(c.jobs) > 0 {
		fixed = 1 + len(c.jobs[0].members)
	}
	i := len(c.jobs)
	for i > fixed && c.jobs[i-1].ref.Seq > j.ref.Seq {
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

// makeReady hands c to the workers, by its head message's class; p.mu is held.
func (p *Pool) makeReady(c *conv) {
	if c.jobs[0].class == pacer.Backfill {
		p.readyBackfill <- c
		return
	}
	p.readyLive <- c
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

// schedule makes c ready again after d.
func (p *Pool) schedule(c *conv, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return
	}
	if d <= 0 || p.giveBackFrom(c, true) == 0 { // a standby hands it back now (standby.go)
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

// cut takes c's jobs from index from out of the pool, with their slots, and drops c when
// none remain; it returns them for handing back. p.mu is held.
func (p *Pool) cut(c *conv, from int) []*job {
	if from >= len(c.jobs) {
		return nil
	}
	jobs := slices.Clone(c.jobs[from:])
	c.jobs = slices.Delete(c.jobs, from, len(c.jobs))
	for _, j := range jobs {
		delete(p.bySeq, j.ref)
		p.freeSlots(j.src)
	}
	if len(c.jobs) == 0 && p.convs[c.key] == c {
		delete(p.convs, c.key)
	}
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.Held }, float64(len(p.bySeq)))
	return jobs
}
