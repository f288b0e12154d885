package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// laneMetrics exposes each lane's backlog, throughput and oldest message, from the last
// reading of the lanes (watchLanes), labelled lane="live" or lane="backfill". They describe
// the stream, not this replica: only the active replica exports them (see exports), so that a
// sum over replicas counts each message once.
type laneMetrics struct {
	backlog, waiting, inProgress, oldest, settled *prometheus.Desc
	// active says whether this replica is active now; nil: always. Set before registration,
	// then only read.
	active func() bool

	mu    sync.Mutex // guards read
	read  time.Time
	lanes map[queue.Lane]queue.LaneStatus
}

func newLaneMetrics(reg prometheus.Registerer, active func() bool) *laneMetrics {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("kustomer_worker_lane_"+name, help, []string{"lane"}, nil)
	}
	m := &laneMetrics{
		active:     active,
		backlog:    d("backlog_messages", "Messages of the lane in the work stream: waiting plus in progress."),
		waiting:    d("waiting_messages", "Messages of the lane not yet delivered to any worker."),
		inProgress: d("in_progress_messages", "Messages of the lane delivered and not yet acknowledged (all replicas)."),
		oldest:     d("oldest_message_age_seconds", "Age of the lane's oldest message in the work stream; 0 when the lane is empty."),
		settled:    d("settled_messages_total", "Messages of the lane that left the stream through its consumer (applied or dead-lettered), plus redeliveries, since the consumer was created: its rate is the lane's throughput."),
	}
	reg.MustRegister(m)
	return m
}

// set records a reading.
func (m *laneMetrics) set(at time.Time, live, backfill queue.LaneStatus) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.read, m.lanes = at, map[queue.Lane]queue.LaneStatus{queue.LaneLive: live, queue.LaneBackfill: backfill}
}

func (m *laneMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.backlog, m.waiting, m.inProgress, m.oldest, m.settled} {
		ch <- d
	}
}

func (m *laneMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !exports(m.active, m.lanes[queue.LaneLive], m.lanes[queue.LaneBackfill]) {
		return
	}
	for l, ls := range m.lanes {
		if !ls.ConsumerFound {
			continue
		}
		lane := string(l)
		age := 0.0
		if !ls.Oldest.IsZero() {
			age = max(m.read.Sub(ls.Oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(m.backlog, prometheus.GaugeValue, float64(ls.Backlog), lane)
		ch <- prometheus.MustNewConstMetric(m.waiting, prometheus.GaugeValue, float64(ls.Undelivered), lane)
		ch <- prometheus.MustNewConstMetric(m.inProgress, prometheus.GaugeValue, float64(ls.AckPending), lane)
		ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, age, lane)
		ch <- prometheus.MustNewConstMetric(m.settled, prometheus.CounterValue, float64(ls.Settled()), lane)
	}
}

// exports says whether this replica exports the stream's figures of a reading of the lanes:
// the active replica does, standbys do not, except while no replica holds the pin of either
// lane: every replica exports them then (the same values), so that the backlog waiting for an
// active replica shows.
func exports(active func() bool, live, backfill queue.LaneStatus) bool {
	if active == nil || active() {
		return true
	}
	unpinned := func(ls queue.LaneStatus) bool { return ls.ConsumerFound && ls.Pinned && ls.PinID == "" }
	return unpinned(live) && unpinned(backfill)
}

// laneWatchInterval is how often watchLanes reads the lanes.
const laneWatchInterval = 5 * time.Second

// watchLanes reads both lanes every few seconds into the lane metrics and the pool's
// consumer gauges (the sums of both lanes; 0 on a standby while a replica is active, so that
// sums over replicas count each message once), and warns of a backlog beside bulk mode on
// the active replica, until ctx ends.
func watchLanes(ctx context.Context, js jetstream.JetStream, top queue.Topology, m *worker.Metrics, lm *laneMetrics, warn *backlogBesideBulk) {
	t := time.NewTicker(laneWatchInterval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		live, backfill, err := queue.ReadLanes(rctx, js, top)
		cancel()
		if err == nil {
			lm.set(time.Now(), live, backfill)
			if exports(lm.active, live, backfill) {
				m.Pending.Set(float64(live.Undelivered + backfill.Undelivered))
				m.AckPending.Set(float64(live.AckPending + backfill.AckPending))
				warn.check(live)
			} else {
				m.Pending.Set(0)
				m.AckPending.Set(0)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// liveBacklogBesideBulk is the live lane's backlog, in messages, above which a worker whose bulk
// mode takes the backfill lane says that the live lane's updates go as single PUTs.
const liveBacklogBesideBulk = 1000

// backlogBesideBulk warns, once each time the live lane's backlog grows past
// liveBacklogBesideBulk, when bulk mode takes the backfill lane only: a backfill published on
// the live subject costs a unit per update. Owned by watchLanes' goroutine.
type backlogBesideBulk struct {
	bulkLane string // the worker's Pool.BulkLane
	subject  string // the backfill lane's subject, to name in the warning
	log      *slog.Logger
	warned   bool
}

func (w *backlogBesideBulk) check(live queue.LaneStatus) {
	over := w.bulkLane == string(queue.LaneBackfill) && live.Backlog > liveBacklogBesideBulk
	if over && !w.warned {
		w.log.Warn("a backlog builds on the live lane, which bulk mode does not take: its updates go as single PUTs, a unit each; publish backfills on the backfill subject",
			"live_backlog", live.Backlog, "backfill_subject", w.subject)
	}
	w.warned = over
}
