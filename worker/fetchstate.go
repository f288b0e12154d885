package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FetchError is Ready's answer while pulls from the consumer have been failing for a while
// (NATS unreachable, the consumer or stream deleted, permissions).
type FetchError struct {
	Lane  string // "live" or "backfill"
	Since time.Time
	Err   error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("cannot take messages from NATS (%s lane) since %s: %v", e.Lane, e.Since.UTC().Format(time.RFC3339), e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// fetchState tracks a lane's run of failing pulls: a short one is normal (a reconnect), one
// that lasts is logged at growing intervals, makes the pool unready and, for a missing
// consumer or stream, is healed. The lane's fetch goroutine writes it through fetchFailed and
// fetchWorks after every pull, and Ready reads it (err) from any goroutine.
type fetchState struct {
	mu sync.Mutex // guards every field below
	// Written by fetchFailed and fetchWorks; read by them and by err.
	since    time.Time     // first failure of the run; zero while pulls work
	last     error         // the run's last failure, for Ready
	reported bool          // the run made the pool unready and was logged
	nextLog  time.Time     // when the run is logged again
	logEvery time.Duration // the wait before the log line after next: doubles up to fetchLogMax
}

// Tuned values: a run of failures shorter than fetchGrace is not reported; while it lasts it
// is logged again at intervals doubling up to fetchLogMax.
const (
	fetchGrace  = 3 * time.Second
	fetchLogMax = 5 * time.Minute
	healTimeout = 10 * time.Second
)

// err is Ready's answer for the lane named lane.
func (f *fetchState) err(lane string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.reported {
		return nil
	}
	return &FetchError{Lane: lane, Since: f.since, Err: f.last}
}

// missing reports whether err says the consumer or its stream is gone.
func missing(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

// fetchFailed records a failed pull: after fetchGrace it makes the pool unready and logs the
// cause (again at growing intervals), and re-creates a missing consumer or stream with Heal.
func (p *Pool) fetchFailed(ctx context.Context, src *source, err error) {
	f := &src.fetch
	now := time.Now()
	f.mu.Lock()
	if f.since.IsZero() {
		f.since, f.logEvery = now, fetchGrace
		f.nextLog = now.Add(fetchGrace)
	}
	f.last = err
	log := !now.Before(f.nextLog)
	if log {
		f.reported = true
		f.nextLog = now.Add(f.logEvery)
		f.logEvery = min(2*f.logEvery, fetchLogMax)
	}
	since := f.since
	f.mu.Unlock()
	if !log {
		return
	}
	p.Log.Warn("cannot take messages from NATS", "lane", src.name, "error", err, "since", since.Format(time.RFC3339), "for", now.Sub(since).Round(time.Second))
	if p.Heal == nil || !missing(err) || !p.healing.CompareAndSwap(false, true) {
		return
	}
	// Not on the fetch goroutine: "no responders" also means a consumer whose stream elects
	// a new leader (its node died), where Heal waits out its timeout, and the lane's pulls
	// must go on meanwhile to take messages the moment the leader is there.
	p.healWG.Go(func() {
		defer p.healing.Store(false)
		hctx, cancel := context.WithTimeout(ctx, healTimeout)
		defer cancel()
		herr := p.Heal(hctx)
		switch {
		case herr == nil:
			p.Log.Warn("the consumer or its stream was missing: re-created it; work goes on")
		case errors.Is(herr, context.DeadlineExceeded) && ctx.Err() == nil:
			level := slog.LevelWarn
			if !p.pullsFail() { // the leader answered the pulls meanwhile: nothing to act on
				level = slog.LevelDebug
			}
			p.Log.Log(ctx, level, "the consumer or its stream does not answer (NATS may be electing a leader); pulls go on being retried", "error", herr)
		case ctx.Err() == nil:
			p.Log.Error("the consumer or its stream is missing and cannot be re-created", "error", herr)
		}
	})
}

// pullsFail reports whether a lane's pulls are failing now.
func (p *Pool) pullsFail() bool {
	for _, src := range p.lanes {
		src.fetch.mu.Lock()
		failing := !src.fetch.since.IsZero()
		src.fetch.mu.Unlock()
		if failing {
			return true
		}
	}
	return false
}

// fetchWorks ends a run of src's failed pulls.
func (p *Pool) fetchWorks(src *source) {
	f := &src.fetch
	f.mu.Lock()
	since, reported := f.since, f.reported
	f.since, f.reported, f.last = time.Time{}, false, nil
	f.mu.Unlock()
	if reported {
		p.Log.Info("taking messages from NATS again", "lane", src.name, "after", time.Since(since).Round(time.Second))
	}
}

// pullFailed reports whether a pull's err is a failure to record (fetchFailed): not the end
// of the pull's wait, nor a shutdown, nor the server's refusal of a pin that passed to another
// replica (jetstream.ErrPinIDMismatch: this replica is a standby now, which is no failure; the
// consumer's Role says so and the pool hands back what it holds, see handover.go).
func pullFailed(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, jetstream.ErrPinIDMismatch)
}
