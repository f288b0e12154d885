package worker

import "github.com/prometheus/client_golang/prometheus"

// BulkMetrics are the metrics of bulk mode, part of Metrics.
type BulkMetrics struct {
	JobsSubmitted prometheus.Counter     // jobs Kustomer accepted
	JobsCompleted prometheus.Counter     // jobs followed to their end
	JobsFailed    *prometheus.CounterVec // by reason: jobs whose unsettled items went as single PUTs
	Items         *prometheus.CounterVec // by outcome: succeeded, failed, single, few
	JobDuration   prometheus.Histogram   // from submit to complete, as Kustomer reports it
}

func newBulkMetrics(ns string) BulkMetrics {
	return BulkMetrics{
		JobsSubmitted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "bulk_jobs_submitted_total",
			Help: "Bulk jobs Kustomer accepted."}),
		JobsCompleted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "bulk_jobs_completed_total",
			Help: "Bulk jobs followed until Kustomer reported every item."}),
		JobsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bulk_jobs_failed_total",
			Help: "Bulk jobs whose unsettled items went as single PUTs, by reason (rejected, auth, deadline, read_denied, unknown, invalid, store, error, panic)."}, []string{"reason"}),
		Items: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bulk_items_total",
			Help: "Updates that went to a bulk job or nearly did, by outcome: succeeded (applied by the job), failed (Kustomer failed the item; sent again as a single PUT), single (the job failed; sent as a single PUT), few (too few to fill a job in time; sent as a single PUT)."}, []string{"outcome"}),
		JobDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "bulk_job_duration_seconds",
			Help: "How long bulk jobs took from their submit until complete.", Buckets: prometheus.ExponentialBuckets(0.25, 2, 12)}),
	}
}

// Reasons and outcomes of the labelled bulk metrics: each series is served from the start, at
// zero, so that rates and alerts work before the first of its kind.
var (
	bulkFailReasons  = []string{"rejected", "auth", "deadline", "read_denied", "unknown", "invalid", "store", "error", "panic"}
	bulkItemOutcomes = []string{"succeeded", "failed", "single", "few"}
)

func (b BulkMetrics) register(reg prometheus.Registerer) {
	for _, r := range bulkFailReasons {
		b.JobsFailed.WithLabelValues(r)
	}
	for _, o := range bulkItemOutcomes {
		b.Items.WithLabelValues(o)
	}
	reg.MustRegister(b.JobsSubmitted, b.JobsCompleted, b.JobsFailed, b.Items, b.JobDuration)
}

func (m *Metrics) bulkSubmitted() {
	if m != nil {
		m.Bulk.JobsSubmitted.Inc()
	}
}

func (m *Metrics) bulkCompleted(seconds float64) {
	if m != nil {
		m.Bulk.JobsCompleted.Inc()
		m.Bulk.JobDuration.Observe(seconds)
	}
}

func (m *Metrics) bulkFailed(reason string) {
	if m != nil {
		m.Bulk.JobsFailed.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) bulkItem(outcome string) {
	if m != nil {
		m.Bulk.Items.WithLabelValues(outcome).Inc()
	}
}
