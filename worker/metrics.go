package worker

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
)

// Metrics are the pool's Prometheus metrics. Register them on a registry of your own; the zero
// of *Metrics (nil) records nothing.
type Metrics struct {
	Updates         *prometheus.CounterVec // by outcome: applied, invalid, rejected, exhausted
	Requests        *prometheus.CounterVec // by HTTP status code, "error" when no answer
	RequestDuration prometheus.Histogram
	Retries         *prometheus.CounterVec // by reason: transient, throttled_org, throttled_conversation, auth, panic
	PacerWait       prometheus.Counter     // seconds spent waiting on the pacer
	InFlight        prometheus.Gauge       // requests sent and not answered
	Held            prometheus.Gauge       // messages taken from the consumer and not yet acked
	DeadLetters     *prometheus.CounterVec // by class
	Stranded        prometheus.Counter     // stranded messages found (dead-lettered ones count in DeadLetters, class stranded)
	Pending         prometheus.Gauge       // consumer: messages not yet delivered
	AckPending      prometheus.Gauge       // consumer: delivered, not yet acked (all replicas)
	AuthBlocked     prometheus.Gauge       // 1 while Kustomer refuses the key
	KustomerDown    prometheus.Gauge       // 1 while the outage breaker is open
	// KustomerWritesDown is 1 while the breaker holds that Kustomer refuses updates while it
	// answers reads (KustomerDown is 1 too).
	KustomerWritesDown prometheus.Gauge
	ProbeReads         *prometheus.CounterVec // the breaker's read probes, by answer: answered, unanswered
	BreakerTrips       prometheus.Counter     // times the outage breaker opened
	Bulk               bulk.Metrics           // bulk mode
	BudgetUnits        prometheus.Counter     // requests that cost a unit of the org budget: every PUT, bulk submit and read answered other than 401, 403, 429
	// BudgetUnanswered counts requests that got no answer (a timeout, a dropped connection,
	// an attempt the HTTP transport made again): each may or may not have cost a unit.
	BudgetUnanswered prometheus.Counter
	// Coalesced counts messages sent as members of a merged update (Config.Coalesce), beyond
	// the first of each, single PUT or bulk item; CoalesceSaved the requests merged single
	// PUTs spared, once applied (a merged bulk item spares items of a job, not requests).
	Coalesced     prometheus.Counter
	CoalesceSaved prometheus.Counter

	// The children of Updates and Requests used so far, by outcome and by status (0: error),
	// so that counting one does not look it up by its labels again: every message counts one
	// of each.
	outcomes, codes sync.Map
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns = "kustomer_worker"
	m := &Metrics{
		Updates: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "updates_total",
			Help: "Update messages finished, by outcome (applied, invalid, rejected, exhausted)."}, []string{"outcome"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "Requests to Kustomer, by HTTP status code (error: no answer)."}, []string{"code"}),
		RequestDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
			Help: "Latency of requests to Kustomer.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "retries_total",
			Help: "Retry decisions, by reason."}, []string{"reason"}),
		PacerWait: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "pacer_wait_seconds_total",
			Help: "Time spent waiting for rate budget, summed over goroutines."}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "requests_in_flight",
			Help: "Requests to Kustomer sent and not yet answered."}),
		Held: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "held_messages",
			Help: "Messages taken from the consumer and not yet acknowledged by this process."}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dead_letters_total",
			Help: "Messages dead-lettered, by class."}, []string{"class"}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_pending_messages",
			Help: "Messages in the work stream not yet delivered to the consumers; exported by the active replica, 0 on standbys."}),
		AckPending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_ack_pending_messages",
			Help: "Messages delivered to the consumers (any replica) and not yet acknowledged; exported by the active replica, 0 on standbys."}),
		AuthBlocked: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "auth_blocked",
			Help: "1 while Kustomer refuses the API key and the pool has stopped taking messages."}),
		KustomerDown: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "breaker_open",
			Help: "1 while the outage breaker is open: requests failed transiently across conversations, a probe confirmed it, and the pool probes until Kustomer answers (or, with kustomer_writes_refused, accepts an update)."}),
		BreakerTrips: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "breaker_trips_total",
			Help: "Outages the breaker announced: Kustomer down for everybody, or refusing updates while it answers reads."}),
		KustomerWritesDown: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "kustomer_writes_refused",
			Help: "1 while Kustomer answers reads but refuses updates across many conversations: the pool pauses (breaker_open is 1 too) and probes with one update at a time."}),
		ProbeReads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "breaker_probe_reads_total",
			Help: "Reads of a conversation the outage breaker sent as probes, by answer: answered (Kustomer is up), unanswered (5xx, timeout)."}, []string{"answer"}),
	}
	m.BudgetUnits = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "budget_units_total",
		Help: "Units of the org rate budget spent: every request to Kustomer (update, bulk submit, bulk read) except those answered 401, 403 or 429. Divide by updates_total{outcome=\"applied\"} for units per update."})
	m.BudgetUnanswered = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "budget_units_unanswered_total",
		Help: "Requests to Kustomer that got no answer (a timeout, a dropped connection, an attempt the HTTP transport made again): each may or may not have spent a unit of the org budget, and budget_units_total does not count them. Kustomer's own count lies between budget_units_total and the sum of both."})
	m.Stranded = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "stranded_found_total",
		Help: "Messages found stranded: kept by the work stream after their consumer delivered them max-deliver times without an outcome. Each is dead-lettered as class stranded (dead_letters_total{class=\"stranded\"})."})
	reg.MustRegister(m.BudgetUnits, m.BudgetUnanswered, m.Stranded)
	m.Coalesced = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "coalesced_messages_total",
		Help: "Messages sent merged into the PUT (or bulk item) of an older queued update of their conversation (--coalesce), beyond the first of each."})
	m.CoalesceSaved = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "coalesce_units_saved_total",
		Help: "Requests, and so units of the org budget, that merged single PUTs spared once applied: one per message merged into another's PUT (--coalesce). Merged bulk items are not counted."})
	reg.MustRegister(m.Coalesced, m.CoalesceSaved)
	m.Bulk = bulk.NewMetrics(reg, ns, m.Retries)
	reg.MustRegister(m.KustomerDown, m.KustomerWritesDown, m.ProbeReads, m.BreakerTrips, m.Updates, m.Requests, m.RequestDuration, m.Retries, m.PacerWait, m.InFlight, m.Held,
		m.DeadLetters, m.Pending, m.AckPending, m.AuthBlocked)
	return m
}

func (m *Metrics) update(outcome string) {
	if m != nil {
		child(&m.outcomes, outcome, func() prometheus.Counter { return m.Updates.WithLabelValues(outcome) }).Inc()
	}
}

func (m *Metrics) request(status int, seconds float64) {
	if m == nil {
		return
	}
	child(&m.codes, status, func() prometheus.Counter {
		code := "error"
		if status != 0 {
			code = strconv.Itoa(status)
		}
		return m.Requests.WithLabelValues(code)
	}).Inc()
	m.RequestDuration.Observe(seconds)
	switch status {
	case 0:
		m.BudgetUnanswered.Inc()
	case 401, 403, 429:
	default:
		m.BudgetUnits.Inc()
	}
}

// unanswered counts n requests that got no answer and were not counted by request: earlier
// attempts the HTTP transport made of a request, or one cut short by the shutdown deadline.
func (m *Metrics) unanswered(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.BudgetUnanswered.Add(float64(n))
}

// child is the counter cached in children under key, resolved by resolve the first time.
func child[K comparable](children *sync.Map, key K, resolve func() prometheus.Counter) prometheus.Counter {
	if c, ok := children.Load(key); ok {
		return c.(prometheus.Counter)
	}
	c, _ := children.LoadOrStore(key, resolve())
	return c.(prometheus.Counter)
}

func (m *Metrics) retry(reason string) {
	if m != nil {
		m.Retries.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) deadLetter(class string) {
	if m != nil {
		m.DeadLetters.WithLabelValues(class).Inc()
	}
}

func (m *Metrics) strandedFound() {
	if m != nil {
		m.Stranded.Inc()
	}
}

func (m *Metrics) pacerWait(seconds float64) {
	if m != nil {
		m.PacerWait.Add(seconds)
	}
}

func (m *Metrics) gauge(g func(*Metrics) prometheus.Gauge, v float64) {
	if m != nil {
		g(m).Set(v)
	}
}

func (m *Metrics) probeRead(answer string) {
	if m != nil {
		m.ProbeReads.WithLabelValues(answer).Inc()
	}
}

func (m *Metrics) breakerTrip() {
	if m != nil {
		m.BreakerTrips.Inc()
	}
}
