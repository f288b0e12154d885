package bulk

import (
	"context"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// A handover moves the pin of a lane from one replica to another while both run. A job keeps
// running in Kustomer whoever follows it, for minutes, long after the new active replica
// stopped waiting for the messages the old one held (twice AckWait and a little). So:
//
//   - the replica that is no longer active on an item's lane lets go of what it holds there
//     (Yield, and each job's goroutine before each read: handOver): items not in a job yet,
//     jobs not submitted (never submitted now), and the items of submitted jobs, whose
//     records stay in the bucket for the new active replica; it stops following them;
//   - a replica that is active on some lane (Host.Active) follows every job of the bucket
//     that another process submitted and nobody settled (takeOver, on every read of the
//     bucket; housekeep reads it when this replica becomes active): its conversations'
//     newer updates are held back until the job is complete or known lost (twice the
//     deadline), and the items the old replica handed back are settled by the job's result.

// Yield takes out of b's hands, for handing back, the items that go back to the active
// replica now (Host.Standby): those a fence holds back, those gathering for a job, and those
// of jobs this replica submitted or follows. A job not submitted yet is dropped, and one
// submitted is left to the active replica, its record kept. Such a conversation is at rest,
// as a parked one is: held here until its job or fence ends (minutes), its head would come
// back long after the new active replica stopped waiting for it and applied the
// conversation's newer updates. The host calls it when this replica becomes a standby on a
// lane and hands the items back itself.
func (b *Bulker) Yield() []Item {
	var (
		fenced, pending []Item
		jobs            []*job
	)
	b.locked(func() {
		for _, it := range b.fenced {
			fenced = append(fenced, it)
		}
		pending = append(pending, b.pending...)
		jobs = b.followedLocked()
	})
	var out []Item
	for _, it := range fenced {
		if b.host.Standby(it) && b.unfence(it) {
			out = append(out, it)
		}
	}
	out = append(out, b.unpend(b.standby(pending))...)
	for _, bj := range jobs {
		items, _ := b.handOver(bj)
		out = append(out, items...)
	}
	return out
}

// followedLocked lists the jobs this process submitted and those of another it follows or
// holds items of; b.mu is held.
func (b *Bulker) followedLocked() []*job {
	seen := make(map[*job]bool)
	var jobs []*job
	for _, bj := range b.jobs {
		seen[bj] = true
		jobs = append(jobs, bj)
	}
	for _, bj := range b.known {
		if !seen[bj] {
			seen[bj] = true
			jobs = append(jobs, bj)
		}
	}
	return jobs
}

// standby is those of items that go back to the active replica now; b.mu is not held.
func (b *Bulker) standby(items []Item) []Item {
	var out []Item
	for _, it := range items {
		if b.host.Standby(it) {
			out = append(out, it)
		}
	}
	return out
}

// unpend takes items out of the job gathering, returning those it took.
func (b *Bulker) unpend(items []Item) []Item {
	if len(items) == 0 {
		return nil
	}
	gone := make(map[queue.MsgRef]bool, len(items))
	for _, it := range items {
		gone[it.Ref] = true
	}
	var out []Item
	b.locked(func() {
		kept := b.pending[:0]
		for _, it := range b.pending {
			if gone[it.Ref] {
				out = append(out, it)
			} else {
				kept = append(kept, it)
			}
		}
		b.pending = kept
	})
	return out
}

// handOver takes out of bj, for handing back, the items it holds that go back to the active
// replica now. A job not submitted yet is dropped, every item going back (it never will be
// submitted: its submit checks); one submitted whose items all went back, or one of another
// process while this replica is active nowhere, is no longer followed here (stop), its record
// left to the active replica. A job whose submit is under way keeps its items until the
// answer.
func (b *Bulker) handOver(bj *job) (items []Item, stop bool) {
	var held []Item
	b.locked(func() {
		for _, it := range bj.held {
			held = append(held, it)
		}
	})
	back := b.standby(held)
	inactive := bj.adopted && !b.host.Active()
	var drop string
	b.locked(func() {
		if bj.finished {
			stop = true
			return
		}
		if len(back) > 0 && !bj.submitting && bj.rec.JobID == "" && !bj.adopted {
			bj.finished, drop = true, bj.key // not submitted: never will be
			delete(b.jobs, bj.key)
			if bj.stop != nil {
				bj.stop()
			}
			for _, it := range bj.held {
				items = append(items, it)
			}
			bj.held = make(map[queue.MsgRef]Item)
			stop = true
			return
		}
		if bj.submitting && bj.rec.JobID == "" {
			return // its answer decides
		}
		for _, it := range back {
			if _, ok := bj.held[it.Ref]; ok {
				delete(bj.held, it.Ref)
				items = append(items, it)
			}
		}
		stop = b.leaveLocked(bj, len(items) > 0, inactive)
	})
	if drop != "" {
		b.del(drop)
	}
	return items, stop
}

// leaveLocked stops following bj here when its last items held here just went back (gave, a
// job of this process), or when this replica is active nowhere (inactive, a job of another),
// and reports whether it did; the record stays. b.mu is held.
func (b *Bulker) leaveLocked(bj *job, gave, inactive bool) bool {
	switch {
	case bj.finished:
		return true
	case bj.adopted && inactive:
		bj.follows = false // a redelivery of an item, or this replica's next turn, follows it again
		return true
	case !bj.adopted && gave && len(bj.held) == 0:
		bj.finished = true
		delete(b.jobs, bj.key)
		return true
	}
	return false
}

// takeOverLocked follows, from now on, every job of another process known here that nobody
// settled and that Kustomer may still apply, if this replica is active on some lane:
// its conversations' newer updates are held back until it is complete or known lost. b.mu is
// held.
func (b *Bulker) takeOverLocked(active bool, now time.Time) {
	if !active {
		return
	}
	for _, bj := range b.followedLocked() {
		lost := bj.rec.Submitted.Add(2 * b.cfg.Deadline)
		if !bj.adopted || bj.follows || bj.finished || bj.rec.JobID == "" || !bj.rec.Settled.IsZero() || !lost.After(now) {
			continue
		}
		for _, it := range bj.rec.Items {
			if _, ok := bj.outcome[it.MsgRef()]; !ok {
				b.addFence(it.Conv, it.LastSeq(), lost)
			}
		}
		bj.rec.FenceUntil = later(bj.rec.FenceUntil, lost)
		bj.follows = true
		b.log.Info("following a bulk job another replica submitted; its conversations' newer updates wait until it is complete", "job", bj.rec.JobID)
		b.wg.Go(func() { b.guard(bj, b.follow) })
	}
}

// activated reads the store when this replica has become active on some lane since the last
// call: the jobs other replicas submitted are followed from then on. Called by Run's
// goroutine alone, which owns wasActive.
func (b *Bulker) activated(ctx context.Context) {
	active := b.host.Active()
	if active && !b.wasActive {
		b.load(ctx)
	}
	b.wasActive = active
}

// leaveAmbiguous ends bj, a job whose submit got no clear answer (it may exist in Kustomer),
// once its items go back to the active replica: a submit from here now could create a second
// job beside what the new active replica sends. The items are handed back; the record stays,
// marked ambiguous, so that the new active replica holds their conversations until the job
// would be past its deadline (remember). It reports whether it did.
func (b *Bulker) leaveAmbiguous(bj *job) bool {
	var held []Item
	b.locked(func() {
		if !bj.rec.Ambiguous.IsZero() && bj.rec.JobID == "" && !bj.finished {
			for _, it := range bj.held {
				held = append(held, it)
			}
		}
	})
	if len(b.standby(held)) == 0 {
		return false
	}
	var items []Item
	b.locked(func() {
		if bj.finished {
			return
		}
		bj.finished = true
		delete(b.jobs, bj.key)
		for _, it := range bj.held {
			items = append(items, it)
		}
		bj.held = make(map[queue.MsgRef]Item)
	})
	if len(items) == 0 {
		return false
	}
	b.log.Warn("no longer the active replica: stopped submitting a bulk job whose submit got no clear answer; the active replica holds its conversations until the job's deadline",
		"items", len(items), "submitted", bj.rec.Submitted.Format(time.RFC3339))
	for _, it := range items {
		b.host.Resume(it)
	}
	return true
}
