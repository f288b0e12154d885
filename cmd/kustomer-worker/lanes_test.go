package main

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

func TestLaneMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newLaneMetrics(reg, nil)
	now := time.Now()
	m.set(now,
		queue.LaneStatus{ConsumerFound: true, Backlog: 3, Undelivered: 1, AckPending: 2, Delivered: 9, Oldest: now.Add(-2 * time.Second)},
		queue.LaneStatus{ConsumerFound: true, Backlog: 5000, Undelivered: 4744, AckPending: 256, Delivered: 1256, Oldest: now.Add(-time.Hour)})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			v := mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
			got[mf.GetName()+"/"+mt.GetLabel()[0].GetValue()] = v
		}
	}
	for name, want := range map[string]float64{
		"kustomer_worker_lane_backlog_messages/backfill":           5000,
		"kustomer_worker_lane_backlog_messages/live":               3,
		"kustomer_worker_lane_waiting_messages/backfill":           4744,
		"kustomer_worker_lane_in_progress_messages/live":           2,
		"kustomer_worker_lane_oldest_message_age_seconds/backfill": 3600,
		"kustomer_worker_lane_oldest_message_age_seconds/live":     2,
		"kustomer_worker_lane_settled_messages_total/backfill":     1000,
		"kustomer_worker_lane_settled_messages_total/live":         7,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}
