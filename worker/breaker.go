package worker

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// health is what one try says about Kustomer as a whole.
type health int

const (
	healthUnknown health = iota // nothing was sent, or the try was cut short
	healthUp                    // Kustomer answered (2xx, 4xx, 429, 401/403): it is there
	healthDown                  // 5xx, timeout, refused or reset connection
)

// healthOf reads an outcome for the outage breaker.
func healthOf(o outcome) health {
	switch {
	case o.invalid != nil || o.canceled || o.panicked != nil:
		return healthUnknown
	case o.err == nil:
		return healthUp
	}
	var apiErr *kustomer.APIError
	if errors.As(o.err, &apiErr) {
		if apiErr.Class == kustomer.ClassTransient {
			return healthDown
		}
		return healthUp
	}
	if errors.Is(o.err, kustomer.ErrInvalid) {
		return healthUnknown
	}
	return healthDown
}

// breaker pauses every request while Kustomer is down for everybody: when requests fail
// transiently several times in a row across different conversations, it closes its gate, as
// an org-wide 429 pauses the pacer. While it is closed no attempt is spent, held messages stay
// in progress, and one probe at a time goes out with growing intervals; the first answer
// opens it. The failures that tripped it get their attempts back, so an outage of any length
// dead-letters nothing. A single conversation that keeps failing while others succeed never
// trips it: its streak is broken by their answers, and it runs out of attempts as before.
type breaker struct {
	gate      *gate
	threshold int // failures in a row that trip it, across at least two conversations

	mu      sync.Mutex
	streak  []failure           // transient failures since the last answer, oldest first
	refunds map[uint64]struct{} // sequences whose spent attempt the trip gave back; taken by their owner
	cause   string              // what tripped it, for the log
	since   time.Time           // when it last tripped
}

type failure struct {
	conv  string
	seq   uint64
	spent bool // the failure spent an attempt
}

// Tuned values of the breaker: the probe intervals.
const (
	breakerProbeMin = time.Second
	breakerProbeMax = 30 * time.Second
)

// newBreaker returns a breaker that trips after threshold failures in a row; a threshold
// below 1 makes one that never trips.
func newBreaker(threshold int, onOpen func(cause string), onClose func(down time.Duration)) *breaker {
	b := &breaker{threshold: threshold, refunds: make(map[uint64]struct{})}
	b.gate = newGate(breakerProbeMin, breakerProbeMax, func() {
		b.mu.Lock()
		cause := b.cause
		b.mu.Unlock()
		onOpen(cause)
	}, nil)
	b.gate.onOpen = func() {
		b.mu.Lock()
		d := time.Since(b.since)
		b.mu.Unlock()
		onClose(d)
	}
	return b
}

// observe records what a try that passed the breaker with tk learned about Kustomer, reports
// the verdict on tk, and says whether Kustomer is to be treated as down for this failure: then
// it spends no attempt. conv is the conversation tried and seq its message; a bulk request
// gives its job as conv and seq 0, and has no attempt to give back.
func (b *breaker) observe(tk *ticket, conv string, seq uint64, h health, reason string) (outage bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch h {
	case healthUp:
		b.streak = b.streak[:0]
		tk.Report(keyWorks)
		return false
	case healthUnknown:
		return false
	}
	if b.threshold < 1 {
		return false
	}
	if closed, _ := b.gate.Closed(); closed {
		if tk.probe {
			tk.Report(keyNoAnswer) // a failed probe: wait longer for the next
		}
		return true
	}
	suspect := b.convsInStreak(conv) >= 2
	b.streak = append(b.streak, failure{conv: conv, seq: seq, spent: !suspect && seq != 0})
	if len(b.streak) < b.threshold || !suspect {
		return suspect
	}
	for _, f := range b.streak {
		if f.spent {
			b.refunds[f.seq] = struct{}{}
		}
	}
	b.cause = fmt.Sprintf("%d requests in a row failed across %d conversations; last: %s",
		len(b.streak), b.convsInStreak(""), reason)
	b.streak = b.streak[:0]
	b.since = time.Now()
	tk.Report(keyRefused) // closes the gate
	return true
}

// convsInStreak counts the distinct conversations of the streak and extra.
func (b *breaker) convsInStreak(extra string) int {
	seen := make(map[string]struct{}, len(b.streak)+1)
	if extra != "" {
		seen[extra] = struct{}{}
	}
	for _, f := range b.streak {
		seen[f.conv] = struct{}{}
	}
	return len(seen)
}

// refund reports, once, whether seq's last spent attempt was given back by a trip.
func (b *breaker) refund(seq uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.refunds[seq]; ok {
		delete(b.refunds, seq)
		return true
	}
	return false
}
