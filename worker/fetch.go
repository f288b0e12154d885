package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/ctxtime"
)

// Waits of the fetch loop: while the key is refused it checks again this often, and a failing
// pull is retried with backoff from fetchRetryMin to fetchRetryMax.
const (
	blockedRecheck = 200 * time.Millisecond
	fetchRetryMin  = 100 * time.Millisecond
	fetchRetryMax  = 2 * time.Second
	// batchGather is how long the fetch loop waits for room for a batch while messages are held.
	batchGather = 10 * time.Millisecond
)

// fetch takes messages from one lane's consumer while there is room, and never while Kustomer
// refuses the key or the org budget is paused.
func (p *Pool) fetch(ctx context.Context, src *source) {
	defer p.followRole(ctx, src)() // active and standby (standby.go)
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(fetchRetryMin),
		backoff.WithMaxInterval(fetchRetryMax), backoff.WithMaxElapsedTime(0))
	idle := false // the last pull brought nothing
	for ctx.Err() == nil {
		if p.gated() {
			_ = ctxtime.Sleep(ctx, blockedRecheck)
			continue
		}
		if until := p.Pacer.PausedUntil(); !until.IsZero() {
			_ = ctxtime.Sleep(ctx, time.Until(until))
			continue
		}
		n, ok := p.room(ctx, src, idle)
		if !ok {
			return
		}
		// The pull is not cut short by shutdown: messages the server already sent to a
		// cancelled pull would be lost to this process and wait out AckWait before anyone
		// else gets them. A pull lasts FetchWait at most.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.FetchWait)
		batch, err := src.cons.Fetch(n, jetstream.FetchContext(fctx))
		got := 0
		if err == nil {
			for msg := range batch.Messages() {
				got++
				p.admit(ctx, msg, src)
			}
			err = batch.Error()
		}
		cancel()
		for range n - got {
			p.freeSlots(src)
		}
		idle = got == 0
		if pullFailed(ctx, err) {
			p.fetchFailed(ctx, src, err)
			_ = ctxtime.Sleep(ctx, retry.NextBackOff())
			continue
		}
		p.fetchWorks(src)
		retry.Reset()
	}
}

// gated reports whether a gate stops every request: the key is refused, or Kustomer is down.
// The breaker's gate stops pulls only while the pool holds a message: its probe goes out with
// a worker's try, so a closed breaker with nothing held would wait for ever (a standby's
// hand-back, or the dead letters of conversations failing alone, can leave it so).
func (p *Pool) gated() bool {
	if auth, _ := p.auth.Closed(); auth {
		return true
	}
	if down, _ := p.outage.Gate.Closed(); !down {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.bySeq) > 0
}

// room takes slots for the next pull: at least one (waiting for it), and while messages are
// held it gathers more for a moment, up to a quarter of the window, so that a backlog is
// pulled in batches rather than one pull request per message, while the three quarters still
// held keep the workers busy until the pull's messages are there. After a pull that brought
// nothing (idle) it takes one only: a pull that waits on an empty lane holds its slots all
// the while, and those would starve the other lane. ok is false when ctx ended.
func (p *Pool) room(ctx context.Context, src *source, idle bool) (n int, ok bool) {
	if !p.takeSlots(ctx, src, nil) {
		return 0, false
	}
	n = 1
	if idle {
		return n, true
	}
	if len(p.slots) > 1 {
		t := time.NewTimer(batchGather)
		for n < p.cfg.MaxAckPending/4 && p.takeSlots(ctx, src, t.C) {
			n++
		}
		t.Stop()
	}
	for n < p.cfg.MaxAckPending && p.takeSlots(ctx, src, noWait) {
		n++
	}
	return n, true
}

// noWait is a channel that is always ready: takeSlots with it does not wait.
var noWait = func() chan time.Time { c := make(chan time.Time); close(c); return c }()

// takeSlots puts a token into src's slots (if it has its own) and the pool's, waiting until both
// have room, stop fires (nil: never) or ctx ends; it reports whether it took them.
func (p *Pool) takeSlots(ctx context.Context, src *source, stop <-chan time.Time) bool {
	if src.slots != nil {
		select {
		case src.slots <- struct{}{}:
		case <-stop:
			return false
		case <-ctx.Done():
			return false
		}
	}
	select {
	case p.slots <- struct{}{}:
		return true
	case <-stop:
	case <-ctx.Done():
	}
	if src.slots != nil {
		<-src.slots
	}
	return false
}

// freeSlots gives back the tokens a message of src held; nil src (read directly) holds none.
func (p *Pool) freeSlots(src *source) {
	if src == nil {
		return
	}
	<-p.slots
	if src.slots != nil {
		<-src.slots
	}
}

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
// consumer's Role says so and the pool hands back what it holds, see standby.go).
func pullFailed(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, jetstream.ErrPinIDMismatch)
}
