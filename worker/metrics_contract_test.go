package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// The alerting rules and the dashboard in deploy/ may only use metrics that a running worker
// really serves: a renamed metric would otherwise leave an alert that never fires.

const (
	rulesFile     = "../deploy/prometheus/rules.yml"
	dashboardFile = "../deploy/grafana/dashboard.json"
)

// fromPrometheus are the series Prometheus itself adds for every scrape target.
var fromPrometheus = []string{"up"}

// scrapeRunningPool runs a pool with metrics between embedded NATS and the fake Kustomer,
// feeds it an update that applies, one retried after a 503, one rejected with 404 and one
// invalid, so every labelled family has a series, and returns what its /metrics serves.
func scrapeRunningPool(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	f := setup(t, options{noStart: true})
	reg := prometheus.NewRegistry()
	metrics := worker.NewMetrics(reg)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, attempts, err := queue.Bind(ctx, f.js, f.top)
	if err != nil {
		t.Fatal(err)
	}
	pool := &worker.Pool{
		Consumer:    cons,
		Client:      f.client,
		DeadLetters: &queue.DeadLetterPublisher{JS: f.js, Subject: f.top.DLQSubject},
		Attempts:    attempts,
		Pacer:       worker.NewPacer(-1),
		Metrics:     metrics,
		Log:         slog.New(slog.DiscardHandler),
		Config:      worker.Config{MaxAckPending: f.top.MaxAckPending, FetchWait: time.Second, RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond},
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(rctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	f.fake.Script(id(1), kustomertest.Answer{Status: 503})
	f.fake.Reject(id(2), 404)
	f.publishUpdate(0, `{"status":"done"}`)
	f.publishUpdate(1, `{"status":"done"}`)
	f.publishUpdate(2, `{"status":"done"}`)
	f.publishUpdate(3, `{"status":"closed"}`)
	f.waitDrained(30 * time.Second)
	if n := len(f.deadLetters()); n != 2 {
		t.Fatalf("%d dead letters, want 2 (rejected, invalid)", n)
	}

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// exposed reports whether name is a series of a served family (a histogram serves
// name_bucket, name_sum and name_count), and returns that family.
func exposed(fams map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, bool) {
	if fam, ok := fams[name]; ok {
		return fam, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if fam, found := fams[base]; ok && found && (fam.GetType() == dto.MetricType_HISTOGRAM || fam.GetType() == dto.MetricType_SUMMARY) {
			return fam, true
		}
	}
	return nil, false
}

func hasLabel(fam *dto.MetricFamily, label string) bool {
	for _, m := range fam.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				return true
			}
		}
	}
	return label == "le" && fam.GetType() == dto.MetricType_HISTOGRAM
}

// ruleFile is the part of a Prometheus rule file this test reads.
type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// queries returns every PromQL expression of the rules and the dashboard, each with where
// it comes from, and the names the rules record.
func queries(t *testing.T) (exprs map[string]string, records []string) {
	t.Helper()
	exprs = map[string]string{}
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs[rulesFile+": "+r.Record+r.Alert] = r.Expr
			if r.Record != "" {
				records = append(records, r.Record)
			}
		}
	}
	data, err = os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if s, ok := e.(string); ok && (k == "expr" || k == "definition") {
					exprs[fmt.Sprintf("%s: %s.%s", dashboardFile, path, k)] = s
				}
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		}
	}
	walk("", dash)
	if len(exprs) < 10 {
		t.Fatalf("found only %d queries in the rules and the dashboard", len(exprs))
	}
	return exprs, records
}

func TestRulesAndDashboardUseOnlyExposedMetrics(t *testing.T) {
	fams := scrapeRunningPool(t)
	exprs, records := queries(t)
	keys := make([]string, 0, len(exprs))
	for k := range exprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	used := map[string]bool{}
	for _, where := range keys {
		refs, err := metricRefs(exprs[where])
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		for _, ref := range refs {
			used[ref.name] = true
			switch {
			case strings.Contains(ref.name, ":"):
				if !slices.Contains(records, ref.name) {
					t.Errorf("%s: %s is not recorded by %s", where, ref.name, rulesFile)
				}
			case slices.Contains(fromPrometheus, ref.name):
			default:
				fam, ok := exposed(fams, ref.name)
				if !ok {
					t.Errorf("%s: metric %s is not served by the worker", where, ref.name)
					continue
				}
				for _, l := range ref.labels {
					if l != "job" && l != "instance" && !hasLabel(fam, l) {
						t.Errorf("%s: metric %s has no label %q", where, ref.name, l)
					}
				}
			}
		}
	}
	for _, want := range []string{"kustomer_worker_consumer_pending_messages", "kustomer_worker_dead_letters_total", "kustomer_worker_auth_blocked", "up"} {
		if !used[want] {
			t.Errorf("no rule or panel reads %s", want)
		}
	}
	t.Logf("%d queries read %d metrics, every one served", len(exprs), len(used))
}

// metricRef is one metric a query reads, with the labels its matchers name.
type metricRef struct {
	name   string
	labels []string
}

// aggregations and keywords are PromQL words that are not metric names.
var (
	aggregations = []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
	labelLists   = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	keywords     = []string{"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "Inf", "NaN"}
)

// labelValues matches Grafana's template query label_values(metric, label).
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// metricRefs lexes a PromQL expression (with Grafana's $variables) far enough to find the
// metric names it reads: identifiers that are not functions, aggregations, keywords, or
// label names in matchers and in by/on lists.
func metricRefs(expr string) ([]metricRef, error) {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		expr = m[1] // Grafana's label_values(metric, label) reads metric
	}
	var refs []metricRef
	i := 0
	skipSpace := func() {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
	}
	// until moves i past the closing delimiter of a bracket opened at i, stepping over strings.
	until := func(close byte) (string, error) {
		start := i
		for i++; i < len(expr); i++ {
			switch c := expr[i]; {
			case c == '"' || c == '\'' || c == '`':
				end := i + 1
				for end < len(expr) && expr[end] != c {
					if expr[end] == '\\' {
						end++
					}
					end++
				}
				i = end
			case c == close:
				i++
				return expr[start+1 : i-1], nil
			}
		}
		return "", fmt.Errorf("unclosed %q at byte %d", expr[start], start)
	}
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
	}
	for skipSpace(); i < len(expr); skipSpace() {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			if _, err := until(c); err != nil {
				return nil, err
			}
		case c == '$': // a Grafana variable: $job, ${job}, $__rate_interval
			i++
			if i < len(expr) && expr[i] == '{' {
				if _, err := until('}'); err != nil {
					return nil, err
				}
			}
			for i < len(expr) && isIdent(expr[i], false) {
				i++
			}
		case c == '[':
			if _, err := until(']'); err != nil {
				return nil, err
			}
		case c == '{': // matchers without a metric name
			if _, err := until('}'); err != nil {
				return nil, err
			}
		case '0' <= c && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.') {
				i++
			}
		case isIdent(c, true):
			start := i
			for i < len(expr) && isIdent(expr[i], false) {
				i++
			}
			word := expr[start:i]
			skipSpace()
			next := byte(0)
			if i < len(expr) {
				next = expr[i]
			}
			switch {
			case slices.Contains(labelLists, word):
				if next == '(' {
					if _, err := until(')'); err != nil {
						return nil, err
					}
				}
			case slices.Contains(aggregations, word), slices.Contains(keywords, word):
			case next == '(': // a function call
			default:
				ref := metricRef{name: word}
				if next == '{' {
					matchers, err := until('}')
					if err != nil {
						return nil, err
					}
					for _, m := range strings.Split(matchers, ",") {
						if name, _, ok := strings.Cut(m, "="); ok {
							ref.labels = append(ref.labels, strings.Trim(strings.TrimSpace(name), "!~"))
						}
					}
				}
				refs = append(refs, ref)
			}
		default:
			i++
		}
	}
	return refs, nil
}

func TestMetricRefsFindsMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (job, class) (increase(kustomer_worker_dead_letters_total{class!="x"}[15m])) > 0`: "kustomer_worker_dead_letters_total[class]",
		`a:b:c / on (job) group_left (x) up{job=~"$job"} offset 5m`:                               "a:b:c[] up[job]",
		`histogram_quantile(0.99, sum by (le) (rate(m_bucket{job=~"${job}"}[$__rate_interval])))`: "m_bucket[job]",
		`max(x) and deriv(y[15m:1m]) > 1e3 or vector(0)`:                                          "x[] y[]",
		`label_values(kustomer_worker_auth_blocked, job)`:                                         "kustomer_worker_auth_blocked[]",
	} {
		refs, err := metricRefs(expr)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range refs {
			got = append(got, r.name+"["+strings.Join(r.labels, ",")+"]")
		}
		if strings.Join(got, " ") != want {
			t.Errorf("metricRefs(%s) = %v, want %s", expr, got, want)
		}
	}
}

// The metrics of bulk mode (issue 15) that rules and panels may read: each is served, with its
// labels, by a pool in bulk mode that had a job refused, one applied, and an item failed.
func TestBulkMetricsAreServed(t *testing.T) {
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
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, fam := range got {
		fams[fam.GetName()] = fam
	}
	for name, labels := range map[string][]string{
		"kustomer_worker_bulk_jobs_submitted_total": nil,
		"kustomer_worker_bulk_jobs_completed_total": nil,
		"kustomer_worker_bulk_jobs_failed_total":    {"reason"},
		"kustomer_worker_bulk_items_total":          {"outcome"},
		"kustomer_worker_budget_units_total":        nil,
		"kustomer_worker_bulk_job_duration_seconds": {"le"},
		"kustomer_worker_updates_total":             {"outcome"},
	} {
		fam, ok := exposed(fams, name)
		if !ok {
			t.Errorf("metric %s is not served", name)
			continue
		}
		for _, l := range labels {
			if !hasLabel(fam, l) {
				t.Errorf("metric %s has no label %q", name, l)
			}
		}
	}
	value := func(name string) float64 {
		var sum float64
		for _, m := range fams[name].GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum
	}
	st := f.fake.Stats()
	if units := value("kustomer_worker_budget_units_total"); int(units) != st.Units {
		t.Errorf("budget_units_total = %v; the fake counted %d units", units, st.Units)
	}
}
