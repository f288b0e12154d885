package worker

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// passage is one request's way to Kustomer, a single PUT or a bulk submit or read alike: a
// ticket from the auth gate and one from the outage breaker, a turn of the budget (enter); the
// request, counted in flight and in the metrics, its rate-limit reading given to the budget
// (send); what its answer taught told to both gates (report). done hands the tickets back:
// whoever makes a passage defers done at once, so that on every path, a panic included, a
// probe is answered or given back and a closed gate is never left waiting for it.
type passage struct {
	p         *Pool
	key, down *gate.Ticket // the auth gate's and the breaker's, once enter took them
}

// enter waits for both gates and then for the budget of class; false when ctx ended first:
// then nothing may be sent. Handed the breaker's probe while it probes with reads, it sends
// the read first (probeRead) and waits again.
func (ps *passage) enter(ctx context.Context, class pacer.Priority) bool {
	p := ps.p
	var err error
	if ps.key, err = p.auth.Acquire(ctx); err != nil {
		return false
	}
	for {
		if ps.down, err = p.outage.Gate.Acquire(ctx); err != nil {
			return false
		}
		if !ps.down.Probe() || p.reader == nil || !p.outage.ProbeByRead() {
			break
		}
		// The breaker's probe is a read, not this request, which waits for the verdict.
		tk := ps.down
		ps.down = nil // done by probeRead, panic or not
		p.probeRead(ctx, tk)
	}
	start := time.Now()
	err = p.Pacer.Wait(ctx, class)
	p.Metrics.pacerWait(time.Since(start).Seconds())
	return err == nil
}

// send makes the request (do, whose status is that of a successful answer) with hard as its
// context, counting it in flight until it returns, panic or not, and in the metrics, and
// gives the answer's rate-limit reading to the budget. An error once hard ended is no
// answer: the outcome is then canceled.
func (ps *passage) send(hard context.Context, do func(ctx context.Context) (int, kustomer.RateLimit, error)) outcome {
	p := ps.p
	p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(1)))
	defer func() {
		p.Metrics.gauge(func(m *Metrics) prometheus.Gauge { return m.InFlight }, float64(p.inflight.Add(-1)))
	}()
	start := time.Now()
	status, rl, err := do(hard)
	elapsed := time.Since(start).Seconds()
	var apiErr *kustomer.APIError
	switch {
	case err == nil:
		p.Metrics.request(status, elapsed)
		p.Metrics.unanswered(rl.Lost)
		p.Pacer.Observe(rl, int(p.inflight.Load())-1) // the others: this one is answered
	case hard.Err() != nil:
		p.Metrics.unanswered(1)
		return outcome{canceled: true} // cut short by the shutdown deadline: nothing learned
	case errors.As(err, &apiErr):
		p.Metrics.request(apiErr.Status, elapsed)
		p.Metrics.unanswered(apiErr.RateLimit.Lost)
		p.Pacer.Observe(apiErr.RateLimit, int(p.inflight.Load())-1)
	case !errors.Is(err, kustomer.ErrInvalid):
		p.Metrics.request(0, elapsed)
	}
	return outcome{err: err}
}

// report tells the gates what o, the outcome of the request, says about the key and about
// Kustomer's health, and whether Kustomer is to be taken as down for this failure: then it
// spends no attempt. conv and seq are the conversation and message tried, last whether a
// failure would spend its last attempt; a bulk request gives its job as conv and seq 0, and
// has no attempt to give back. hold is how long an outage's failure is to wait at least.
func (ps *passage) report(o outcome, conv string, seq uint64, last bool) (outage bool, hold time.Duration) {
	if ps.down != nil {
		outage, hold = ps.p.outage.Observe(ps.down, conv, seq, last, healthOf(o), reasonOf(o))
	}
	if ps.key != nil {
		ps.key.Report(keyOf(o))
	}
	return outage, hold
}

// done hands back the tickets enter took.
func (ps *passage) done() {
	if ps.down != nil {
		ps.down.Done()
	}
	if ps.key != nil {
		ps.key.Done()
	}
}
