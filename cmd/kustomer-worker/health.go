package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// readiness is what /readyz answers: the reason the daemon is not ready yet while it starts,
// then the state of its NATS connection and pool. Safe for concurrent use.
type readiness struct {
	mu     sync.Mutex
	reason string       // guarded by mu: why not ready while starting
	nc     *nats.Conn   // guarded by mu: set once running
	pool   *worker.Pool // guarded by mu: set once running
}

// set records why the daemon is not ready yet.
func (r *readiness) set(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reason = reason
}

// running hands readiness over to the connection and the pool.
func (r *readiness) running(nc *nats.Conn, pool *worker.Pool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nc, r.pool = nc, pool
}

// notReady is why the daemon cannot take work now, or "" when it can.
func (r *readiness) notReady() string {
	r.mu.Lock()
	nc, pool, reason := r.nc, r.pool, r.reason
	r.mu.Unlock()
	if pool == nil {
		return reason
	}
	if !nc.IsConnected() {
		if cause := queue.OutageCause(nc); cause != nil {
			return "not connected to NATS: " + causeOf(cause).Error()
		}
		return "not connected to NATS"
	}
	if err := pool.Ready(); err != nil {
		return err.Error()
	}
	return ""
}

// role names this replica's role for /readyz once it runs (see roleText); "" before.
func (r *readiness) role() string {
	r.mu.Lock()
	pool := r.pool
	r.mu.Unlock()
	if pool == nil {
		return ""
	}
	return roleText(pool.Consumer, pool.Backfill)
}

// Tuned intervals of the lines about an outage.
const (
	outageFirstRepeat = 5 * time.Second // the first "still unreachable" line after the first
	outageMaxRepeat   = 5 * time.Minute // the longest gap between two such lines
	natsWatchEvery    = time.Second     // how often watchNATS looks at the connection
)

// outageLog writes the lines of an outage of a service the daemon waits for: one WARN with the
// cause when it starts, WARNs at growing intervals while it lasts, one INFO when it ends.
// It is for one goroutine.
type outageLog struct {
	log        *slog.Logger
	what       string     // "NATS"
	where      string     // its URL, credentials removed
	ready      *readiness // when set, told the reason while the outage lasts
	quietStart bool       // the start of the outage is logged elsewhere (nats.go's disconnect handler)
	quietEnd   bool       // so is its end (the connect or reconnect line, with the time waited)

	since time.Time     // start of the current outage; zero when there is none
	next  time.Time     // when the next "still" line is due
	every time.Duration // the gap before the next "still" line
}

func newOutageLog(log *slog.Logger, what, where string, ready *readiness) *outageLog {
	return &outageLog{log: log, what: what, where: where, ready: ready}
}

// failing records a failed attempt to reach the service.
func (o *outageLog) failing(err error) {
	now := time.Now()
	if o.ready != nil {
		o.ready.set(fmt.Sprintf("waiting for %s at %s: %v", o.what, o.where, err))
	}
	switch {
	case o.since.IsZero():
		o.since, o.every = now, outageFirstRepeat
		o.next = now.Add(o.every)
		if !o.quietStart {
			o.log.Warn(o.what+" unreachable; waiting for it", "url", o.where, "error", err)
		}
	case !now.Before(o.next):
		o.log.Warn(o.what+" still unreachable; waiting for it", "url", o.where, "error", err,
			"for", now.Sub(o.since).Round(time.Second))
		o.every = min(2*o.every, outageMaxRepeat)
		o.next = now.Add(o.every)
	}
}

// ended records that the service answers again, if it did not.
func (o *outageLog) ended() {
	if o.since.IsZero() {
		return
	}
	if !o.quietEnd {
		o.log.Info(o.what+" reachable; stopped waiting", "url", o.where, "after", time.Since(o.since).Round(time.Millisecond))
	}
	o.since = time.Time{}
}

// watchNATS writes the "still unreachable" lines of NATS outages after start, with the cause
// of the last failed attempt, until ctx ends; nats.go reconnects on its own, and its handlers
// (queue.Connect) write the first line and the last.
func watchNATS(ctx context.Context, nc *nats.Conn, o *outageLog) {
	o.quietStart, o.quietEnd = true, true
	t := time.NewTicker(natsWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch {
		case nc.IsClosed():
			return
		case nc.IsConnected():
			o.ended()
		default:
			if cause := queue.OutageCause(nc); cause != nil {
				o.failing(causeOf(cause))
			} else {
				o.failing(errors.New("reconnecting"))
			}
		}
	}
}

// causeOf is the cause of a NATS connection failure for a log line or /readyz that names the
// server already: a *queue.ConnectError without its URL, its kind kept unless it is a
// failure that may heal (whose error says what happened: connection refused, no such host).
func causeOf(err error) error {
	var ce *queue.ConnectError
	if !errors.As(err, &ce) {
		return err
	}
	if ce.Kind.Permanent() {
		return fmt.Errorf("%v: %w", ce.Kind, ce.Err)
	}
	return ce.Err
}
