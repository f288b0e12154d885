package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// budgetLogFlag names a directory for the fake's request log of every budget run, one JSON
// object a line (arrival in Unix nanoseconds, conversation, status, the other client's or
// not), to see where the budget went.
var budgetLogFlag = flag.String("bench.budget-log", "", "a directory to write the fake's request log of every BenchmarkBudget run to")

// budgetCase is one way of meeting the org budget: the worker's own limit as a multiple of
// the budget, and the share another client of the org spends at a steady pace.
type budgetCase struct {
	name  string
	limit float64 // --rate-per-minute over the budget's rate
	share float64 // of the budget, spent by another client
}

var budgetCases = []budgetCase{
	{"alone", 1, 0},
	{"limit_1.25x", 1.25, 0},
	{"limit_5x", 5, 0},
	{"shared_30pct", 1, 0.3},
}

// BenchmarkBudget measures how well the worker uses an org budget: the fake allows 600
// requests per 10-second window (-short: 60 per second), sends the rate-limit headers with the
// reset in whole epoch seconds, and answers after 50 to 150 ms. The worker (--concurrency 16)
// drains a backlog of 3,000 updates (-short: 100) in four cases: alone with --rate-per-minute
// at the budget; alone with it 25 % and 5x above; and at the budget while another client of
// the org spends 30 % of it steadily. In the same repetition the same backlog is drained by a
// fixed limiter, what a generic HTTP pipeline does: 16 senders behind one token bucket at the
// same configured rate, and one shared backoff on 429 (500 ms, doubling to 8 s; scaled with
// the window). The lower bound is updates / (what the budget leaves per second).
//
// Reported per runner (medians, and the worst repetition where a target applies to every
// one; every repetition is logged with -v): elapsed seconds, the share of the budget used
// over the run's whole windows (see usedInWholeWindows: the windows the run joined midway or
// ran out of work in are left out, so that neither runner is charged for starting or
// stopping), the share of requests answered 429, the other client's share refused, and the
// longest gap between two of the runner's requests while the window still had budget. Targets (issue 12): alone >= 99 % used, <= 0.5 % 429, within a point of the fixed
// limiter; limits above the budget >= 97 %, <= 1 % 429; shared >= 95 % of what is left,
// <= 1 % 429, the other client refused <= 3 %; the longest idle gap < 300 ms.
func BenchmarkBudget(b *testing.B) {
	for _, c := range budgetCases {
		b.Run(c.name, func(b *testing.B) { benchBudget(b, c) })
	}
}

// budgetRun is what one drain of the backlog got.
type budgetRun struct {
	elapsed       time.Duration
	used          float64 // % of the budget left by the other client, over the run's whole windows
	windows       float64 // how many windows' time "used" covers
	usedElapsed   float64 // the same over the elapsed time, start and end included
	tooMany       float64 // % of the runner's requests answered 429
	tooManyN      int
	other         float64 // % of the other client's requests answered 429
	otherRequests int
	gap           time.Duration
	requests      int
}

func benchBudget(b *testing.B, c budgetCase) {
	n := pick("bench.budget-updates", budgetUpdatesFlag, 100)
	budget := pick("bench.budget", budgetFlag, 60)
	window := pick("bench.window", windowFlag, time.Second)
	const concurrency = 16
	perMinute := int(c.limit * float64(budget) * float64(time.Minute) / float64(window))
	runners := []struct {
		name  string
		start func(r *rig) func()
	}{
		{"worker", func(r *rig) func() { return r.startPool(perMinute) }},
		{"fixed", func(r *rig) func() { return r.startFixed(concurrency, perMinute, window) }},
	}
	bound := float64(n) / (float64(budget) * (1 - c.share)) * window.Seconds()
	runs := make(map[string][]budgetRun)
	for i := range repetitions(b) {
		for _, rn := range runners {
			run := drainBudget(b, fmt.Sprintf("%s-%s-%d", c.name, rn.name, i+1), n, budget, window, concurrency, c.share, rn.start)
			runs[rn.name] = append(runs[rn.name], run)
			b.Logf("%s %s repetition %d: %.2fs (lower bound %.2fs), %.2f%% of the budget used over %.2f whole windows (%.2f%% over the elapsed time), %d requests, %d answered 429 (%.2f%%), other client refused %.2f%% of %d, longest idle gap with budget %s",
				c.name, rn.name, i+1, run.elapsed.Seconds(), bound, run.used, run.windows, run.usedElapsed, run.requests, run.tooManyN, run.tooMany, run.other, run.otherRequests, run.gap.Round(time.Millisecond))
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(bound, "lower_bound_s")
	for _, rn := range runners {
		rs := runs[rn.name]
		pickF := func(f func(budgetRun) float64) []float64 {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = f(r)
			}
			return xs
		}
		b.ReportMetric(median(pickF(func(r budgetRun) float64 { return r.elapsed.Seconds() })), rn.name+"_elapsed_s")
		b.ReportMetric(median(pickF(func(r budgetRun) float64 { return r.used })), rn.name+"_used_%")
		b.ReportMetric(percentile(pickF(func(r budgetRun) float64 { return r.used }), 0), rn.name+"_used_min_%")
		b.ReportMetric(percentile(pickF(func(r budgetRun) float64 { return r.tooMany }), 100), rn.name+"_429_max_%")
		b.ReportMetric(median(pickF(func(r budgetRun) float64 { return r.tooMany })), rn.name+"_429_%")
		b.ReportMetric(percentile(pickF(func(r budgetRun) float64 { return ms(r.gap) }), 100), rn.name+"_max_gap_ms")
		if c.share > 0 {
			b.ReportMetric(median(pickF(func(r budgetRun) float64 { return r.other })), rn.name+"_other_refused_%")
		}
	}
}

// drainBudget runs one runner through a backlog of n against a fresh NATS server and fake.
func drainBudget(b *testing.B, name string, n, budget int, window time.Duration, concurrency int, share float64, start func(*rig) func()) budgetRun {
	r := newRig(b, kustomertest.Config{
		Budget: budget, Window: window, Latency: 50 * time.Millisecond, LatencyJitter: 100 * time.Millisecond,
		DiscardBodies: true,
	}, concurrency)
	r.backlog(0, n)
	t0 := time.Now()
	var other *otherClient
	if share > 0 {
		other = startOther(r.fake.URL, share*float64(budget)/window.Seconds())
	}
	stop := start(r)
	r.waitDrained(n, time.Duration(10*float64(n)/float64(budget))*window+time.Minute)
	el := time.Since(t0)
	stop()
	var o otherCounts
	if other != nil {
		o = other.stop()
	}
	reqs := r.fake.Requests()
	if *budgetLogFlag != "" {
		writeBudgetLog(b, filepath.Join(*budgetLogFlag, name+".jsonl"), reqs)
	}
	var run budgetRun
	var ok, tooMany int
	for _, q := range reqs {
		if isOther(q.ID) {
			continue
		}
		run.requests++
		switch q.Status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			tooMany++
		}
	}
	available := float64(budget)*el.Seconds()/window.Seconds() - float64(o.ok)
	run.elapsed = el
	run.usedElapsed = 100 * float64(ok) / available
	run.used, run.windows = usedInWholeWindows(reqs, budget, window)
	run.tooMany = 100 * float64(tooMany) / float64(max(run.requests, 1))
	run.tooManyN, run.otherRequests = tooMany, o.requests
	if o.requests > 0 {
		run.other = 100 * float64(o.tooMany) / float64(o.requests)
	}
	run.gap = idleGap(reqs, budget, window)
	return run
}

// usedInWholeWindows is the share of the budget the runner used (in %) over the whole windows
// of its run, and how many windows' time that covers. It replays the fake's windows from its
// request log (a window starts with the first request at or after the end of the one before,
// whoever sends it) and looks at the span from the start of the first window that starts at or
// after the runner's first request to the start of the window of its last request: the
// runner's updates applied in it, over the budget of that span (budget per window length, so
// that time with no window open counts too) less what the other client got in it. The window
// in which the backlog runs out is left out, and so is a window the runner joined midway: in
// them no runner could have used the whole budget. Both runners are measured alike. NaN when
// the run spans no whole window.
func usedInWholeWindows(reqs []kustomertest.Request, budget int, window time.Duration) (used, windows float64) {
	var first, last time.Time
	for _, q := range reqs {
		if strings.HasPrefix(q.Path, "/v1/conversations/") && !isOther(q.ID) {
			if first.IsZero() {
				first = q.Time
			}
			last = q.Time
		}
	}
	var from, to, end time.Time // the span [from, to); end of the window being replayed
	for _, q := range reqs {
		if !strings.HasPrefix(q.Path, "/v1/conversations/") {
			continue
		}
		if end.IsZero() || !q.Time.Before(end) {
			start := q.Time
			end = start.Add(window)
			if from.IsZero() && !start.Before(first) {
				from = start
			}
			if !start.After(last) {
				to = start // the latest window start at or before the last request
			}
		}
	}
	if from.IsZero() || !to.After(from) {
		return math.NaN(), 0
	}
	var mine, theirs int
	for _, q := range reqs {
		if !strings.HasPrefix(q.Path, "/v1/conversations/") || q.Status != http.StatusOK || q.Time.Before(from) || !q.Time.Before(to) {
			continue
		}
		if isOther(q.ID) {
			theirs++
		} else {
			mine++
		}
	}
	windows = float64(to.Sub(from)) / float64(window)
	return 100 * float64(mine) / (float64(budget)*windows - float64(theirs)), windows
}

// writeBudgetLog writes reqs to path, one JSON object a line.
func writeBudgetLog(tb testing.TB, path string, reqs []kustomertest.Request) {
	tb.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, q := range reqs {
		if err := enc.Encode(struct {
			T     int64  `json:"t"`
			ID    string `json:"id"`
			S     int    `json:"status"`
			Other bool   `json:"other"`
		}{q.Time.UnixNano(), q.ID, q.Status, isOther(q.ID)}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// otherBase is where the other client's conversation numbers start.
const otherBase = 1_000_000_000

// isOther reports whether a conversation id is one of the other client's.
func isOther(id string) bool {
	v, err := strconv.ParseUint(id, 16, 64)
	return err == nil && v > otherBase
}

// idleGap is the longest time between two requests of the runner (not the other client)
// during which the fake's window had budget left. It replays the fake's windows: a window
// starts with the first request after the last one ended, and holds budget units.
func idleGap(reqs []kustomertest.Request, budget int, window time.Duration) time.Duration {
	var end, last time.Time
	used := 0
	spent := false // the window was spent when the runner's last request arrived
	var longest time.Duration
	for _, q := range reqs {
		if !strings.HasPrefix(q.Path, "/v1/conversations/") {
			continue
		}
		t := q.Time
		if !isOther(q.ID) && !last.IsZero() {
			from := last
			if spent {
				from = end // the budget came back when the window turned
			}
			if d := t.Sub(from); d > longest {
				longest = d
			}
		}
		if end.IsZero() || !t.Before(end) {
			end, used = t.Add(window), 0
		}
		if q.Status == http.StatusOK {
			used++
		}
		if !isOther(q.ID) {
			last, spent = t, used >= budget
		}
	}
	return longest
}

// startFixed runs what a generic HTTP pipeline does, until the returned function is called:
// c senders share one Messages iterator, one token bucket at perMinute, and one backoff: a
// 429 pauses every sender for a twentieth of the window (500 ms for 10 s), doubling while
// 429s come in a row up to 0.8 of the window, and the sender retries the same update. Other failures are naked. The returned function returns
// once every sender has stopped.
func (r *rig) startFixed(c, perMinute int, window time.Duration) (stop func()) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, _, err := queue.Bind(ctx, r.js, r.top) // pulls in the consumer's priority group
	if err != nil {
		r.tb.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		r.tb.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}, Timeout: 30 * time.Second}
	base := r.fake.URL + "/v1/conversations/"
	lim := rate.NewLimiter(rate.Limit(float64(perMinute)/60), 1)
	rctx, rcancel := context.WithCancel(context.Background())
	var (
		mu          sync.Mutex
		pausedUntil time.Time
		backoff     time.Duration
	)
	waitPause := func() error {
		for {
			mu.Lock()
			d := time.Until(pausedUntil)
			mu.Unlock()
			if d <= 0 {
				return nil
			}
			select {
			case <-rctx.Done():
				return rctx.Err()
			case <-time.After(d):
			}
		}
	}
	var stopped atomic.Bool
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for {
				msg, err := it.Next()
				if err != nil {
					return
				}
				u, ok := parseBare(msg.Data())
				if !ok {
					_ = msg.Term()
					continue
				}
				for {
					if waitPause() != nil || lim.Wait(rctx) != nil {
						_ = msg.Nak()
						return
					}
					status, err := putBare(hc, base, u)
					if err != nil {
						_ = msg.Nak()
						break
					}
					if status == http.StatusTooManyRequests && !stopped.Load() {
						mu.Lock()
						backoff = min(max(2*backoff, window/20), window*8/10)
						pausedUntil = time.Now().Add(backoff)
						mu.Unlock()
						continue
					}
					mu.Lock()
					backoff = 0
					mu.Unlock()
					if status/100 == 2 {
						_ = msg.Ack()
					} else {
						_ = msg.Nak()
					}
					break
				}
			}
		})
	}
	return func() {
		stopped.Store(true)
		it.Stop()
		rcancel()
		wg.Wait()
		hc.CloseIdleConnections()
	}
}

// otherClient is another user of the same org budget: it sends updates straight to the fake
// at a steady pace, each in a goroutine of its own so that latency does not slow the pace.
type otherClient struct {
	done   chan struct{}
	ticker sync.WaitGroup // the pacing goroutine
	sends  sync.WaitGroup // requests in flight

	requests, ok, tooMany atomic.Int64
}

// otherCounts is what the other client's requests got.
type otherCounts struct{ requests, ok, tooMany int }

// startOther starts a client sending perSecond updates a second to the fake at url, to
// conversations of its own, until stop.
func startOther(url string, perSecond float64) *otherClient {
	o := &otherClient{done: make(chan struct{})}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	send := func(k int) {
		req, err := http.NewRequest(http.MethodPut, url+"/v1/conversations/"+convID(otherBase+k), bytes.NewReader([]byte(`{"priority":2}`)))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.Header.Set("Content-Type", "application/json")
		o.requests.Add(1)
		resp, err := hc.Do(req)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			o.ok.Add(1)
		case http.StatusTooManyRequests:
			o.tooMany.Add(1)
		}
	}
	o.ticker.Go(func() {
		defer hc.CloseIdleConnections()
		defer o.sends.Wait()
		t := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
		defer t.Stop()
		for k := 0; ; k++ {
			o.sends.Go(func() { send(k) })
			select {
			case <-o.done:
				return
			case <-t.C:
			}
		}
	})
	return o
}

// stop stops sending, waits for the requests in flight, and returns the counts.
func (o *otherClient) stop() otherCounts {
	close(o.done)
	o.ticker.Wait()
	return otherCounts{requests: int(o.requests.Load()), ok: int(o.ok.Load()), tooMany: int(o.tooMany.Load())}
}

// The budget figures come from usedInWholeWindows: it must judge only the whole windows of a
// run, and charge time with no window open.
func TestUsedInWholeWindows(t *testing.T) {
	base := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	req := func(s float64, other bool, status int) kustomertest.Request {
		id := convID(1)
		if other {
			id = convID(otherBase + 1)
		}
		return kustomertest.Request{Path: "/v1/conversations/" + id, ID: id, Time: base.Add(time.Duration(s * float64(time.Second))), Status: status}
	}
	// n requests of the runner evenly over [from, from+1s), all admitted.
	second := func(from float64, n int) []kustomertest.Request {
		var rs []kustomertest.Request
		for i := range n {
			rs = append(rs, req(from+float64(i)/float64(n), false, http.StatusOK))
		}
		return rs
	}
	t.Run("alone: two whole windows, the last one left out", func(t *testing.T) {
		reqs := slices.Concat(second(0, 10), second(1, 8), second(2, 3))
		used, windows := usedInWholeWindows(reqs, 10, time.Second)
		if windows != 2 || used != 90 {
			t.Errorf("used %.2f%% over %.2f windows; want 18 of 20 = 90%% over 2", used, windows)
		}
	})
	t.Run("time with no window open counts", func(t *testing.T) {
		reqs := slices.Concat(second(0, 10), second(1.5, 10), second(2.5, 1))
		used, windows := usedInWholeWindows(reqs, 10, time.Second)
		if windows != 2.5 || used != 80 {
			t.Errorf("used %.2f%% over %.2f windows; want 20 of 25 = 80%% over 2.5", used, windows)
		}
	})
	t.Run("shared: the window joined midway is left out, and what the other client got is not available", func(t *testing.T) {
		reqs := []kustomertest.Request{req(0, true, http.StatusOK), req(0.5, false, http.StatusOK)}
		for i := range 10 {
			reqs = append(reqs, req(1+float64(i)/10, i%2 == 0, http.StatusOK))
		}
		reqs = append(reqs, req(1.99, true, http.StatusTooManyRequests), req(2, false, http.StatusOK))
		used, windows := usedInWholeWindows(reqs, 10, time.Second)
		if windows != 1 || used != 100 {
			t.Errorf("used %.2f%% over %.2f windows; want 5 of the 5 left = 100%% over 1", used, windows)
		}
	})
	t.Run("a run within one window has no whole window", func(t *testing.T) {
		if used, _ := usedInWholeWindows(second(0, 5), 10, time.Second); !math.IsNaN(used) {
			t.Errorf("used %.2f%%; want NaN", used)
		}
	})
}
