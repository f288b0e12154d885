package worker

import (
	"context"
	"sync"
	"time"
)

// authGate stops the pool while Kustomer refuses the API key (401/403). The key is at fault,
// not the messages: nothing is dead-lettered, no message is taken, and one request at a time
// probes with backoff until the key works again.
type authGate struct {
	mu      sync.Mutex
	blocked bool
	probing bool
	probeAt time.Time
	delay   time.Duration
	changed chan struct{} // closed and replaced on every state change
	now     func() time.Time
}

const (
	authProbeMin = time.Second
	authProbeMax = 30 * time.Second
)

func newAuthGate() *authGate {
	return &authGate{changed: make(chan struct{}), now: time.Now}
}

// Blocked reports whether the key is currently refused.
func (g *authGate) Blocked() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.blocked
}

// Acquire returns when the caller may send a request: at once while the gate is open, or as
// the single prober once the probe delay has passed. probe tells the caller it must report
// back with Fail or Open.
func (g *authGate) Acquire(ctx context.Context) (probe bool, err error) {
	for {
		g.mu.Lock()
		if !g.blocked {
			g.mu.Unlock()
			return false, nil
		}
		wait := g.probeAt.Sub(g.now())
		if !g.probing && wait <= 0 {
			g.probing = true
			g.mu.Unlock()
			return true, nil
		}
		changed := g.changed
		g.mu.Unlock()
		if wait <= 0 { // another caller is probing: wait for its verdict
			wait = authProbeMax
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, context.Cause(ctx)
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// Fail records a refused key. It returns true when this closed an open gate, so the caller
// logs the failure once rather than once per request.
func (g *authGate) Fail() (first bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	first = !g.blocked
	if first {
		g.delay = authProbeMin
	} else {
		g.delay = min(g.delay*2, authProbeMax)
	}
	g.blocked, g.probing = true, false
	g.probeAt = g.now().Add(g.delay)
	g.signal()
	return first
}

// Open records that the key worked. It returns true when this reopened a closed gate.
func (g *authGate) Open() (reopened bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	reopened = g.blocked
	g.blocked, g.probing = false, false
	if reopened {
		g.signal()
	}
	return reopened
}

// Release gives up a probe that was never sent (shutdown), so another caller may probe.
func (g *authGate) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.probing {
		g.probing = false
		g.signal()
	}
}

func (g *authGate) signal() {
	close(g.changed)
	g.changed = make(chan struct{})
}
