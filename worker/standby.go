package worker

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// Role is what the pool uses of a consumer whose replicas take turns: the server hands the
// messages to one replica, the active, while the others wait as standbys (a pinned priority
// group; queue.Pinned and queue.Follower are ones). A Consumer without it is always active.
//
// With it the pool keeps per-conversation order across a handover, while both processes run:
//   - when this replica stops being active (Lost), the pool stops sending the messages it took
//     from that consumer and hands back, for prompt redelivery to the new active, every one it
//     holds and has not sent; requests in flight finish and are settled as usual;
//   - when it becomes active (Gained), before it files the first message of its turn, it holds
//     back the conversations whose older messages are delivered and unacknowledged elsewhere
//     (Outstanding), until those are redelivered here and settled, or acknowledged by the
//     replica that held them: the recovery of order of a process start (recover.go).
type Role interface {
	// Lost returns a channel that is closed once this replica is not active: closed already
	// while it is a standby. Each turn as the active replica has a channel of its own.
	Lost() <-chan struct{}
	// Gained returns a channel that is closed once this replica is active.
	Gained() <-chan struct{}
}

// handover is the pool's state for its consumers' roles.
type handover struct {
	// recovering is held by a lane's fetch goroutine while it holds back the conversations
	// another replica holds messages of, so that the lanes do not read the stream twice at once.
	recovering sync.Mutex
}

// isClosed reports whether c is closed; a nil channel never is.
func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// followRole, if src's consumer has a role, hands back what the pool holds of src whenever
// this replica stops being active on it, until ctx ends. It is called by src's fetch
// goroutine, and the returned function waits for it to stop.
func (p *Pool) followRole(ctx context.Context, src *source) (wait func()) {
	r := src.role
	if r == nil {
		return func() {}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// A replica that starts as a standby holds nothing of src yet: it yields only when a
		// turn as the active replica ends.
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.Gained():
			}
			select {
			case <-ctx.Done():
				return
			case <-r.Lost():
			}
			p.yield(src)
		}
	})
	return wg.Wait
}

// admit files a message src's pull brought (add). While this replica is a standby on src it
// hands the message back instead (goesBack); the first message of a new turn as the active
// replica first holds back the conversations whose older messages another replica holds.
func (p *Pool) admit(ctx context.Context, msg jetstream.Msg, src *source) {
	md, err := msg.Metadata() // parsed once, here, for add too
	if src.role != nil {
		p.takeTurn(ctx, src, md)
		if err == nil && p.goesBack(src, md) {
			if err := msg.Nak(); err != nil {
				p.Log.Debug("hand back failed; redelivery follows AckWait", "subject", msg.Subject(), "error", err)
			}
			p.freeSlots(src)
			return
		}
	}
	p.add(ctx, msg, md, err, src)
}

// takeTurn makes the pool work for src's role's current turn as the active replica, if that
// is a new one: first it holds back the conversations whose older messages another replica
// holds (recover.go). first is the metadata of the turn's first message (nil if unread): when
// it is a first delivery, the messages of src at its sequence and above came to this replica
// (the rest of its pull, not yet filed), and are not taken for another replica's.
func (p *Pool) takeTurn(ctx context.Context, src *source, first *jetstream.MsgMetadata) {
	turn := src.role.Lost()
	p.mu.Lock()
	fresh := turn != src.turn
	p.mu.Unlock()
	if !fresh || isClosed(turn) {
		return
	}
	p.handover.recovering.Lock()
	var own queue.Own
	if first != nil && first.NumDelivered == 1 {
		own = queue.Own{Lane: queue.Lane(src.name), Below: first.Sequence.Stream}
	}
	p.recoverOrder(ctx, recoverHandover, own)
	p.handover.recovering.Unlock()
	p.mu.Lock()
	src.turn = turn
	p.mu.Unlock()
	p.Log.Debug("active: taking messages", "lane", src.name)
}

// goesBack reports whether a message src's pull brought, with metadata md, goes back to the
// active replica: this replica is a standby on src, and the message is not one to keep here
// (a redelivery of one this pool applied, whose acknowledgement was lost or is still
// pending, in a single PUT or a bulk job, is kept here and acknowledged by add or ack).
func (p *Pool) goesBack(src *source, md *jetstream.MsgMetadata) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ref := queue.NewMsgRef(md.Sequence.Stream, md.Timestamp)
	_, applied := p.applied[ref]
	if j, held := p.bySeq[ref]; held && j.settled {
		applied = true
	}
	return p.standbyOn(src) && !p.keptHere(applied, md.NumDelivered)
}

// The standby decision is made here and nowhere else, for a message that arrives (goesBack)
// and for the conversations held (giveBackFrom) alike: standbyOn and keptHere.

// standbyOn reports whether this replica is a standby on lane src (nil: a message read
// directly, which counts as the live lane's, whose message found it): the turn as the active
// replica that the pool works for on it has ended. p.mu is held.
func (p *Pool) standbyOn(src *source) bool {
	if src == nil {
		src = p.lanes[0]
	}
	return src.role != nil && isClosed(src.turn)
}

// keptHere reports whether a message stays here even on a standby: one settled here (applied,
// only its acknowledgement pending or lost: handed back, it would be applied again by the
// active replica), or on its last delivery (it would never be delivered again).
func (p *Pool) keptHere(settled bool, delivered uint64) bool {
	return settled || p.policy.lastDelivery(delivered)
}

// giveBackFrom is the index of c's first job to hand back: c's jobs from there on are
// unsent, and the first of them came from a lane where this replica is a standby now;
// len(c.jobs) if none. A settled job (applied, its acknowledgement pending) and a message on
// its last delivery are never handed back, nor anything before them. head says whether the
// caller holds c, so that its head may be handed back too. p.mu is held.
func (p *Pool) giveBackFrom(c *conv, head bool) int {
	from, first := len(c.jobs), 1
	if head {
		first = 0
	}
	for i := len(c.jobs) - 1; i >= first; i-- {
		j := c.jobs[i]
		if p.keptHere(j.settled, j.delivered) {
			break
		}
		if p.standbyOn(j.src) {
			from = i
		}
	}
	return pastGroup(c, from)
}

// pastGroup moves from, an index of c's jobs to hand back from, past the members of its
// head's merged update (coalesce.go): they count as sent, as the head does. p.mu is held.
func pastGroup(c *conv, from int) int {
	if from > 0 && len(c.jobs) > 0 && from <= len(c.jobs[0].members) {
		return len(c.jobs[0].members) + 1
	}
	return from
}

// giveBack, called by the worker that took c, hands back what c holds from lanes where this
// replica is a standby now, and reports whether nothing is left to send.
func (p *Pool) giveBack(c *conv) (gone bool) {
	p.mu.Lock()
	jobs := p.cut(c, p.giveBackFrom(c, true))
	gone = len(c.jobs) == 0
	msgs := heldMsgs(jobs)
	p.mu.Unlock()
	p.nakAll(msgs, "this replica is a standby now")
	return gone
}

// yield hands back everything the pool holds of src and has not sent, once this replica is
// a standby on it: conversations at rest (parked, waiting for a worker, for a retry or for a
// bulk job's fence) at once, and the messages queued behind one that is being sent; a
// conversation a worker took meanwhile is handed back by that worker (giveBack), and the
// rest of one being sent once its head is settled.
func (p *Pool) yield(src *source) {
	if p.bulk != nil {
		// Held back by a bulk job's fence, or by a job that may run for minutes, a
		// conversation is at rest too: its worker hands its head back (giveBack) rather
		// than wait for the fence or the job to end.
		for _, it := range p.bulk.Yield() {
			bulkHost{p}.Resume(it)
		}
	}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return
	}
	var jobs []*job
	// A conversation waiting for a worker is at rest too: take it out of its ready channel
	// (sends happen only under p.mu, so nothing is added meanwhile) and put back what stays.
	for _, ready := range []chan *conv{p.readyLive, p.readyBackfill} {
		var stay []*conv
	drain:
		for {
			select {
			case c := <-ready:
				if jobs = append(jobs, p.cut(c, p.giveBackFrom(c, true))...); len(c.jobs) > 0 {
					stay = append(stay, c)
				}
			default:
				break drain
			}
		}
		for _, c := range stay {
			p.makeReady(c)
		}
	}
	for _, c := range p.convs {
		// Parked or on a retry timer, c is at rest: nobody holds its head, which may go too
		// (once the timer is stopped). Otherwise only what is queued behind the head.
		atRest := c.parked || c.timer != nil
		from := p.giveBackFrom(c, atRest)
		if from == 0 && !c.parked && !c.timer.Stop() {
			from = pastGroup(c, 1) // the timer fired: its goroutine makes c ready, head and all
		}
		jobs = append(jobs, p.cut(c, from)...)
	}
	msgs := heldMsgs(jobs)
	p.mu.Unlock()
	p.nakAll(msgs, "lost the pin")
	if len(msgs) > 0 {
		p.Log.Info("standby: handed back the messages held and not sent, for the active replica", "lane", src.name, "count", len(msgs))
	}
}

// heldMsgs are the deliveries of jobs; p.mu is held.
func heldMsgs(jobs []*job) []jetstream.Msg {
	msgs := make([]jetstream.Msg, len(jobs))
	for i, j := range jobs {
		msgs[i] = j.msg
	}
	return msgs
}

// nakAll hands msgs back for prompt redelivery.
func (p *Pool) nakAll(msgs []jetstream.Msg, why string) {
	for _, m := range msgs {
		if err := m.Nak(); err != nil {
			p.Log.Debug("hand back failed; redelivery follows AckWait", "why", why, "subject", m.Subject(), "error", err)
		}
	}
}

var (
	_ Role = (*queue.Pinned)(nil)
	_ Role = (*queue.Follower)(nil)
)
