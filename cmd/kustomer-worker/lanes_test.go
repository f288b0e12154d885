package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

func TestLaneConsumer(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	ctx := context.Background()
	lanes, _, err := queue.BindLanes(ctx, r.js, r.top)
	if err != nil {
		t.Fatal(err)
	}
	c := &laneConsumer{lanes: lanes}
	publish := func(l queue.Lane, n int) {
		for i := range n {
			if _, err := r.js.Publish(ctx, r.top.ConversationSubject(l, convID(i)), []byte("{}")); err != nil {
				t.Fatal(err)
			}
		}
	}
	fetchLanes := func(n int) []string {
		b, err := c.Fetch(n, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for m := range b.Messages() {
			l, _ := r.top.LaneOf(m.Subject())
			out = append(out, string(l))
		}
		return out
	}

	t.Run("a pull takes what the live lane has waiting first, then backfill", func(t *testing.T) {
		publish(queue.LaneBackfill, 3)
		publish(queue.LaneLive, 2)
		if got := fetchLanes(3); !slices.Equal(got, []string{"live", "live", "backfill"}) {
			t.Errorf("first pull: %v", got)
		}
		if got := fetchLanes(5); !slices.Equal(got, []string{"backfill", "backfill"}) {
			t.Errorf("second pull: %v", got)
		}
	})

	t.Run("the acknowledgement floor holds for both lanes", func(t *testing.T) {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		live, _ := lanes.Live.Info(ctx)
		back, _ := lanes.Backfill.Info(ctx)
		if want := min(live.AckFloor.Stream, back.AckFloor.Stream); info.AckFloor.Stream != want {
			t.Errorf("floor %d with both lanes holding messages, want the lower, %d", info.AckFloor.Stream, want)
		}
		if info.Config.AckWait != r.top.AckWait || c.CachedInfo() == nil {
			t.Errorf("settings: %+v", info.Config)
		}
	})
}

func TestLaneMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newLaneMetrics(reg)
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
