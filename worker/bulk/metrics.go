package bulk

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the metrics of bulk mode, part of the pool's (worker.Metrics.Bulk). The zero of
// *Metrics (nil) records nothing.
type Metrics struct {
	JobsSubmitted prometheus.Counter     // jobs Kustomer accepted
	JobsCompleted prometheus.Counter     // jobs followed to their end
	JobsFailed    *prometheus.CounterVec // by reason: jobs whose unsettled items went as single PUTs
	Items         *prometheus.CounterVec // by outcome: succeeded, failed, single, few
	JobDuration   prometheus.Histogram   // from submit to complete, as Kustomer reports it

	retries *prometheus.CounterVec // the pool's retry decisions, by reason: a submit's or read's count there too
}

// NewMetrics creates the bulk metrics in namespace ns and registers them on reg; retries is
// the pool's counter of retry decisions by reason, which bulk requests count in too.
func NewMetrics(reg prometheus.Registerer, ns string, retries *prometheus.CounterVec) Metrics {
	m := Metrics{
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
		retries: retries,
	}
	// Each labelled series is served from the start, at zero, so that rates and alerts work
	// before the first of its kind.
	for _, r := range failReasons {
		m.JobsFailed.WithLabelValues(r)
	}
	for _, o := range itemOutcomes {
		m.Items.WithLabelValues(o)
	}
	reg.MustRegister(m.JobsSubmitted, m.JobsCompleted, m.JobsFailed, m.Items, m.JobDuration)
	return m
}

// Reasons and outcomes of the labelled bulk metrics.
var (
	failReasons  = []string{"rejected", "auth", "deadline", "read_denied", "unknown", "invalid", "store", "error", "panic"}
	itemOutcomes = []string{"succeeded", "failed", "single", "few"}
)

func (m *Metrics) submitted() {
	if m != nil {
		m.JobsSubmitted.Inc()
	}
}

func (m *Metrics) completed(seconds float64) {
	if m != nil {
		m.JobsCompleted.Inc()
		m.JobDuration.Observe(seconds)
	}
}

func (m *Metrics) failed(reason string) {
	if m != nil {
		m.JobsFailed.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) item(outcome string) {
	if m != nil {
		m.Items.WithLabelValues(outcome).Inc()
	}
}

func (m *Metrics) retry(reason string) {
	if m != nil && m.retries != nil {
		m.retries.WithLabelValues(reason).Inc()
	}
}
