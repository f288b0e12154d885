package worker

import (
	"context"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// recoverOrder reads the messages that were delivered and never acknowledged, and are not in
// this pool's hands (a process that died held them, or the replica that was active before this
// one; JetStream redelivers them after AckWait, or at once when handed back), and parks their
// conversations until those messages have come here and been settled, or are gone from the
// stream (acknowledged where they were held). Other conversations go on at once. A
// conversation this pool already works on goes on with what it holds; what comes for it
// later waits. after says when it runs: at start, or on becoming the active replica; own marks
// the messages this replica's own pull brought (queue.Own). Without Outstanding it does
// nothing.
func (p *Pool) recoverOrder(ctx context.Context, after recoverCause, own queue.Own) {
	if p.Outstanding == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	defer cancel()
	msgs, err := p.Outstanding.Unacked(rctx, own)
	if err != nil {
		p.Log.Warn("cannot read the messages left unacknowledged elsewhere; their conversations are not held back", "after", after, "error", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	held := 0
	for _, m := range msgs {
		if p.delivered(m.Ref) {
			continue // here already
		}
		if _, ok := p.applied[m.Ref]; ok {
			continue // settled here, its acknowledgement on its way
		}
		u, err := kustomer.Decode(m.Data)
		if err != nil {
			continue // invalid: no conversation, no order to keep
		}
		p.awaitElsewhere(u.ID, m.Ref)
		held++
	}
	p.extendWaiting()
	if held > 0 {
		p.Log.Info("holding back conversations until the updates left unacknowledged elsewhere are redelivered and settled (within twice ack-wait)",
			"after", after, "conversations", len(p.waiting), "messages", held, "until", p.waitingUntil.Format(time.RFC3339))
	}
}

// awaitElsewhere parks conversation id until its message ref, held elsewhere, is gone from
// the stream or delivered here (recheckWaiting), within twice AckWait from now; p.mu is held.
func (p *Pool) awaitElsewhere(id string, ref queue.MsgRef) {
	w := p.waiting[id]
	if w == nil {
		w = make(map[queue.MsgRef]struct{})
		p.waiting[id] = w
	}
	w[ref] = struct{}{}
	p.extendWaiting()
}

// extendWaiting makes what waits now wait up to twice AckWait plus slack; p.mu is held.
func (p *Pool) extendWaiting() {
	if until := time.Now().Add(2*p.ackWait + recoverSlack); until.After(p.waitingUntil) {
		p.waitingUntil = until
	}
}

// recoverCause says when the recovery of order runs.
type recoverCause string

const (
	recoverStart    recoverCause = "start"    // the pool starts: a process that died may have held messages
	recoverHandover recoverCause = "handover" // this replica became the active one: the one before may hold messages
)

// Tuned values of the recovery of order: how long reading the outstanding messages may take,
// and the slack on top of twice AckWait after which a conversation is no longer held back for
// a message that never came back (one on its last delivery when its process died, say).
const (
	recoverTimeout = 30 * time.Second
	recoverSlack   = 10 * time.Second
)

// recheckWaiting lets go of the outstanding messages that were acknowledged elsewhere or
// deleted, or that this pool now holds as delivered by their lane (having read them directly
// before), and of all of them once the wait ran out, and makes their conversations ready.
func (p *Pool) recheckWaiting(ctx context.Context) {
	p.mu.Lock()
	if len(p.waiting) == 0 {
		p.mu.Unlock()
		return
	}
	expired := time.Now().After(p.waitingUntil)
	var refs []queue.MsgRef
	for _, w := range p.waiting {
		for ref := range w {
			refs = append(refs, ref)
		}
	}
	p.mu.Unlock()

	// One deadline for all the checks: this runs on the heartbeat's goroutine, which must
	// not stall while NATS is slow.
	gone := make(map[queue.MsgRef]bool, len(refs))
	if expired && p.bulk != nil {
		// A message still held elsewhere may be in a bulk job another replica submitted
		// since this one last read the bulk jobs in flight: their fences hold the
		// conversations' newer updates from here on, until the job is complete or lost.
		p.bulk.Reload(ctx)
	}
	if !expired && p.Outstanding != nil {
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		for _, ref := range refs {
			if pctx.Err() != nil {
				break
			}
			pending, err := p.Outstanding.Pending(pctx, ref)
			gone[ref] = err == nil && !pending
		}
		cancel()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, w := range p.waiting {
		for ref := range w {
			if expired || gone[ref] || p.delivered(ref) {
				if expired {
					p.Log.Warn("an update left unacknowledged elsewhere never came back; applying the conversation's newer updates",
						"conversation", key, "seq", ref.Seq)
				}
				delete(w, ref)
			}
		}
		if len(w) == 0 {
			delete(p.waiting, key)
			if c, ok := p.convs[key]; ok {
				p.unpark(c)
			}
		}
	}
}

// delivered reports whether this pool holds ref as delivered by its lane (not only read
// directly for the order across lanes: such a message may still be in another replica's
// hands); p.mu is held.
func (p *Pool) delivered(ref queue.MsgRef) bool {
	j, ok := p.bySeq[ref]
	return ok && j.src != nil
}
