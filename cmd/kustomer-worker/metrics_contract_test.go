package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// The alerting rules and the dashboard in deploy/ may only use metrics that the daemon really
// serves: a renamed metric would otherwise leave an alert that never fires. The daemon's
// /metrics joins the pool's metrics (worker.NewMetrics) with those the command registers
// itself (lanes, role, log flood), so the test scrapes the built binary, not a pool.
//
// To cover a new family of metrics (the bulk mode's kustomer_worker_bulk_*, say): turn the
// feature on in contractArgs if it has a flag, make contractTraffic produce a series of each
// labelled metric (an unlabelled counter, gauge or histogram is served from the start), add
// the metrics alerts rest on to contractMetrics, then use them in the rules and the dashboard.

const (
	rulesFile     = "../../deploy/prometheus/rules.yml"
	dashboardFile = "../../deploy/grafana/dashboard.json"
)

// fromPrometheus are the series Prometheus itself adds for every scrape target.
var fromPrometheus = []string{"up"}

// contractMetrics are served metrics that the rules or the dashboard must read: the ones an
// alert of the issue rests on, so that a rule deleted by mistake fails here too.
var contractMetrics = []string{
	"kustomer_worker_lane_backlog_messages",           // backlog growing, not draining (per lane)
	"kustomer_worker_lane_settled_messages_total",     // not draining
	"kustomer_worker_active",                          // no active replica
	"kustomer_worker_dead_letters_total",              // dead letters rising
	"kustomer_worker_auth_blocked",                    // API key refused, no replica ready
	"kustomer_worker_breaker_open",                    // Kustomer unavailable (breaker)
	"kustomer_worker_requests_total",                  // Kustomer failing
	"up",                                              // no replica ready
	"kustomer_worker_bulk_jobs_failed_total",          // bulk reads denied, bulk jobs failing
	"kustomer_worker_bulk_jobs_submitted_total",       // bulk jobs failing
	"kustomer_worker_budget_units_total",              // dashboard: units per update applied
	"kustomer_worker_budget_left",                     // dashboard: org budget
	"kustomer_worker_budget_others_rate",              // dashboard: org budget
	"kustomer_worker_budget_own_share",                // dashboard: org budget
	"kustomer_worker_lane_oldest_message_age_seconds", // live lane's oldest message
	"kustomer_worker_build_info",                      // the workers' targets, whatever the job
	"kustomer_worker_coalesced_messages_total",        // dashboard: merged updates (--coalesce)
	"kustomer_worker_coalesce_units_saved_total",      // dashboard: merged updates (--coalesce)
}

// contractArgs are the flags of the daemon scraped, besides where NATS and Kustomer are: add
// those that turn on a feature whose metrics the rules or the dashboard read.
// --coalesce: its counters are served, the dashboard reads them.
// --bulk: bulk mode's families (kustomer_worker_bulk_*, budget_units_total) are served with
// every reason and outcome from the start; contractTraffic's few updates go as single PUTs.
var contractArgs = []string{"--rate-per-minute", "0", "--ack-wait", "2s", "--bulk", "--coalesce", "live,backfill"}

// contractTraffic feeds the daemon what gives every labelled family a series: on the live
// lane an update that applies, one retried after a 503, one rejected with 404 and one
// invalid (two dead letters), and one update on the backfill lane.
func contractTraffic(t *testing.T, b *broker, fake *kustomertest.Server) {
	t.Helper()
	fake.Script(fmt.Sprintf("%024x", 2), kustomertest.Answer{Status: 503})
	fake.Reject(fmt.Sprintf("%024x", 3), 404)
	b.publishUpdates(t, 3) // ids 1, 2, 3
	for subject, msg := range map[string]string{
		"kustomer.conversations.update." + fmt.Sprintf("%024x", 4):   `{"id":"` + fmt.Sprintf("%024x", 4) + `","body":{"status":"closed"}}`,
		"kustomer.conversations.backfill." + fmt.Sprintf("%024x", 5): `{"id":"` + fmt.Sprintf("%024x", 5) + `","body":{"status":"done"}}`,
	} {
		if _, err := b.js.Publish(t.Context(), subject, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
}

// scrapeDaemon runs the built binary against embedded NATS and the fake, feeds it
// contractTraffic, waits until the work stream is empty and the lanes were read since,
// and returns what its /metrics serves.
func scrapeDaemon(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	contractTraffic(t, b, fake)
	args := append([]string{"--nats-url", b.url, "--kustomer-url", fake.URL}, contractArgs...)
	d := startDaemon(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, args...)
	testwait.Until(t, "the work stream to empty", 60*time.Second, func() bool {
		return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0
	})
	if n := queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ"); n != 2 {
		t.Fatalf("%d dead letters, want 2 (rejected, invalid)", n)
	}
	var fams map[string]*dto.MetricFamily
	// The lanes are read every few seconds: wait for a reading of both lanes after the drain.
	testwait.Until(t, "/metrics to show both lanes drained", 30*time.Second, func() bool {
		fams = scrape(t, d.url("/metrics"))
		backlog := fams["kustomer_worker_lane_backlog_messages"]
		if len(backlog.GetMetric()) != 2 {
			return false
		}
		for _, m := range backlog.GetMetric() {
			if m.GetGauge().GetValue() != 0 {
				return false
			}
		}
		return true
	})
	return fams
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
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
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	fams := scrapeDaemon(t)
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
					t.Errorf("%s: metric %s is not served by kustomer-worker run", where, ref.name)
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
	for _, want := range contractMetrics {
		if !used[want] {
			t.Errorf("no rule or panel reads %s", want)
		}
	}
	t.Logf("%d queries read %d metrics, every one served", len(exprs), len(used))

	// Every family the daemon serves is in the reference, by its full name.
	doc, err := os.ReadFile("../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range fams {
		if strings.HasPrefix(name, "kustomer_worker_") && !strings.Contains(string(doc), "`"+name) {
			t.Errorf("docs/METRICS.md does not document %s", name)
		}
	}
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
