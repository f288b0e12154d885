package worker

import (
	"context"
	"errors"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// settle carries out a decision: the one place where a message is acknowledged,
// dead-lettered, retried or held.
func (p *Pool) settle(c *conv, j *job, d decision) {
	j.attempts = d.attempts
	// members is written under Pool.mu only by the holder of c, which this goroutine is.
	if len(j.members) > 0 && p.settleGroup(c, j, d) { // a merged update (coalesce.go)
		return
	}
	switch d.verdict {
	case verdictAck:
		p.Metrics.update(d.metric)
		p.appliedOK(c, j, "")
	case verdictDeadLetter:
		p.deadLetter(c, j, d)
	case verdictRetry:
		p.recordAttempts(j)
		p.Metrics.retry(d.metric)
		p.jobLog(j).Info("request failed; retrying", "attempt", j.attempts, "max_attempts", p.cfg.MaxAttempts,
			"status", d.status, "reason", d.logged(), "retry_in", d.delay)
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
		p.jobLog(j).Debug("Kustomer refused the API key", "status", d.status, "reason", d.logged())
		p.schedule(c, 0)
	case verdictKeep:
	}
}

// appliedOK acknowledges j, which Kustomer applied (in bulk job job, or as a single PUT), once
// its run's record says so: if that cannot be stored, the message stays held and only the
// record is tried again later (process), never the update.
func (p *Pool) appliedOK(c *conv, j *job, job string) {
	p.mu.Lock()
	msg := j.msg
	p.mu.Unlock()
	// Only a message of a run has a record to store (RecordApplied checks the rest).
	if p.Runs != nil && msg.Headers().Get(queue.HeaderRunID) != "" {
		units := 0
		if job == "" {
			units = j.attempts + 1 // the retryable failures and the request that succeeded
		}
		rctx, cancel := context.WithTimeout(p.hard, storeTimeout)
		err := p.Runs.RecordApplied(rctx, msg.Headers(), queue.Applied{Units: units, Job: job})
		cancel()
		if errors.Is(err, queue.ErrNoRunsStream) {
			// Nothing will ever take the record: the update is applied, so it is acknowledged;
			// the run's status will count it as pending (create the runs stream: run with
			// --manage-streams once, or see docs/RUNS.md).
			p.jobLog(j).Warn("cannot record the run's line as applied: no runs stream; acknowledging it all the same", "error", err)
			err = nil
		}
		if err != nil {
			j.accepted, j.bulkJob = true, job
			p.jobLog(j).Warn("cannot record the run's line as applied; keeping the message and trying again (the update is not sent again)", "error", err)
			p.schedule(c, deadLetterRetry)
			return
		}
	}
	p.ack(c, j)
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
	p.jobLog(j).Warn("dead-lettered", "class", d.class, "status", d.status, "attempts", j.attempts, "reason", d.logged())
	p.Metrics.deadLetter(string(d.class))
	p.Metrics.update(d.metric)
	p.ack(c, j)
}
