package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

// bulkFlags turn on bulk mode: partial updates go to Kustomer in bulk jobs of up to
// 100, one unit of the org budget a submit, followed by paced reads. See docs/BULK.md.
type bulkFlags struct {
	Bulk         bool          `name:"bulk" env:"WORKER_BULK" help:"Bulk mode: send partial updates of distinct conversations in bulk jobs of up to 100 for one unit of the org budget each (plus the reads that follow a job). The key needs the role org.permission.bulk.read besides org.permission.conversation.update. For backfills; live updates that find no company go as single PUTs after bulk-linger (default false)."`
	BulkSize     int           `name:"bulk-size" env:"WORKER_BULK_SIZE" default:"${default_bulk_size}" help:"Bulk mode: the most updates in one job, 1 to 100."`
	BulkLinger   time.Duration `name:"bulk-linger" env:"WORKER_BULK_LINGER" default:"${default_bulk_linger}" help:"Bulk mode: how long a job waits to fill; then it goes out with bulk-min-size updates or more, and fewer go as single PUTs."`
	BulkMinSize  int           `name:"bulk-min-size" env:"WORKER_BULK_MIN_SIZE" default:"${default_bulk_min}" help:"Bulk mode: the fewest updates worth a job."`
	BulkMaxBytes int           `name:"bulk-max-bytes" env:"WORKER_BULK_MAX_BYTES" default:"${default_bulk_max_bytes}" help:"Bulk mode: the most bytes of update bodies in one job; a job goes out before an update that would pass it, and one Kustomer refuses as too large (413) is split."`
	BulkMinOld   int           `name:"bulk-min" hidden:"" deprecated:"bulk-min-size" help:"Deprecated name of bulk-min-size."`
	BulkDeadline time.Duration `name:"bulk-deadline" env:"WORKER_BULK_DEADLINE" default:"${default_bulk_deadline}" help:"Bulk mode: how long a job may take; then its unsettled updates go as single PUTs and the conversations' newer updates wait until it is complete or twice this passed."`
}

// bulkConfig is the pool's bulk configuration as the flags give it.
func (f *bulkFlags) bulkConfig() bulk.Config {
	return bulk.Config{Enabled: f.Bulk, Size: f.BulkSize, Linger: f.BulkLinger, Min: f.BulkMinSize, Deadline: f.BulkDeadline, MaxBytes: f.BulkMaxBytes}
}

// wireBulk gives the pool what bulk mode needs: the client, which submits and reads jobs, and
// the bucket that keeps jobs in flight across restarts. Nothing without --bulk.
func (f *bulkFlags) wireBulk(ctx context.Context, js jetstream.JetStream, top queue.Topology, manage bool, pool *worker.Pool, client *kustomer.Client) error {
	if !f.Bulk {
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, bindCallTimeout)
	defer cancel()
	store, err := queue.BindBulk(bctx, js, top, manage)
	if err != nil {
		return fmt.Errorf("bulk mode: %w (create it, or run with manage-streams on)", err)
	}
	pool.BulkClient, pool.BulkJobs = client, store
	return nil
}

// bulkVars are the bulk flags' defaults, from worker's constants.
func bulkVars() map[string]string {
	return map[string]string{
		"default_bulk_size":      fmt.Sprint(bulk.DefaultSize),
		"default_bulk_linger":    bulk.DefaultLinger.String(),
		"default_bulk_min":       fmt.Sprint(bulk.DefaultMin),
		"default_bulk_deadline":  bulk.DefaultDeadline.String(),
		"default_bulk_max_bytes": fmt.Sprint(bulk.DefaultMaxBytes),
		"default_bulk_bucket":    queue.DefaultBulkBucket,
		"default_bulk_jobs_held": fmt.Sprint(bulk.DefaultJobsHeld),
	}
}

// bulkJobs reads the bulk jobs in flight for status, binding their bucket once it exists.
type bulkJobs struct{ store *queue.BulkJobs }

// read lists the jobs; none while the bucket does not exist (no worker ran in bulk mode yet).
func (b *bulkJobs) read(ctx context.Context, js jetstream.JetStream, top queue.Topology) ([]queue.BulkRecord, error) {
	if b.store == nil {
		store, err := queue.BindBulk(ctx, js, top, false)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		b.store = store
	}
	return b.store.List(ctx)
}

// bulkJobDoc is a bulk job in flight in status --json.
type bulkJobDoc struct {
	Job        string     `json:"job"`            // Kustomer's job id; "" while the submit is unanswered
	Lane       string     `json:"lane,omitempty"` // the lane whose updates go in bulk
	Submitted  time.Time  `json:"submitted"`
	Items      int        `json:"items"`
	Settled    int        `json:"settled"`               // items Kustomer reported on
	FenceUntil *time.Time `json:"fence_until,omitempty"` // newer updates of its conversations wait until then
	Done       bool       `json:"done"`                  // followed to its end, kept for redeliveries or a fence
}

func bulkDocs(recs []queue.BulkRecord) []bulkJobDoc {
	out := make([]bulkJobDoc, 0, len(recs))
	for _, r := range recs {
		d := bulkJobDoc{Job: r.JobID, Lane: r.Lane, Submitted: r.Submitted.UTC(), Items: len(r.Items), Done: !r.Settled.IsZero()}
		for _, it := range r.Items {
			if it.Outcome != "" {
				d.Settled++
			}
		}
		if !r.FenceUntil.IsZero() {
			t := r.FenceUntil.UTC()
			d.FenceUntil = &t
		}
		out = append(out, d)
	}
	return out
}

// bulkLines is the human form of the bulk jobs in flight; nothing when there are none.
func bulkLines(recs []queue.BulkRecord, now time.Time) []string {
	if len(recs) == 0 {
		return nil
	}
	lines := []string{fmt.Sprintf("bulk jobs     %10d  (kept in flight across restarts)", len(recs))}
	for _, d := range bulkDocs(recs) {
		job := d.Job
		if job == "" {
			job = "(submit unanswered)"
		}
		s := fmt.Sprintf("  %-24s %3d items, %3d reported, submitted %s ago", job, d.Items, d.Settled, age(now, d.Submitted))
		if d.Lane != "" {
			s += ", " + d.Lane + " lane"
		}
		if d.Done {
			s += ", done"
		}
		if d.FenceUntil != nil && d.FenceUntil.After(now) {
			s += fmt.Sprintf(", holding newer updates for %s", d.FenceUntil.Sub(now).Round(time.Second))
		}
		lines = append(lines, s)
	}
	return lines
}

// demoBulkSummary reports what bulk mode spent in a demo.
func demoBulkSummary(w io.Writer, st kustomertest.Stats, applied int) {
	fmt.Fprintf(w, "bulk           %8d  jobs (%d updates applied in bulk, %d items failed and went as single PUTs or dead letters)\n",
		st.BulkJobs, st.BulkItemsDone, st.BulkItemsFailed)
	fmt.Fprintf(w, "budget units   %8d  (%d submits, %d reads, %d single PUTs: %.2f units per 100 updates applied)\n",
		st.Units, st.BulkSubmits, st.BulkReads, st.Units-st.BulkSubmits-st.BulkReads, 100*float64(st.Units)/float64(max(applied, 1)))
}
