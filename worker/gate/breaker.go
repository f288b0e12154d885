package gate

import (
	"fmt"
	"maps"
	"slices"
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

// Phase is what the breaker holds true of Kustomer.
type Phase int

const (
	// Flowing: requests go out. Failures either count towards a trip or, for conversations
	// known to fail on their own, spend their attempts.
	Flowing Phase = iota
	// Suspect: updates failed across conversations and every request is paused; the first
	// read will tell whether Kustomer is down or the failures are the conversations' own.
	// Nothing is announced yet.
	Suspect
	// Outage: Kustomer is down for everybody (a read got no answer either, or there is no
	// read to probe with). Probes go out at growing intervals; no attempt is spent.
	Outage
	// WritesDown: Kustomer answers reads but refuses the updates of more conversations than
	// the breaker's spread with none accepted in between. Every request is paused, no attempt
	// is spent, and every other probe is an update, which alone can show that writes work
	// again (the others are reads, which tell when Kustomer goes down altogether).
	WritesDown
)

var phaseNames = [...]string{Flowing: "flowing", Suspect: "suspect", Outage: "outage", WritesDown: "writes down"}

func (p Phase) String() string { return phaseNames[p] }

// Events are the breaker's announcements, each called once per change, outside its lock.
// Any may be nil.
type Events struct {
	// Down: Kustomer is taken for down for everybody (Outage).
	Down func(cause string)
	// WritesDown: Kustomer answers reads while updates fail across many conversations.
	WritesDown func(cause string)
	// Alone: a read answered while the updates of these conversations (at most the spread)
	// failed: they fail on their own, and from now on spend attempts without pausing anybody.
	Alone func(convs []string, cause string)
	// Up: Outage or WritesDown is over, after down; was says which.
	Up func(was Phase, down time.Duration)
}

// Breaker pauses every request while Kustomer is down for everybody, and tells that apart from
// conversations whose updates fail on their own.
//
// When requests fail transiently several times in a row across different conversations, it
// closes its gate, as an org-wide 429 pauses the pacer, and gives back the attempts those
// failures spent. While it is closed no attempt is spent, held messages stay in progress, and
// one probe at a time goes out with growing intervals. With reads (NewReadProbed) the probe is
// a read of a conversation, which depends on none of the failing ones:
//
//   - no answer to it: Kustomer is down (Outage), and an outage of any length dead-letters
//     nothing;
//   - an answer while the conversations whose updates failed since the last update Kustomer
//     accepted are at most spread: those fail on their own. The gate opens, they spend
//     attempts and are dead-lettered after their last, and their failures no longer count
//     towards a trip (Events.Alone);
//   - an answer while more conversations than spread failed, or a bulk request (which never
//     fails on its own account): Kustomer refuses writes (WritesDown). The attempts spent since the last accepted update are given back, and
//     the gate stays closed until an update is accepted; probes are a read and an update in
//     turn, and a read with no answer makes it an Outage.
//
// Without reads (NewBreaker) the probe is a request of the held messages, and any answer
// opens the gate. A single conversation that keeps failing while others succeed never trips
// it: its streak is broken by their answers, and it runs out of attempts as before.
type Breaker struct {
	Gate      *Gate
	threshold int    // failures in a row that trip it, across at least two conversations
	spread    int    // most conversations taken as failing on their own
	reads     bool   // probes are reads (ProbeByRead) while Suspect or Outage
	ev        Events // set by the constructor

	mu      sync.Mutex
	phase   Phase
	streak  []failure      // transient failures since the last answer, oldest first; none of alone
	refunds map[uint64]int // by sequence, the spent attempts a trip or WritesDown gave back; taken by their owner
	// failing holds the conversations whose updates failed transiently since the last update
	// Kustomer answered, with the sequences of those failures that spent an attempt; at
	// most spread+1 conversations are kept, enough to tell that more than spread failed.
	failing map[string][]uint64
	alone   map[string]struct{} // conversations known to fail on their own: at most spread
	// grewAt is when a conversation other than those alone last joined failing, or a read
	// last found conversations failing alone; zero once an update was accepted since. An
	// alone conversation's last attempt waits until it is Quiet ago (see Observe).
	grewAt   time.Time
	cause    string // what tripped it, for the log
	readTurn bool   // in WritesDown, the last probe was a read
	// bulkFailing: a bulk request (seq 0) is among failing. A bulk request never fails on its
	// own account: a read that answers then means that Kustomer refuses writes.
	bulkFailing bool
	since       time.Time // when it last tripped
}

type failure struct {
	conv  string
	seq   uint64
	spent bool // the failure spent an attempt
}

// DefaultThreshold is the failures in a row that trip a breaker unless told otherwise.
const DefaultThreshold = 5

// Quiet is how long no other conversation may have started failing, with no update accepted,
// before a conversation failing alone spends its last attempt: while updates keep failing
// across new conversations, Kustomer may be refusing every write, and the spread will tell.
const Quiet = 5 * time.Second

// DefaultSpread is the most conversations a read-probed breaker takes as failing on their
// own unless told otherwise.
const DefaultSpread = 20

// NewBreaker returns a breaker without reads that trips after threshold failures in a row; a
// threshold below 1 makes one that never trips. onOpen announces Outage, onClose its end.
func NewBreaker(threshold int, onOpen func(cause string), onClose func(down time.Duration)) *Breaker {
	return newBreaker(threshold, 0, false, Events{Down: onOpen, Up: func(_ Phase, d time.Duration) { onClose(d) }})
}

// NewReadProbed returns a breaker whose probes are reads (see ProbeByRead and ObserveRead)
// and that takes up to spread conversations failing with no update accepted in between as
// failing on their own; a spread below 1 is DefaultSpread.
func NewReadProbed(threshold, spread int, ev Events) *Breaker {
	if spread < 1 {
		spread = DefaultSpread
	}
	return newBreaker(threshold, spread, true, ev)
}

func newBreaker(threshold, spread int, reads bool, ev Events) *Breaker {
	nop := func(string) {}
	if ev.Down == nil {
		ev.Down = nop
	}
	if ev.WritesDown == nil {
		ev.WritesDown = nop
	}
	if ev.Alone == nil {
		ev.Alone = func([]string, string) {}
	}
	if ev.Up == nil {
		ev.Up = func(Phase, time.Duration) {}
	}
	return &Breaker{
		Gate: New(ProbeMin, ProbeMax, nil, nil), threshold: threshold, spread: spread, reads: reads, ev: ev,
		refunds: make(map[uint64]int), failing: make(map[string][]uint64), alone: make(map[string]struct{}),
	}
}

// Phase reports what the breaker holds true of Kustomer, and since when it paused requests
// (zero while Flowing).
func (b *Breaker) Phase() (Phase, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.phase == Flowing {
		return Flowing, time.Time{}
	}
	return b.phase, b.since
}

// ProbeByRead reports whether the holder of a probe ticket is to read a conversation
// (ObserveRead) rather than send its own request (Observe).
func (b *Breaker) ProbeByRead() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reads && b.phase == Flowing {
		// A probe while flowing: a trip closed the gate just after an answer to an earlier
		// request set the phase back. Suspect again; the read tells.
		b.phase, b.since = Suspect, time.Now()
	}
	if b.reads && b.phase == WritesDown {
		// Every other probe reads: reads that stop answering too make it an outage.
		b.readTurn = !b.readTurn
		return b.readTurn
	}
	return b.reads && (b.phase == Suspect || b.phase == Outage)
}

// announcement is an event to call once the lock is released.
type announcement func()

func (a announcement) call() {
	if a != nil {
		a()
	}
}

// Observe records what an update (or a bulk request) that passed the breaker with tk learned
// about Kustomer, reports the verdict on tk, and says whether Kustomer is to be treated as
// down for this failure: then it spends no attempt. conv is the conversation tried and seq its
// message; a bulk request gives its job as conv and seq 0, and has no attempt to give back.
// last says that the failure would spend the message's last attempt: for a conversation
// failing alone, it is spent only once no other conversation started failing for Quiet;
// until then the failure is an outage's, and hold is how long to wait before the next try.
func (b *Breaker) Observe(tk *Ticket, conv string, seq uint64, last bool, h Health, reason string) (outage bool, hold time.Duration) {
	b.mu.Lock()
	outage, hold, a := b.observe(tk, conv, seq, last, h, reason)
	b.mu.Unlock()
	a.call()
	return outage, hold
}

func (b *Breaker) observe(tk *Ticket, conv string, seq uint64, last bool, h Health, reason string) (bool, time.Duration, announcement) {
	switch h {
	case Up:
		b.streak = b.streak[:0]
		clear(b.failing)
		b.bulkFailing = false
		b.grewAt = time.Time{}
		delete(b.alone, conv)
		tk.Report(Works)
		return false, 0, b.resume()
	case HealthUnknown:
		return false, 0, nil
	}
	if b.threshold < 1 {
		return false, 0, nil
	}
	if b.phase == Flowing && tk.probe {
		// The gate closed just after an answer to an earlier request set the phase back (a
		// trip's close landed late), and this probe failed: the gate stays closed.
		tk.Report(NoAnswer)
		b.since = time.Now()
		if b.reads {
			b.phase = Suspect
			return true, 0, nil
		}
		b.phase = Outage
		cause := b.cause
		return true, 0, func() { b.ev.Down(cause) }
	}
	if b.phase != Flowing {
		if tk.probe {
			tk.Report(NoAnswer) // a failed probe: wait longer for the next
		}
		return true, 0, nil
	}
	if seq == 0 {
		b.bulkFailing = true
	}
	if _, ok := b.alone[conv]; ok {
		if last && time.Since(b.grewAt) < Quiet {
			b.fail(conv, 0)
			return true, Quiet - time.Since(b.grewAt), nil // not yet: other conversations started failing lately
		}
		b.fail(conv, seq) // its own failure: it spends an attempt and pauses nobody
		if !b.spreadOut() {
			return false, 0, nil
		}
		if seqs := b.failing[conv]; len(seqs) > 0 && seqs[len(seqs)-1] == seq {
			b.failing[conv] = seqs[:len(seqs)-1] // it trips the breaker instead: nothing spent
		}
		return true, 0, b.trip(tk, reason)
	}
	suspect := b.convsInStreak(conv) >= 2
	spent := !suspect && seq != 0
	b.streak = append(b.streak, failure{conv: conv, seq: seq, spent: spent})
	if spent {
		b.fail(conv, seq)
	} else {
		b.fail(conv, 0)
	}
	if (len(b.streak) < b.threshold || !suspect) && !b.spreadOut() {
		return suspect, 0, nil
	}
	return true, 0, b.trip(tk, reason)
}

// spreadOut reports whether the updates of more conversations than the spread failed since
// the last one Kustomer accepted: then a read-probed breaker trips at once, whatever the
// streak, so that the next read tells an outage of writes before more attempts are spent.
func (b *Breaker) spreadOut() bool { return b.reads && len(b.failing) > b.spread }

// trip closes the gate on tk, and gives back the attempts the streak's failures spent.
func (b *Breaker) trip(tk *Ticket, reason string) announcement {
	for _, f := range b.streak {
		if f.spent {
			b.refunds[f.seq]++
			seqs := b.failing[f.conv]
			if i := slices.Index(seqs, f.seq); i >= 0 {
				b.failing[f.conv] = slices.Delete(seqs, i, i+1) // given back once only
			}
		}
	}
	b.cause = fmt.Sprintf("%d requests in a row failed across %d conversations, %d failing since the last update accepted; last: %s",
		len(b.streak), b.convsInStreak(""), len(b.failing), reason)
	b.streak = b.streak[:0]
	b.since = time.Now()
	tk.Report(Refused) // closes the gate
	if b.reads {
		b.phase = Suspect // the first read tells
		return nil
	}
	b.phase = Outage
	cause := b.cause
	return func() { b.ev.Down(cause) }
}

// fail adds a failure of conv, of message seq if it spent an attempt (else 0), to failing.
func (b *Breaker) fail(conv string, seq uint64) {
	seqs, ok := b.failing[conv]
	if !ok && len(b.failing) > b.spread {
		return // more than spread already: enough to tell
	}
	if _, alone := b.alone[conv]; !ok && !alone {
		b.grewAt = time.Now()
	}
	if seq != 0 && len(seqs) < 64 {
		seqs = append(seqs, seq)
	}
	b.failing[conv] = seqs
}

// resume returns to Flowing after an answer to an update, and says so if Outage or WritesDown
// was announced.
func (b *Breaker) resume() announcement {
	was := b.phase
	b.phase = Flowing
	if was != Outage && was != WritesDown {
		return nil
	}
	d := time.Since(b.since)
	return func() { b.ev.Up(was, d) }
}

// ObserveRead records what a read sent as the probe of tk (ProbeByRead) learned, and reports
// the verdict on tk: no answer keeps the gate closed (Outage); an answer opens it when the
// conversations failing on their own are at most the spread, and keeps it closed for an
// update to probe otherwise (WritesDown). reason says what the read got, for the log.
func (b *Breaker) ObserveRead(tk *Ticket, h Health, reason string) {
	b.mu.Lock()
	a := b.observeRead(tk, h, reason)
	b.mu.Unlock()
	a.call()
}

func (b *Breaker) observeRead(tk *Ticket, h Health, reason string) announcement {
	if h == HealthUnknown || b.phase == Flowing {
		return nil // nothing learned, or an update answered meanwhile
	}
	was := b.phase
	if was == WritesDown && h == Up {
		// Reads still answer: updates are what is refused. The probe is given back, so that
		// an update probes at once, at no longer a wait.
		return nil
	}
	if h == Down {
		tk.Report(NoAnswer)
		// Kustomer is down: the updates that failed say nothing about their conversations.
		maps.DeleteFunc(b.failing, func(conv string, _ []uint64) bool { _, ok := b.alone[conv]; return !ok })
		b.bulkFailing = false
		if was == Outage {
			return nil
		}
		b.phase = Outage
		cause := b.cause + "; a read got no answer either: " + reason
		return func() { b.ev.Down(cause) }
	}
	if len(b.failing) > b.spread || b.bulkFailing {
		for conv, seqs := range b.failing {
			for _, seq := range seqs {
				b.refunds[seq]++
			}
			b.failing[conv] = seqs[:0]
		}
		b.phase = WritesDown
		tk.Report(Refused) // stays closed; the next probe is an update
		cause := fmt.Sprintf("updates of more than %d conversations failed and none was accepted since, while a read answered (%s); last: %s",
			b.spread, reason, b.cause)
		if b.bulkFailing {
			cause = fmt.Sprintf("bulk requests failed while a read answered (%s); last: %s", reason, b.cause)
		}
		return func() { b.ev.WritesDown(cause) }
	}
	convs := make([]string, 0, len(b.failing))
	for conv := range b.failing {
		convs = append(convs, conv)
	}
	slices.Sort(convs)
	clear(b.alone)
	for _, conv := range convs {
		b.alone[conv] = struct{}{}
	}
	b.streak = b.streak[:0]
	b.grewAt = time.Now()
	b.phase = Flowing
	tk.Report(Works) // opens the gate
	d := time.Since(b.since)
	cause := fmt.Sprintf("a read answered (%s) while the updates of %d conversations failed: %s", reason, len(convs), b.cause)
	return func() {
		if was == Outage {
			b.ev.Up(was, d)
		}
		if len(convs) > 0 {
			b.ev.Alone(convs, cause)
		}
	}
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

// Refund returns, once, how many of seq's spent attempts a trip or WritesDown gave back.
func (b *Breaker) Refund(seq uint64) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.refunds[seq]
	delete(b.refunds, seq)
	return n
}
