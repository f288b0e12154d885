package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// newBreaker makes the outage breaker (package gate) with the pool's announcements: a log line,
// the gauges and, through Ready, /readyz for each phase. With a reader its probes are reads.
func (p *Pool) newBreaker() *gate.Breaker {
	down := func(m *Metrics) prometheus.Gauge { return m.KustomerDown }
	writes := func(m *Metrics) prometheus.Gauge { return m.KustomerWritesDown }
	ev := gate.Events{
		Down: func(cause string) {
			p.Metrics.gauge(down, 1)
			p.Metrics.gauge(writes, 0)
			p.Metrics.breakerTrip()
			p.Log.Error("Kustomer unavailable: pausing every request and probing until it answers (no attempts are spent, nothing is dead-lettered)",
				"cause", cause)
		},
		WritesDown: func(cause string) {
			p.Metrics.gauge(down, 1)
			p.Metrics.gauge(writes, 1)
			p.Metrics.breakerTrip()
			p.Log.Error("Kustomer refuses updates while it answers reads: pausing every request and probing with a read and an update in turn until an update is accepted (no attempts are spent, nothing is dead-lettered)",
				"cause", cause)
		},
		Alone: func(convs []string, cause string) {
			p.Log.Warn("Kustomer answers reads while the updates of these conversations fail: taking the failures as theirs, not an outage; they spend attempts and are dead-lettered after the last, unless updates fail across more conversations than the spread with none accepted (then Kustomer is taken to refuse updates)",
				"conversations", strings.Join(convs, ","), "count", len(convs), "spread", p.cfg.OutageSpread, "max_attempts", p.cfg.MaxAttempts, "cause", cause)
		},
		Up: func(was gate.Phase, d time.Duration) {
			p.Metrics.gauge(down, 0)
			p.Metrics.gauge(writes, 0)
			msg := "Kustomer answers again: resuming"
			if was == gate.WritesDown {
				msg = "Kustomer accepts updates again: resuming"
			}
			p.Log.Info(msg, "unavailable_for", d.Round(time.Millisecond))
		},
	}
	if p.reader == nil {
		return gate.NewBreaker(p.cfg.OutageThreshold, ev.Down, func(d time.Duration) { ev.Up(gate.Outage, d) })
	}
	return gate.NewReadProbed(p.cfg.OutageThreshold, p.cfg.OutageSpread, ev)
}

// probeRead is the breaker's probe while it holds Kustomer suspect or down: a read of a
// conversation recently updated (probeIDs), which depends on none of the conversations whose
// updates fail. It takes a turn of the budget like any request, and tells the breaker, through
// tk, what the answer says: any answer, a 403 or a 404 included, shows Kustomer up. The auth
// gate is not told: a read says nothing about the key's right to update. tk is done here.
func (p *Pool) probeRead(ctx context.Context, tk *gate.Ticket) {
	defer tk.Done()
	if err := p.Pacer.Wait(ctx, pacer.Live); err != nil {
		return
	}
	id := p.probes.next()
	ps := &passage{p: p}
	o := ps.send(p.hard, func(ctx context.Context) (int, kustomer.RateLimit, error) {
		res, err := p.reader.GetConversation(ctx, id)
		if err != nil {
			return 0, kustomer.RateLimit{}, err
		}
		return res.Status, res.RateLimit, nil
	})
	h := healthOf(o)
	answer := "answered"
	var apiErr *kustomer.APIError
	switch {
	case o.err == nil:
		answer = "answered: 2xx"
	case errors.As(o.err, &apiErr) && apiErr.Status != 0:
		answer = "answered: " + apiErr.Error()
		if apiErr.Class == kustomer.ClassThrottled && apiErr.Scope == kustomer.ScopeOrg {
			p.Pacer.OrgThrottled(apiErr.RateLimit) // the budget is spent: everybody waits
		}
	case o.err != nil:
		answer = o.err.Error()
	}
	if h == gate.Down {
		p.Metrics.probeRead("unanswered")
	} else if h == gate.Up {
		p.Metrics.probeRead("answered")
	}
	p.Log.Debug("Kustomer probed with a read", "conversation", id, "answer", answer)
	p.outage.ObserveRead(tk, h, answer)
}

// probeIDs are the last conversations whose update Kustomer accepted, for the breaker's read
// probes to take turns on (so that one conversation that turned bad since cannot hold the
// pause): written by the workers, read by the prober, guarded by mu.
type probeIDs struct {
	mu   sync.Mutex
	ids  [4]string
	n    int // ids[:n] are set
	turn int
}

// noConversation is read while no update was accepted yet: Kustomer answers it 404 (an
// answer like any other) when it is up.
const noConversation = "000000000000000000000000"

// applied records that Kustomer accepted an update of id.
func (r *probeIDs) applied(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, have := range r.ids[:r.n] {
		if have == id {
			return
		}
	}
	copy(r.ids[1:], r.ids[:min(r.n, len(r.ids)-1)])
	r.ids[0] = id
	r.n = min(r.n+1, len(r.ids))
}

// next is the conversation for the next probe.
func (r *probeIDs) next() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return noConversation
	}
	r.turn++
	return r.ids[r.turn%r.n]
}
