package worker

import (
	"context"
	"strconv"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// sweepStranded finds the stranded messages of both lanes (see queue.Stranded: kept by the
// work stream after their consumer delivered them MaxDeliver times without an outcome, which
// happens when a message on its last delivery cannot be dead-lettered at shutdown, or its
// process dies) at start and every StrandedEvery, and dead-letters each from the stream. It
// runs on a goroutine of its own until ctx ends.
//
// A message is dead-lettered only once two looks at least strandedConfirm apart found it
// stranded, so that an acknowledgement the server applied to the consumer and not yet to the
// stream is not taken for one. It is deleted from the work stream only after the dead
// letter's publish was acknowledged.
func (p *Pool) sweepStranded(ctx context.Context) {
	seen := make(map[queue.MsgRef]time.Time) // first sighting of each candidate; owned by this goroutine
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := p.cfg.StrandedEvery
		if p.sweepOnce(ctx, seen) > 0 {
			next = min(next, strandedConfirm)
		}
		t.Reset(next)
	}
}

// sweepOnce looks for stranded messages once, dead-letters those confirmed, and returns how
// many wait for their confirmation.
func (p *Pool) sweepOnce(ctx context.Context, seen map[queue.MsgRef]time.Time) (unconfirmed int) {
	sctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	found, err := p.Outstanding.Stranded(sctx, 0)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			p.Log.Warn("cannot look for stranded messages (kept by the work stream, never to be delivered again); looking again later", "error", err)
		}
		return 0
	}
	now := time.Now()
	still := make(map[queue.MsgRef]bool, len(found))
	for _, s := range found {
		md, _ := s.Msg.Metadata()
		ref := queue.NewMsgRef(md.Sequence.Stream, md.Timestamp)
		p.mu.Lock()
		_, held := p.bySeq[ref] // delivered, or read directly for the order across lanes
		p.mu.Unlock()
		if held {
			continue // this pool settles it
		}
		still[ref] = true
		first, ok := seen[ref]
		if !ok {
			seen[ref] = now
			p.Metrics.strandedFound()
			unconfirmed++
			continue
		}
		if now.Sub(first) < strandedConfirm {
			unconfirmed++
			continue
		}
		if p.deadLetterStranded(ctx, s, ref) {
			delete(seen, ref)
			delete(still, ref)
		}
	}
	for ref := range seen {
		if !still[ref] {
			delete(seen, ref) // gone meanwhile (acknowledged, or dead-lettered by another replica)
		}
	}
	return unconfirmed
}

// deadLetterStranded stores s's dead letter and, once JetStream acknowledged it, deletes s
// from the work stream; it reports whether both were done. What fails is done again by a
// later look: the dead letter's publish is deduplicated by its work-stream sequence.
func (p *Pool) deadLetterStranded(ctx context.Context, s queue.Stranded, ref queue.MsgRef) bool {
	log := p.Log.With("lane", s.Lane, "seq", ref.Seq)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterTimeout)
	defer cancel()
	reason := "reached max deliveries (" + strconv.Itoa(p.policy.maxDeliver) + ") on the " + string(s.Lane) +
		" lane without being applied or dead-lettered: found in the work stream at or below its consumer's acknowledgement floor (" +
		strconv.FormatUint(s.Floor, 10) + ")"
	if err := p.DeadLetters.Publish(dctx, s.Msg, queue.Failure{Class: queue.ClassStranded, Reason: reason, FailedAt: time.Now()}); err != nil {
		log.Error("cannot store the dead letter of a stranded message; trying again later", "error", err)
		return false
	}
	if err := s.Msg.DoubleAck(dctx); err != nil {
		log.Warn("dead-lettered a stranded message but cannot delete it from the work stream; trying again later (its dead letter is stored once)", "error", err)
		return false
	}
	if p.Attempts != nil {
		if err := p.Attempts.Delete(dctx, ref); err != nil {
			log.Debug("cannot forget attempts", "error", err)
		}
	}
	p.Metrics.deadLetter(string(queue.ClassStranded))
	log.Error("dead-lettered a stranded message: its consumer delivered it max-deliver times and will never deliver it again (see `kustomer-worker dlq list --class stranded`)",
		"class", queue.ClassStranded)
	return true
}

// strandedConfirm is the least time between the two looks that must find a message stranded
// before it is dead-lettered.
const strandedConfirm = 2 * time.Second
