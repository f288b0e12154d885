package worker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// budget_units_total counts the requests that spent a unit as Kustomer counts them (every
// answered request but 401, 403 and 429); a request that got no answer may or may not have
// spent one, and is counted apart. So what the fake counted lies between the two, in every
// case, bulk and single.
func TestBudgetUnitsAsKustomerCountsThem(t *testing.T) {
	faults := []struct {
		name string
		fake kustomertest.Config
	}{
		{"answers", kustomertest.Config{}},
		{"dropped connections", kustomertest.Config{DropRate: 0.2, RandSeed: 7}},
		{"answers later than the client waits", kustomertest.Config{SlowRate: 0.2, SlowDelay: 3 * time.Second, RandSeed: 7}},
		{"5xx and dropped connections", kustomertest.Config{FaultRate: 0.1, FaultStatuses: []int{500, 503}, DropRate: 0.1, RandSeed: 7}},
	}
	for _, bulkMode := range []bool{false, true} {
		for _, fc := range faults {
			t.Run(fmt.Sprintf("bulk %t, %s", bulkMode, fc.name), func(t *testing.T) {
				f := bulkSetup(t, fc.fake)
				reg := prometheus.NewRegistry()
				metrics := worker.NewMetrics(reg)
				o := options{recover: true, cfg: worker.Config{Concurrency: 4, MaxAttempts: 50}}
				if bulkMode {
					o = f.bulkOptions(10, time.Minute)
					o.cfg.MaxAttempts = 50
				}
				before := o.before
				o.before = func(p *worker.Pool) {
					if before != nil {
						before(p)
					}
					p.Metrics = metrics
				}
				const convs = 30
				for c := range convs {
					f.publishUpdate(c, `{"name":"u-0"}`)
				}
				f.start(o)
				f.waitDrained(60 * time.Second)
				units, unanswered := testutil.ToFloat64(metrics.BudgetUnits), testutil.ToFloat64(metrics.BudgetUnanswered)
				// A request whose answer never came may still finish at the fake after the pool
				// stopped waiting for it (and only then counts there).
				var got float64
				if !testwait.Within(10*time.Second, func() bool {
					got = float64(f.fake.Stats().Units)
					return got >= units && got <= units+unanswered
				}) {
					t.Errorf("the fake counted %v units; want from budget_units_total %v to that plus the %v requests unanswered", got, units, unanswered)
				}
				t.Logf("fake %v, metric %v, unanswered %v", got, units, unanswered)
			})
		}
	}
}
