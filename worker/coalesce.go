package worker

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/coalesce"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// Coalescing (Config.Coalesce): when a conversation's head is first sent, the partial updates
// queued behind it in the same lane that the rule of package coalesce lets join go in the
// same PUT, as its members. The group is fixed then: nothing joins later, and every member
// counts as sent (giveBackFrom never hands one back while its head is held; insert files a
// late older message behind them). Its outcome settles every member: applied, all are
// acknowledged in stream order, through the conversation's usual chain of acknowledgements
// (each confirmed but the last); rejected with 400 or 422 before any ambiguous try, it is
// split and each goes alone; otherwise a dead letter settles every member, each naming the
// group.

// coalesces reports whether updates of class are merged.
func (p *Pool) coalesces(class pacer.Priority) bool {
	if class == pacer.Backfill {
		return p.cfg.Coalesce.Backfill
	}
	return p.cfg.Coalesce.Live
}

// gather fixes the group of c's head j when it is first sent (a single PUT's first try, or
// its offer to the bulker: forBulk): the jobs queued behind it that may join. A message
// that belongs to a bulk job another process submitted never joins: that job's result
// settles it (bulk.Bulker.Known). Called by the worker holding c.
func (p *Pool) gather(c *conv, j *job, forBulk bool) {
	if j.sent {
		return
	}
	j.sent = true
	if j.alone || j.invalid != nil || !p.coalesces(j.class) {
		return
	}
	p.mu.Lock()
	queued := slices.Clone(c.jobs[1:])
	delivered := make([]uint64, len(queued))
	for i, m := range queued {
		delivered[i] = m.delivered
	}
	p.mu.Unlock()
	if len(queued) == 0 {
		return
	}
	g, ok := coalesce.Start(j.update.Replace, j.update.Body, kustomer.MaxBodyBytes)
	if !ok {
		return
	}
	// The bodies are read outside the lock; the jobs behind the head are checked unchanged
	// after (a late older message may have been filed among them).
	var members []*job
	for i, m := range queued {
		if m.class != j.class || m.invalid != nil || m.alone || m.settled || p.bulkKnown(m, delivered[i]) ||
			!g.Add(m.update.Replace, m.update.Body) {
			break
		}
		members = append(members, m)
	}
	if len(members) == 0 {
		return
	}
	p.mu.Lock()
	same := len(c.jobs) > len(members) && slices.Equal(c.jobs[1:1+len(members)], members)
	if same {
		j.members = members
	}
	p.mu.Unlock()
	if !same {
		return // goes alone this time: its group is fixed empty
	}
	j.merged = &kustomer.Update{ID: j.update.ID, Body: g.Body()}
	// A group fixed for a single PUT stays one on every try; one fixed for the bulker is an
	// item of a job, and goes as a single PUT only if the bulker hands it back so.
	j.noBulk = !forBulk
	if p.Metrics != nil && p.Metrics.Coalesced != nil {
		p.Metrics.Coalesced.Add(float64(len(members)))
	}
}

// bulkKnown reports whether m, delivered that many times, belongs to a bulk job another
// process submitted (bulk mode only).
func (p *Pool) bulkKnown(m *job, delivered uint64) bool {
	return p.bulk != nil && p.bulk.Known(bulk.Item{Ref: m.ref, Delivered: delivered})
}

// sendable is the update j's try sends: its group's merged one, if it has members.
func (j *job) sendable() kustomer.Update {
	if j.merged != nil {
		return *j.merged
	}
	return j.update
}

// groupName names a group in dead letters and logs: its members' stream sequences.
func groupName(j *job) string {
	seqs := make([]string, 0, 1+len(j.members))
	seqs = append(seqs, strconv.FormatUint(j.ref.Seq, 10))
	for _, m := range j.members {
		seqs = append(seqs, strconv.FormatUint(m.ref.Seq, 10))
	}
	return strings.Join(seqs, ",")
}

// settleGroup carries out d for j, the head of a merged PUT; it reports false when d is
// settle's to carry out as for a single message (the group then stays as it is).
func (p *Pool) settleGroup(c *conv, j *job, d decision) bool {
	n := len(j.members)
	switch d.verdict {
	case verdictAck:
		for range n {
			p.Metrics.update(d.metric)
		}
		if p.Metrics != nil && p.Metrics.CoalesceSaved != nil {
			p.Metrics.CoalesceSaved.Add(float64(n))
		}
		p.Metrics.update(d.metric)
		p.groupApplied(c, j, "")
		return true
	case verdictRetry:
		if d.status == 0 || d.status >= 500 {
			j.ambiguous = true // it may have been applied: never split from now on
		}
		for range n {
			p.Metrics.retry(d.metric)
		}
		for _, m := range j.members {
			m.attempts = d.attempts
			p.recordAttempts(m) // so that a member redelivered alone counts on from them
		}
		return false
	case verdictDeadLetter:
		if !j.ambiguous && d.class == queue.ClassRejected && (d.status == 400 || d.status == 422) {
			p.split(c, j, d)
			return true
		}
		p.deadLetterGroup(c, j, d)
		return true
	}
	return false
}

// groupApplied acknowledges j, c's head, and its members, which Kustomer applied (in bulk
// job bulkJob, or as a merged single PUT), once each one's run record says so (appliedOK's rule
// for a group): if one cannot be stored, the messages stay held and only the records are
// tried again later (process), never the update. A merged single PUT's requests are counted
// on the head's record, the members' records count none.
func (p *Pool) groupApplied(c *conv, j *job, bulkJob string) {
	if p.Runs != nil {
		p.mu.Lock()
		jobs := append([]*job{j}, j.members...)
		p.mu.Unlock()
		for i, m := range jobs {
			if m.runRecorded {
				continue
			}
			p.mu.Lock()
			msg := m.msg
			p.mu.Unlock()
			units := 0
			if bulkJob == "" && i == 0 {
				units = j.attempts + 1
			}
			rctx, cancel := context.WithTimeout(p.hard, storeTimeout)
			err := p.Runs.RecordApplied(rctx, msg.Headers(), queue.Applied{Units: units, Job: bulkJob})
			cancel()
			if errors.Is(err, queue.ErrNoRunsStream) {
				p.jobLog(m).Warn("cannot record the run's line as applied: no runs stream; acknowledging it all the same", "error", err)
				err = nil
			}
			if err != nil {
				j.accepted, j.bulkJob = true, bulkJob
				p.jobLog(m).Warn("cannot record the run's line of a merged update as applied; keeping its messages and trying again (the update is not sent again)", "error", err)
				p.schedule(c, deadLetterRetry)
				return
			}
			m.runRecorded = true
		}
	}
	p.settleMembers(j)
	p.ackGroup(c, j)
}

// settleMembers marks j's members settled: the group's outcome is stored (applied, or dead
// letters published), only their acknowledgements are missing.
func (p *Pool) settleMembers(j *job) {
	p.mu.Lock()
	for _, m := range j.members {
		m.settled = true
	}
	p.mu.Unlock()
}

// split sends each member of j's rejected group alone, j first: the bad one is dead-lettered
// with its own reason and the others apply. The rejected try spends no attempt.
func (p *Pool) split(c *conv, j *job, d decision) {
	j.attempts = max(d.attempts-1, 0)
	p.mu.Lock()
	members := j.members
	j.members = nil
	p.mu.Unlock()
	j.alone, j.merged = true, nil
	for _, m := range members {
		m.alone = true
	}
	p.jobLog(j).Info("merged update rejected; sending its updates one by one", "status", d.status,
		"group", groupName(&job{ref: j.ref, members: members}), "reason", d.logged())
	p.schedule(c, 0)
}

// deadLetterGroup dead-letters every member of j's group, each naming the group, and then
// acknowledges them all; if one cannot be stored, the group stays held and is tried again
// (a dead letter stored twice is stored once: the publish carries the message's id).
func (p *Pool) deadLetterGroup(c *conv, j *job, d decision) {
	group := groupName(j)
	p.mu.Lock()
	msgs := make([]*job, 0, 1+len(j.members))
	msgs = append(msgs, j)
	msgs = append(msgs, j.members...)
	p.mu.Unlock()
	for _, m := range msgs {
		p.mu.Lock()
		msg := m.msg
		p.mu.Unlock()
		dctx, cancel := context.WithTimeout(p.hard, deadLetterTimeout)
		err := p.DeadLetters.Publish(dctx, msg, queue.Failure{
			Class: d.class, Reason: d.reason + " (merged update of messages " + group + ")", Status: d.status,
			Attempts: d.attempts, FailedAt: time.Now(), Group: group,
		})
		cancel()
		if err != nil {
			p.jobLog(j).Error("cannot store dead letter of a merged update; keeping its messages and trying again", "class", d.class, "group", group, "error", err)
			p.schedule(c, deadLetterRetry)
			return
		}
	}
	p.jobLog(j).Warn("merged update dead-lettered with each of its messages", "class", d.class, "status", d.status,
		"attempts", d.attempts, "group", group, "reason", d.logged())
	for range msgs {
		p.Metrics.deadLetter(string(d.class))
		p.Metrics.update(d.metric)
	}
	p.settleMembers(j)
	p.ackGroup(c, j)
}

// ackGroup acknowledges j, c's head, and its members, settled, in stream order, each
// confirmed by JetStream before the next is acknowledged, the last one as ack does; c stays in
// the hands of the goroutine that does it until then, so that the members are not left
// waiting behind other conversations for a worker. An acknowledgement not confirmed hands the
// rest to the usual path: c is made ready again later, and a worker acknowledges each settled
// job (process, ack).
func (p *Pool) ackGroup(c *conv, j *job) {
	p.mu.Lock()
	j.settled = true // as ack marks it, for goesBack
	jobs := make([]*job, 0, 1+len(j.members))
	jobs = append(jobs, j)
	jobs = append(jobs, j.members...)
	p.mu.Unlock()
	p.confirming.Go(func() {
		for i, m := range jobs {
			if i == len(jobs)-1 {
				p.ack(c, m)
				return
			}
			p.mu.Lock()
			msg := m.msg
			p.mu.Unlock()
			actx, cancel := context.WithTimeout(p.hard, ackTimeout)
			err := msg.DoubleAck(actx)
			cancel()
			if err != nil {
				m.acks++
				d := backoffDelay(m.acks, ackRetryMin, ackRetryMax, rand.Float64())
				p.jobLog(m).Warn("acknowledgement not confirmed; trying again (the update is not sent again)", "error", err, "retry_in", d)
				p.schedule(c, d)
				return
			}
			p.letGo(c, m, true, false)
		}
	})
}
