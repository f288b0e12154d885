package bench

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// BenchmarkBudget measures how well the worker uses an org budget it has to itself: the fake
// allows 600 requests per 10-second window (-short: 60 per second), sends the rate-limit
// headers, and answers after 50 to 150 ms; the worker runs with --rate-per-minute at the
// budget (3600) and --concurrency 16 through a backlog of 3,000 updates (-short: 100).
// Reported: the elapsed time against the lower bound updates/budget, the share of the budget
// used (updates applied / budget available over the elapsed time) and the share of the
// worker's requests answered 429. Targets: 97 % used or better, at most 1 % answered 429.
func BenchmarkBudget(b *testing.B) { benchBudget(b, 0) }

// BenchmarkSharedBudget is BenchmarkBudget while another client of the same org spends 30 % of
// the budget at a steady pace. "Used" is then the worker's applied updates over what the
// other client left of the budget during the elapsed time. Targets: 90 % of what remains used
// or better, at most 2 % answered 429.
func BenchmarkSharedBudget(b *testing.B) { benchBudget(b, 0.3) }

func benchBudget(b *testing.B, share float64) {
	n := pick("bench.budget-updates", budgetUpdatesFlag, 100)
	budget := pick("bench.budget", budgetFlag, 60)
	window := pick("bench.window", windowFlag, time.Second)
	const concurrency = 16
	perMinute := int(float64(budget) * float64(time.Minute) / float64(window))
	var used, tooMany, otherTooMany, elapsed []float64
	for i := range repetitions(b) {
		r := newRig(b, kustomertest.Config{
			Budget: budget, Window: window, Latency: 50 * time.Millisecond, LatencyJitter: 100 * time.Millisecond,
			DisableLog: true,
		}, concurrency)
		r.backlog(0, n)
		t0 := time.Now()
		var other *otherClient
		if share > 0 {
			other = startOther(r.fake.URL, share*float64(budget)/window.Seconds())
		}
		stop := r.startPool(perMinute)
		r.waitDrained(n, time.Duration(10*float64(n)/float64(budget))*window+time.Minute)
		el := time.Since(t0)
		stop()
		var o otherCounts
		if other != nil {
			o = other.stop()
		}
		st := r.fake.Stats()
		workerOK := st.ByStatus[http.StatusOK] - o.ok
		worker429 := st.ByStatus[http.StatusTooManyRequests] - o.tooMany
		workerRequests := st.Requests - o.requests
		available := float64(budget)*el.Seconds()/window.Seconds() - float64(o.ok)
		used = append(used, 100*float64(workerOK)/available)
		tooMany = append(tooMany, 100*float64(worker429)/float64(workerRequests))
		elapsed = append(elapsed, el.Seconds())
		if other != nil {
			otherTooMany = append(otherTooMany, 100*float64(o.tooMany)/float64(o.requests))
		}
		// The fake's windows start at the first request, about t0; x-ratelimit-reset, in whole
		// epoch seconds, rounds each window's end up by this much.
		end := t0.Add(window)
		rounding := end.Truncate(time.Second).Add(time.Second).Sub(end)
		b.Logf("repetition %d: %d updates in %.2fs; worker %d requests, %d answered 200, %d answered 429; other client %d requests, %d answered 200, %d answered 429; reset rounded up by about %.2fs",
			i+1, n, el.Seconds(), workerRequests, workerOK, worker429, o.requests, o.ok, o.tooMany, rounding.Seconds())
	}
	bound := float64(n) / (float64(budget) * (1 - share)) * window.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(elapsed), "elapsed_s")
	b.ReportMetric(bound, "lower_bound_s")
	b.ReportMetric(median(used), "budget_used_%")
	b.ReportMetric(median(tooMany), "429_%")
	if share > 0 {
		b.ReportMetric(median(otherTooMany), "other_client_429_%")
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
		req, err := http.NewRequest(http.MethodPut, url+"/v1/conversations/"+convID(1_000_000_000+k), bytes.NewReader([]byte(`{"priority":2}`)))
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
