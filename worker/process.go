package worker

import (
	"context"
	"math/rand/v2"
	"runtime/debug"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// process makes one try at the head message of c: after the checks that it is still this
// replica's to send (giveBack) and that the conversation's previous update is acknowledged
// for good (previousGone), it offers the message to the bulker (bulk mode) or sends it
// (try), turns what happened into a decision (decide) and carries it out (settle). Shutdown
// leaves the message held for handBack.
func (p *Pool) process(ctx, hard context.Context, c *conv) {
	if p.giveBack(c) { // this replica is a standby now: handed back (standby.go)
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
	ps := &passage{p: p}
	defer func() {
		if r := recover(); r != nil {
			p.jobLog(j).Error("panic while handling a message; it will be retried", "panic", r, "stack", string(debug.Stack()))
			t.attempts, t.throttles = j.attempts, j.throttles
			p.settle(c, j, decide(outcome{panicked: r}, t, p.policy, rand.Float64()))
		}
	}()
	// The passage's tickets go back here, panic or not: a probe that panicked learned nothing
	// and is given back (deferred after the recover, this runs before it). On the normal path
	// it runs after settle, so that the gates' log lines follow the message's.
	defer ps.done()
	if j.settled { // only its acknowledgement is missing
		p.ack(c, j)
		return
	}
	if j.accepted { // applied: only its run's record is missing
		if len(j.members) > 0 {
			p.groupApplied(c, j, j.bulkJob)
			return
		}
		p.appliedOK(c, j, j.bulkJob)
		return
	}
	if p.bulk != nil && p.bulk.Take(p.bulkItem(c, j, t.delivered)) {
		return // in a bulk job, or held back for an older one (bulkhost.go)
	}
	o := p.try(ctx, hard, c, j, ps)
	if o == nil {
		return // shutdown began while waiting: the message stays held for handBack
	}
	if o.err == nil && o.invalid == nil && !o.canceled && o.panicked == nil {
		p.probes.applied(j.update.ID) // a conversation the breaker may read
	}
	if n := p.outage.Refund(j.ref.Seq); n > 0 {
		j.attempts = max(j.attempts-n, 0) // spent on failures that turned out to be an outage
	}
	last := j.attempts+1 >= p.policy.maxAttempts || p.policy.lastDelivery(t.delivered)
	t.outage, t.hold = ps.report(*o, c.key, j.ref.Seq, last)
	t.attempts, t.throttles = j.attempts, j.throttles
	p.settle(c, j, decide(*o, t, p.policy, rand.Float64()))
}

// try sends j's update, c's head, once ps passed the gates and the budget, and says what
// happened; nil when shutdown began before anything was sent. At j's first send, once the
// budget gave it a turn (so that the updates queued meanwhile join too), the updates queued
// behind it that go in the same PUT are fixed (gather, coalesce.go).
func (p *Pool) try(ctx, hard context.Context, c *conv, j *job, ps *passage) *outcome {
	if j.invalid != nil {
		return &outcome{invalid: j.invalid}
	}
	p.loadAttempts(hard, j)
	if !ps.enter(ctx, j.class) {
		return nil
	}
	p.gather(c, j, false)
	o := ps.send(hard, func(ctx context.Context) (int, kustomer.RateLimit, error) {
		res, err := p.Client.UpdateConversation(ctx, j.sendable())
		if err != nil {
			return 0, kustomer.RateLimit{}, err
		}
		return res.Status, res.RateLimit, nil
	})
	return &o
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
