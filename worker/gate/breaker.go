package gate

import (
	"fmt"
	"sync"
	"time"
)

// Health is what one request says about Kustomer as a whole.
type Health int

const (
	HealthUnknown Health = iota // nothing was sent, or the try was cut short
	Up                          // Kustomer answered (2xx, 4xx, 429, 401/403): it is there
	Down                        // 5xx, timeout, refused or reset connection
)

// Breaker pauses every request while Kustomer is down for everybody: when requests fail
// transiently several times in a row across different conversations, it closes its gate, as
// an org-wide 429 pauses the pacer. While it is closed no attempt is spent, held messages stay
// in progress, and one probe at a time goes out with growing intervals; the first answer
// opens it. The failures that tripped it get their attempts back, so an outage of any length
// dead-letters nothing. A single conversation that keeps failing while others succeed never
// trips it: its streak is broken by their answers, and it runs out of attempts as before.
type Breaker struct {
	Gate      *Gate
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

// DefaultThreshold is the failures in a row that trip a breaker unless told otherwise.
const DefaultThreshold = 5

// NewBreaker returns a breaker that trips after threshold failures in a row; a threshold
// below 1 makes one that never trips.
func NewBreaker(threshold int, onOpen func(cause string), onClose func(down time.Duration)) *Breaker {
	b := &Breaker{threshold: threshold, refunds: make(map[uint64]struct{})}
	b.Gate = New(ProbeMin, ProbeMax, func() {
		b.mu.Lock()
		cause := b.cause
		b.mu.Unlock()
		onOpen(cause)
	}, nil)
	b.Gate.onOpen = func() {
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
func (b *Breaker) Observe(tk *Ticket, conv string, seq uint64, h Health, reason string) (outage bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch h {
	case Up:
		b.streak = b.streak[:0]
		tk.Report(Works)
		return false
	case HealthUnknown:
		return false
	}
	if b.threshold < 1 {
		return false
	}
	if closed, _ := b.Gate.Closed(); closed {
		if tk.probe {
			tk.Report(NoAnswer) // a failed probe: wait longer for the next
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
	tk.Report(Refused) // closes the gate
	return true
}

// convsInStreak counts the distinct conversations of the streak and extra.
func (b *Breaker) convsInStreak(extra string) int {
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
func (b *Breaker) Refund(seq uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.refunds[seq]; ok {
		delete(b.refunds, seq)
		return true
	}
	return false
}
