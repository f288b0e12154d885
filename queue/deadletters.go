package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	Failure
	Seq             uint64      // sequence in the dead-letter stream
	Stored          time.Time   // when the dead-letter stream stored it
	OriginalSubject string      // where the message was first published
	OriginalSeq     uint64      // its sequence in the work stream
	Run             string      // the run it was enqueued in (HeaderRunID); "" if none
	Line            int64       // its line in the run's input (HeaderRunLine); 0 if none
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
	l.Run = h.Get(HeaderRunID)
	l.Line, _ = strconv.ParseInt(h.Get(HeaderRunLine), 10, 64)
	return l
}

// DeadLetterFilter selects dead letters. Empty fields select everything.
type DeadLetterFilter struct {
	Seqs     []uint64          // only these sequences
	Classes  []DeadLetterClass // only these classes
	Statuses []int             // only these HTTP statuses (0 for none)
	Since    time.Time         // failed at or after
	Until    time.Time         // failed before
	Run      string            // only dead letters of this run (HeaderRunID)
}

// Empty reports whether f selects every dead letter.
func (f DeadLetterFilter) Empty() bool {
	return len(f.Seqs) == 0 && len(f.Classes) == 0 && len(f.Statuses) == 0 && f.Since.IsZero() && f.Until.IsZero() && f.Run == ""
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
	case f.Run != "" && l.Header.Get(HeaderRunID) != f.Run:
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
// headers but none of the Dlq-* ones, and goes back to its original subject, in the lane it
// came from, when that subject belongs to either lane (else to the live lane's subject).
// data, when not nil, replaces the message: that is how a fixed message is replayed.
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
	if _, ok := t.LaneOf(l.OriginalSubject); ok {
		m.Subject = l.OriginalSubject
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
