package main

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
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

// The lane and consumer gauges describe the stream: with an active replica and a standby,
// only the active one exports the lanes, and the standby's consumer gauges are 0, so that a
// sum over the replicas counts each message once.
func TestStreamGaugesFromTheActiveReplicaOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	env := map[string]string{"KUSTOMER_API_KEY": "test-key"}
	args := []string{"--nats-url", b.url, "--kustomer-url", fake.URL, "--rate-per-minute", "0"}
	first := startDaemon(t, env, args...)
	b.publishUpdates(t, 1) // the first message pins a replica
	testwait.Until(t, "the first replica to be active", 60*time.Second, func() bool { return first.gauge("kustomer_worker_active") == 1 })
	second := startDaemon(t, env, args...)
	testwait.Until(t, "the second replica to serve its role", 60*time.Second, func() bool { return second.gauge("kustomer_worker_active") == 0 })

	testwait.Until(t, "the active replica to export both lanes", 60*time.Second, func() bool {
		return len(scrape(t, first.url("/metrics"))["kustomer_worker_lane_backlog_messages"].GetMetric()) == 2
	})
	fams := scrape(t, second.url("/metrics"))
	if second.gauge("kustomer_worker_active") != 0 {
		t.Skip("the replicas swapped roles during the test; nothing to compare")
	}
	for _, name := range []string{"kustomer_worker_lane_backlog_messages", "kustomer_worker_lane_oldest_message_age_seconds", "kustomer_worker_lane_settled_messages_total"} {
		if n := len(fams[name].GetMetric()); n != 0 {
			t.Errorf("the standby exports %d series of %s; want none", n, name)
		}
	}
	for _, name := range []string{"kustomer_worker_consumer_pending_messages", "kustomer_worker_consumer_ack_pending_messages"} {
		if v := second.gauge(name); v != 0 {
			t.Errorf("the standby's %s = %v; want 0", name, v)
		}
	}
	if fams["kustomer_worker_build_info"] == nil {
		t.Error("the standby serves no kustomer_worker_build_info")
	}
	// The second replica started while the first held the pin: it says it is a standby.
	testwait.Until(t, "the standby to say so", 10*time.Second, func() bool {
		return strings.Contains(second.logs.String(), `"role: standby" role=standby reason="another replica holds the pin"`)
	})
}

func TestExportsStreamFigures(t *testing.T) {
	t.Parallel()
	pinned := queue.LaneStatus{ConsumerFound: true, Pinned: true, PinID: "p1"}
	unpinned := queue.LaneStatus{ConsumerFound: true, Pinned: true}
	yes, no := func() bool { return true }, func() bool { return false }
	cases := []struct {
		name           string
		active         func() bool
		live, backfill queue.LaneStatus
		want           bool
	}{
		{"the active replica", yes, pinned, unpinned, true},
		{"a standby while another replica holds the live pin", no, pinned, unpinned, false},
		{"a standby while another replica holds the backfill pin", no, unpinned, pinned, false},
		{"every replica while none holds a pin", no, unpinned, unpinned, true},
		{"a standby before any consumer exists", no, queue.LaneStatus{}, queue.LaneStatus{}, false},
		{"without a role (tests)", nil, unpinned, unpinned, true},
	}
	for _, c := range cases {
		if got := exports(c.active, c.live, c.backfill); got != c.want {
			t.Errorf("%s: exports = %v; want %v", c.name, got, c.want)
		}
	}
}
