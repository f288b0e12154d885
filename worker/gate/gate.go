package gate

import (
	"context"
	"sync"
	"time"
)

// Gate stops every request while something outside the messages is wrong (Kustomer refuses
// the API key, or is down: Breaker): one request at a time probes with growing intervals until
// an answer shows the fault is gone.
//
// Every request passes the gate with Acquire, which hands out a ticket; the ticket's single
// Done reports what the request learned. Done is deferred by the function that makes the
// request, as soon as the ticket is taken, so that it runs on every path, a panic included. A
// probe cannot be left hanging: a ticket whose Done learned nothing gives the probe back.
type Gate struct {
	minDelay, maxDelay time.Duration
	now                func() time.Time
	// onClose and onOpen are called (outside the lock) when the gate closes or opens, for the
	// one log line and the metric each.
	onClose, onOpen func()

	mu      sync.Mutex
	closed  bool
	since   time.Time // when it closed
	probing bool      // a probe ticket is out
	probeAt time.Time // the next probe may go out at this time
	delay   time.Duration
	changed chan struct{} // closed and replaced on every change of state
}

// Verdict is what a request says about the fault a gate stands for (the API key refused,
// Kustomer down): reported on its Ticket.
type Verdict int

const (
	Unknown  Verdict = iota // nothing was learned (nothing sent, or the request was cut short)
	Works                   // an answer got past the fault: it is gone
	Refused                 // the fault is there (for the auth gate: 401 or 403)
	NoAnswer                // no usable answer (5xx, timeout): a probe learned nothing good
)

// The default waits of a gate: the first probe after it closed, and the longest wait between
// probes.
const (
	ProbeMin = time.Second
	ProbeMax = 30 * time.Second
)

func New(minDelay, maxDelay time.Duration, onClose, onOpen func()) *Gate {
	nop := func() {}
	if onClose == nil {
		onClose = nop
	}
	if onOpen == nil {
		onOpen = nop
	}
	return &Gate{minDelay: minDelay, maxDelay: maxDelay, now: time.Now, onClose: onClose, onOpen: onOpen,
		changed: make(chan struct{})}
}

// Closed reports whether the gate is closed, and since when.
func (g *Gate) Closed() (bool, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed, g.since
}

// Ticket is one pass through the gate. Report what the try learned, then Done, once.
type Ticket struct {
	g       *Gate
	probe   bool // the gate was closed: this is its one probe
	verdict Verdict
}

// Probe reports whether the ticket is the closed gate's one probe.
func (t *Ticket) Probe() bool { return t.probe }

// Report records what the try learned; the last report before Done counts.
func (t *Ticket) Report(v Verdict) { t.verdict = v }

// Done hands the ticket back: a working answer opens the gate, a refusal closes it (or, for a
// probe, keeps it closed with a longer wait), and a probe that learned nothing is given back.
func (t *Ticket) Done() {
	switch t.verdict {
	case Works:
		t.g.open(t.probe)
	case Refused:
		t.g.fail()
	case NoAnswer:
		if t.probe {
			t.g.fail()
		}
	default:
		if t.probe {
			t.g.giveBackProbe()
		}
	}
}

// Acquire returns a ticket when the caller may send a request: at once while the gate is
// open, or as the single prober once the probe delay has passed. It returns ctx's cause if
// ctx ends first.
func (g *Gate) Acquire(ctx context.Context) (*Ticket, error) {
	for {
		g.mu.Lock()
		if !g.closed {
			g.mu.Unlock()
			return &Ticket{g: g}, nil
		}
		wait := g.probeAt.Sub(g.now())
		if !g.probing && wait <= 0 {
			g.probing = true
			g.mu.Unlock()
			return &Ticket{g: g, probe: true}, nil
		}
		changed := g.changed
		g.mu.Unlock()
		if wait <= 0 { // another caller is probing: wait for its verdict
			wait = g.maxDelay
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// fail closes the gate, or after a failed probe doubles the wait for the next one.
func (g *Gate) fail() {
	g.mu.Lock()
	first := !g.closed
	if first {
		g.delay = g.minDelay
		g.since = g.now()
	} else {
		g.delay = min(g.delay*2, g.maxDelay)
	}
	g.closed, g.probing = true, false
	g.probeAt = g.now().Add(g.delay)
	g.signal()
	g.mu.Unlock()
	if first {
		g.onClose()
	}
}

// open opens a closed gate after a working answer. An answer to a request that went out
// before the gate closed opens it too: the fault is gone.
func (g *Gate) open(probe bool) {
	g.mu.Lock()
	reopened := g.closed
	if reopened || probe {
		g.closed, g.probing = false, false
		g.since = time.Time{}
		g.signal()
	}
	g.mu.Unlock()
	if reopened {
		g.onOpen()
	}
}

// release gives back a probe that learned nothing, so that another caller may probe.
func (g *Gate) giveBackProbe() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.probing {
		g.probing = false
		g.signal()
	}
}

// signal wakes the callers waiting in Acquire; g.mu is held.
func (g *Gate) signal() {
	close(g.changed)
	g.changed = make(chan struct{})
}
