package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Status is a snapshot of the work stream, its consumer and the dead-letter stream.
type Status struct {
	Time time.Time // when it was read

	Backlog   uint64 // messages in the work stream: not yet applied or dead-lettered
	Processed uint64 // messages that have left the work stream since it was created
	LastSeq   uint64 // the work stream's last sequence: messages ever published to it

	ConsumerFound bool   // false until a worker created the consumer
	Undelivered   uint64 // consumer: not yet delivered to any worker
	AckPending    int    // consumer: delivered, not yet acknowledged
	Redelivered   int    // consumer: delivered more than once and not yet acknowledged

	DeadLetters uint64                  // messages in the dead-letter stream
	ByClass     map[DeadLetterClass]int // dead letters by class; "" counts those without a class
}

// ReadStatus reads the work stream, the consumer and the dead-letter stream of t. counter
// counts the dead letters by class; pass the same one on every call to read only the dead
// letters added since the last.
func ReadStatus(ctx context.Context, js jetstream.JetStream, t Topology, counter *ClassCounter) (Status, error) {
	st := Status{Time: time.Now()}
	work, err := js.Stream(ctx, t.Stream)
	if err != nil {
		return st, streamError(t.Stream, err)
	}
	info := work.CachedInfo()
	st.Backlog = info.State.Msgs
	st.LastSeq = info.State.LastSeq
	st.Processed = info.State.LastSeq - min(info.State.Msgs, info.State.LastSeq)
	cons, err := js.Consumer(ctx, t.Stream, t.Consumer)
	switch {
	case err == nil:
		ci := cons.CachedInfo()
		st.ConsumerFound = true
		st.Undelivered = ci.NumPending
		st.AckPending = ci.NumAckPending
		st.Redelivered = ci.NumRedelivered
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		st.Undelivered = st.Backlog
	default:
		return st, fmt.Errorf("consumer %s: %w", t.Consumer, err)
	}
	if counter == nil {
		counter = &ClassCounter{}
	}
	byClass, total, err := counter.Count(ctx, js, t)
	if err != nil {
		return st, err
	}
	st.DeadLetters, st.ByClass = total, byClass
	return st, nil
}

// FindStream looks up the stream name, with an error that says how to create it when it is
// missing.
func FindStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, streamError(name, err)
	}
	return s, nil
}

func streamError(name string, err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %s not found: start `kustomer-worker run` once (it creates the streams) or create it: %w", name, err)
	}
	return fmt.Errorf("stream %s: %w", name, err)
}

// ClassCounter counts the dead letters by class. It remembers what it counted, so that
// counting again reads only the dead letters added since; when any was removed, it counts
// all of them again. It is for one goroutine at a time.
type ClassCounter struct {
	counts  map[DeadLetterClass]int
	lastSeq uint64 // last sequence counted
	removed uint64 // LastSeq - Msgs when counted: changes when a dead letter is removed
	total   uint64
}

// Count returns the number of dead letters of each class, and their total.
func (c *ClassCounter) Count(ctx context.Context, js jetstream.JetStream, t Topology) (map[DeadLetterClass]int, uint64, error) {
	s, err := js.Stream(ctx, t.DLQStream)
	if err != nil {
		return nil, 0, streamError(t.DLQStream, err)
	}
	state := s.CachedInfo().State
	removed := state.LastSeq - min(state.Msgs, state.LastSeq)
	if c.counts == nil || removed != c.removed || state.LastSeq < c.lastSeq {
		c.counts, c.lastSeq, c.total = make(map[DeadLetterClass]int), 0, 0
	}
	c.removed = removed
	if state.LastSeq > c.lastSeq && state.Msgs > 0 {
		err := scan(ctx, js, t.DLQStream, scanFrom{seq: c.lastSeq + 1, until: state.LastSeq, headersOnly: true},
			func(m jetstream.Msg, seq uint64, _ time.Time) error {
				c.counts[DeadLetterClass(m.Headers().Get(HeaderClass))]++
				c.total++
				return nil
			})
		if err != nil {
			return nil, 0, err
		}
		c.lastSeq = state.LastSeq
	}
	return maps.Clone(c.counts), c.total, nil
}

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	Failure
	Seq             uint64      // sequence in the dead-letter stream
	Stored          time.Time   // when the dead-letter stream stored it
	OriginalSubject string      // where the message was first published
	OriginalSeq     uint64      // its sequence in the work stream
	Header          nats.Header // every header: the original message's and the Dlq-* ones
	Data            []byte      // the original message; empty when listed with headers only
}

// newStored reads the dead-letter headers of h.
func newStored(seq uint64, stored time.Time, h nats.Header, data []byte) *DeadLetter {
	l := &DeadLetter{Seq: seq, Stored: stored, Header: h, Data: data}
	l.Class = DeadLetterClass(h.Get(HeaderClass))
	l.Reason = h.Get(HeaderReason)
	l.Status, _ = strconv.Atoi(h.Get(HeaderStatus))
	l.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	l.FailedAt, _ = time.Parse(time.RFC3339, h.Get(HeaderFailedAt))
	if l.FailedAt.IsZero() {
		l.FailedAt = stored
	}
	l.OriginalSubject = h.Get(HeaderOriginalSubject)
	l.OriginalSeq, _ = strconv.ParseUint(h.Get(HeaderOriginalSequence), 10, 64)
	return l
}

// DeadLetterFilter selects dead letters. Empty fields select everything.
type DeadLetterFilter struct {
	Seqs     []uint64          // only these sequences
	Classes  []DeadLetterClass // only these classes
	Statuses []int             // only these HTTP statuses (0 for none)
	Since    time.Time         // failed at or after
	Until    time.Time         // failed before
}

// Empty reports whether f selects every dead letter.
func (f DeadLetterFilter) Empty() bool {
	return len(f.Seqs) == 0 && len(f.Classes) == 0 && len(f.Statuses) == 0 && f.Since.IsZero() && f.Until.IsZero()
}

// Match reports whether f selects l.
func (f DeadLetterFilter) Match(l *DeadLetter) bool {
	switch {
	case len(f.Seqs) > 0 && !slices.Contains(f.Seqs, l.Seq):
		return false
	case len(f.Classes) > 0 && !slices.Contains(f.Classes, l.Class):
		return false
	case len(f.Statuses) > 0 && !slices.Contains(f.Statuses, l.Status):
		return false
	case !f.Since.IsZero() && l.FailedAt.Before(f.Since):
		return false
	case !f.Until.IsZero() && !l.FailedAt.Before(f.Until):
		return false
	}
	return true
}

// DeadLetterStore reads and repairs the dead-letter stream of a Topology.
type DeadLetterStore struct {
	JS       jetstream.JetStream
	Topology Topology
}

// Each calls fn for every dead letter f selects, in sequence order, until fn returns an
// error, which Each returns. With headersOnly, Data is left empty, which is much cheaper for
// large messages.
func (d *DeadLetterStore) Each(ctx context.Context, f DeadLetterFilter, headersOnly bool, fn func(*DeadLetter) error) error {
	s, err := d.JS.Stream(ctx, d.Topology.DLQStream)
	if err != nil {
		return streamError(d.Topology.DLQStream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return nil
	}
	if len(f.Seqs) > 0 {
		seqs := slices.Clone(f.Seqs)
		slices.Sort(seqs)
		for _, seq := range slices.Compact(seqs) {
			l, err := d.Get(ctx, seq)
			if errors.Is(err, ErrNoDeadLetter) {
				continue
			}
			if err != nil {
				return err
			}
			if !f.Match(l) {
				continue
			}
			if headersOnly {
				l.Data = nil
			}
			if err := fn(l); err != nil {
				return err
			}
		}
		return nil
	}
	from := scanFrom{seq: state.FirstSeq, until: state.LastSeq, headersOnly: headersOnly}
	if !f.Since.IsZero() {
		// A dead letter is stored after it failed, so none failing after Since is stored
		// before it.
		from.time = f.Since
	}
	return scan(ctx, d.JS, d.Topology.DLQStream, from, func(m jetstream.Msg, seq uint64, stored time.Time) error {
		var data []byte
		if !headersOnly {
			data = m.Data()
		}
		l := newStored(seq, stored, m.Headers(), data)
		if !f.Match(l) {
			return nil
		}
		return fn(l)
	})
}

// ErrNoDeadLetter is returned for a sequence that holds no dead letter.
var ErrNoDeadLetter = errors.New("no dead letter with this sequence")

// Get returns the dead letter with sequence seq, with its data.
func (d *DeadLetterStore) Get(ctx context.Context, seq uint64) (*DeadLetter, error) {
	s, err := d.JS.Stream(ctx, d.Topology.DLQStream)
	if err != nil {
		return nil, streamError(d.Topology.DLQStream, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	h := raw.Header
	if h == nil {
		h = nats.Header{}
	}
	return newStored(raw.Sequence, raw.Time, h, raw.Data), nil
}

// Delete removes the dead letter with sequence seq.
func (d *DeadLetterStore) Delete(ctx context.Context, seq uint64) error {
	s, err := d.JS.Stream(ctx, d.Topology.DLQStream)
	if err != nil {
		return streamError(d.Topology.DLQStream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil {
		// The server's reasons for a missing sequence vary (not found, store EOF): ask.
		if _, gerr := s.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
		}
		return fmt.Errorf("dead letter %d: delete: %w", seq, err)
	}
	return nil
}

// Replay publishes the dead letter l to the work stream again and, only once JetStream
// acknowledged that, deletes it from the dead-letter stream. The message keeps its original
// headers but none of the Dlq-* ones, and goes to its original subject when that belongs to
// the work stream (else to the work subject). data, when not nil, replaces the message:
// that is how a fixed message is replayed.
//
// The publish carries a Nats-Msg-Id made of the dead letter's sequence and a hash of the
// data, so replaying the same dead letter again after a crash between the publish and the
// delete is stored once within the dedup window.
func (d *DeadLetterStore) Replay(ctx context.Context, l *DeadLetter, data []byte) (*jetstream.PubAck, error) {
	t := d.Topology
	if data == nil {
		data = l.Data
	}
	m := nats.NewMsg(t.Subject)
	if s := l.OriginalSubject; s == t.Subject || strings.HasPrefix(s, t.Subject+".") {
		m.Subject = s
	}
	m.Data = data
	for k, vs := range l.Header {
		if isControlHeader(k) {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	id := "replay-" + t.DLQStream + "-" + strconv.FormatUint(l.Seq, 10) + "-" + MsgID("", 0, data)[:12]
	// No Nats-Expected-Stream: the header would stay on the message and refuse its next
	// dead letter. The acknowledgement says where it went instead.
	ack, err := d.JS.PublishMsg(ctx, m, jetstream.WithMsgID(id))
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: republish to %s: %w", l.Seq, m.Subject, err)
	}
	if ack.Stream != t.Stream {
		return ack, fmt.Errorf("dead letter %d: republished to %s, which stream %s took instead of %s: dead letter kept", l.Seq, m.Subject, ack.Stream, t.Stream)
	}
	if err := d.Delete(ctx, l.Seq); err != nil && !errors.Is(err, ErrNoDeadLetter) {
		return ack, fmt.Errorf("dead letter %d: republished as %d but not removed (replaying it again is safe within the dedup window): %w", l.Seq, ack.Sequence, err)
	}
	return ack, nil
}

// isControlHeader reports headers a replay must not carry: the dead-letter ones and those
// JetStream sets or acts on (Nats-Msg-Id, Nats-Expected-*, and the ones a direct get adds).
func isControlHeader(k string) bool {
	return strings.HasPrefix(strings.ToLower(k), "dlq-") || strings.HasPrefix(strings.ToLower(k), "nats-")
}

// scanFrom says where a scan starts and ends.
type scanFrom struct {
	seq         uint64    // first sequence (ignored when time is set)
	time        time.Time // first stored time, when set
	until       uint64    // last sequence to read: the stream's last when the scan began
	headersOnly bool
}

// scan reads a stream with an ordered consumer from `from` to its end, calling fn for each
// message. It stops at the first error of fn.
func scan(ctx context.Context, js jetstream.JetStream, stream string, from scanFrom, fn func(m jetstream.Msg, seq uint64, stored time.Time) error) error {
	cfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       max(from.seq, 1),
		HeadersOnly:       from.headersOnly,
		InactiveThreshold: 30 * time.Second,
	}
	if !from.time.IsZero() {
		start := from.time
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, 0, &start
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("stream %s: reading: %w", stream, err)
	}
	defer func() {
		// Ordered consumers are ephemeral; remove this one now rather than after the
		// inactive threshold.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = js.DeleteConsumer(dctx, stream, cons.CachedInfo().Name)
		cancel()
	}()
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return fmt.Errorf("stream %s: reading: %w", stream, err)
	}
	defer it.Stop()
	for {
		// Every message wanted is stored already: a long wait means the rest was removed
		// while reading.
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		m, err := it.Next(jetstream.NextMaxWait(2 * time.Second))
		if errors.Is(err, nats.ErrTimeout) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stream %s: reading: %w", stream, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("stream %s: reading: %w", stream, err)
		}
		if md.Sequence.Stream > from.until {
			return nil
		}
		if err := fn(m, md.Sequence.Stream, md.Timestamp); err != nil {
			return err
		}
		if md.Sequence.Stream == from.until || md.NumPending == 0 {
			return nil
		}
	}
}
