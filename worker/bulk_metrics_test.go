package worker_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// The metrics of bulk mode (issue 15) that rules and panels may read: each is served with its
// labels (the labelled ones from the start, at zero, for every reason and outcome), and
// budget_units_total counts what the fake counted as spent.
func TestBulkMetricsAreServed(t *testing.T) {
	t.Run("before any traffic, every family and label is served", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		worker.NewMetrics(reg)
		checkBulkFamilies(t, reg)
	})

	t.Run("a pool in bulk mode counts jobs, items and units", func(t *testing.T) {
		f := bulkSetup(t, kustomertest.Config{})
		reg := prometheus.NewRegistry()
		metrics := worker.NewMetrics(reg)
		o := f.bulkOptions(10, time.Minute)
		before := o.before
		o.before = func(p *worker.Pool) { before(p); p.Metrics = metrics }
		f.fake.ScriptBulkSubmit(kustomertest.Status(400))
		f.fake.FailBulk(id(13), "injected")
		for c := range 10 {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.start(o)
		f.waitDrained(30 * time.Second)
		for c := 10; c < 20; c++ {
			f.publishUpdate(c, `{"name":"u-0"}`)
		}
		f.waitDrained(30 * time.Second)
		fams := checkBulkFamilies(t, reg)
		sum := func(name string, label ...string) float64 {
			var n float64
			for _, m := range fams[name].GetMetric() {
				if len(label) == 0 || m.GetLabel()[0].GetValue() == label[0] {
					n += m.GetCounter().GetValue()
				}
			}
			return n
		}
		st := f.fake.Stats()
		for _, c := range []struct {
			what      string
			got, want float64
		}{
			{"budget units", sum("kustomer_worker_budget_units_total"), float64(st.Units)},
			{"jobs submitted", sum("kustomer_worker_bulk_jobs_submitted_total"), 1},
			{"jobs completed", sum("kustomer_worker_bulk_jobs_completed_total"), 1},
			{"jobs refused", sum("kustomer_worker_bulk_jobs_failed_total", "rejected"), 1},
			{"items succeeded", sum("kustomer_worker_bulk_items_total", "succeeded"), 9},
			{"items failed", sum("kustomer_worker_bulk_items_total", "failed"), 1},
			{"items sent single after a refused job", sum("kustomer_worker_bulk_items_total", "single"), 10},
			{"updates applied", sum("kustomer_worker_updates_total", "applied"), 20},
		} {
			if c.got != c.want {
				t.Errorf("%s: %v; want %v", c.what, c.got, c.want)
			}
		}
	})
}

// checkBulkFamilies gathers reg and checks that every bulk family is served with its labels.
func checkBulkFamilies(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, fam := range got {
		fams[fam.GetName()] = fam
	}
	for name, label := range map[string]string{
		"kustomer_worker_bulk_jobs_submitted_total": "",
		"kustomer_worker_bulk_jobs_completed_total": "",
		"kustomer_worker_bulk_jobs_failed_total":    "reason",
		"kustomer_worker_bulk_items_total":          "outcome",
		"kustomer_worker_budget_units_total":        "",
		"kustomer_worker_bulk_job_duration_seconds": "",
	} {
		fam, ok := fams[name]
		if !ok || len(fam.GetMetric()) == 0 {
			t.Errorf("metric %s is not served", name)
			continue
		}
		if label != "" && (len(fam.GetMetric()[0].GetLabel()) == 0 || fam.GetMetric()[0].GetLabel()[0].GetName() != label) {
			t.Errorf("metric %s has no label %q", name, label)
		}
	}
	// Every reason and outcome the README lists is served from the start, at zero.
	for name, values := range map[string][]string{
		"kustomer_worker_bulk_jobs_failed_total": {"rejected", "auth", "deadline", "read_denied", "unknown", "invalid", "store", "error", "panic"},
		"kustomer_worker_bulk_items_total":       {"succeeded", "failed", "single", "few"},
	} {
		served := map[string]bool{}
		for _, m := range fams[name].GetMetric() {
			if len(m.GetLabel()) > 0 {
				served[m.GetLabel()[0].GetValue()] = true
			}
		}
		for _, v := range values {
			if !served[v] {
				t.Errorf("metric %s is not served with %q", name, v)
			}
		}
	}
	return fams
}
