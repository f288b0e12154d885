package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// OrderCheck finds the older messages of one conversation that are still pending in a lane,
// so that a worker holding a newer message of that conversation from the other lane can
// apply them first: two updates of a conversation must be applied in stream order whatever
// their lanes. On the work-queue stream an acknowledged message is removed, so every message
// still in the stream is pending: not yet applied, or in progress.
//
// It asks the stream's leader (never a direct get from a replica, which may lag behind and
// show a message already acknowledged, or miss one just stored), one request per message
// found plus one, on the subject <lane subject>.<id>. Messages published to a lane's bare
// subject carry their conversation only in their body: OldestBare says whether any is older,
// and OlderPendingBare reads them one by one.
//
// An OrderCheck is safe for concurrent use.
type OrderCheck struct {
	top    Topology
	stream jetstream.Stream
}

// NewOrderCheck looks up the work stream of t.
func NewOrderCheck(ctx context.Context, js jetstream.JetStream, t Topology) (*OrderCheck, error) {
	s, err := FindStream(ctx, js, t.Stream)
	if err != nil {
		return nil, err
	}
	if s.CachedInfo().Config.AllowDirect {
		// GetMsg would use direct gets, answered by any replica: see the type's doc.
		return nil, fmt.Errorf("stream %s allows direct gets: the order check needs answers from its leader; turn allow_direct off", t.Stream)
	}
	return &OrderCheck{top: t, stream: s}, nil
}

// OlderPending returns the messages on lane's subject for conversation id
// (<lane subject>.<id>) whose stream sequence is below before, oldest first: the updates
// that must be applied before the message with sequence before. It costs one request to the
// stream's leader when there is none, and one more for each one found.
//
// Each message returned is a *DirectMsg: not delivered by the lane's consumer, which will
// deliver it in its turn unless it is removed first (DirectMsg.Ack). A worker that holds the
// consumer's delivery of the same sequence already should use that one instead.
func (c *OrderCheck) OlderPending(ctx context.Context, lane Lane, id string, before uint64) ([]*DirectMsg, error) {
	return c.older(ctx, c.top.ConversationSubject(lane, id), before, nil)
}

// OldestBare returns the sequence of the oldest message on lane's bare subject (one without
// a conversation id in the subject), or 0 when there is none. One request.
func (c *OrderCheck) OldestBare(ctx context.Context, lane Lane) (uint64, error) {
	m, err := c.next(ctx, c.top.LaneSubject(lane), 1)
	if err != nil || m == nil {
		return 0, err
	}
	return m.Sequence, nil
}

// OlderPendingBare returns the messages on lane's bare subject whose sequence is below
// before and whose body names conversation id, by idOf, oldest first. It reads every
// message on the bare subject below before, one request each: its cost grows with the
// backlog published that way, so producers should publish to <lane subject>.<id>.
func (c *OrderCheck) OlderPendingBare(ctx context.Context, lane Lane, id string, before uint64, idOf func(data []byte) string) ([]*DirectMsg, error) {
	return c.older(ctx, c.top.LaneSubject(lane), before, func(m *jetstream.RawStreamMsg) bool {
		return idOf(m.Data) == id
	})
}

// older reads the messages on subject below before, keeping those keep accepts (all when
// keep is nil).
func (c *OrderCheck) older(ctx context.Context, subject string, before uint64, keep func(*jetstream.RawStreamMsg) bool) ([]*DirectMsg, error) {
	var out []*DirectMsg
	for from := uint64(1); from < before; {
		m, err := c.next(ctx, subject, from)
		if err != nil {
			return out, err
		}
		if m == nil || m.Sequence >= before {
			break
		}
		if keep == nil || keep(m) {
			out = append(out, &DirectMsg{raw: m, stream: c.stream, streamName: c.top.Stream})
		}
		from = m.Sequence + 1
	}
	return out, nil
}

// next returns the first message on subject at or after sequence from, or nil when there is
// none.
func (c *OrderCheck) next(ctx context.Context, subject string, from uint64) (*jetstream.RawStreamMsg, error) {
	m, err := c.stream.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: reading %s from %d: %w", c.top.Stream, subject, from, err)
	}
	return m, nil
}

// DirectMsg is a work-stream message read by sequence rather than delivered by a consumer,
// for a worker to apply ahead of its turn (see OrderCheck). It is a jetstream.Msg, so a
// worker handles it like a delivered one, but settling it means something else:
//
//   - Ack, DoubleAck, Term and TermWithReason remove it from the stream (confirmed by the
//     stream's leader), so the lane's consumer never delivers it; if it is gone already
//     (acknowledged through the consumer meanwhile) they succeed.
//   - Nak, NakWithDelay and InProgress do nothing: the message stays in the stream and the
//     lane's consumer delivers it in its turn.
//
// If the lane's consumer delivered the same sequence meanwhile, that delivery stays pending
// until it is acknowledged or its AckWait ends; acknowledging it after the removal is
// harmless.
type DirectMsg struct {
	raw        *jetstream.RawStreamMsg
	stream     jetstream.Stream
	streamName string
}

// directAckTimeout bounds the removal behind Ack and Term, which take no context.
const directAckTimeout = 10 * time.Second

// Metadata gives the stream sequence and time; NumDelivered is 1 and the consumer parts
// are zero.
func (m *DirectMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{
		Sequence:     jetstream.SequencePair{Stream: m.raw.Sequence},
		NumDelivered: 1,
		Timestamp:    m.raw.Time,
		Stream:       m.streamName,
	}, nil
}

// Data is the message's body.
func (m *DirectMsg) Data() []byte { return m.raw.Data }

// Headers are the message's headers.
func (m *DirectMsg) Headers() nats.Header { return m.raw.Header }

// Subject is the subject the message was published to.
func (m *DirectMsg) Subject() string { return m.raw.Subject }

// Reply is empty: there is no consumer to answer.
func (m *DirectMsg) Reply() string { return "" }

// Ack removes the message from the stream.
func (m *DirectMsg) Ack() error {
	ctx, cancel := context.WithTimeout(context.Background(), directAckTimeout)
	defer cancel()
	return m.remove(ctx)
}

// DoubleAck removes the message from the stream; it returns once the leader confirmed.
func (m *DirectMsg) DoubleAck(ctx context.Context) error { return m.remove(ctx) }

// Nak leaves the message to its lane's consumer.
func (m *DirectMsg) Nak() error { return nil }

// NakWithDelay leaves the message to its lane's consumer.
func (m *DirectMsg) NakWithDelay(time.Duration) error { return nil }

// InProgress does nothing: no AckWait runs on a message read by sequence.
func (m *DirectMsg) InProgress() error { return nil }

// Term removes the message from the stream.
func (m *DirectMsg) Term() error { return m.Ack() }

// TermWithReason removes the message from the stream.
func (m *DirectMsg) TermWithReason(string) error { return m.Ack() }

// remove deletes the message from the stream; a message already gone is no error.
func (m *DirectMsg) remove(ctx context.Context) error {
	err := m.stream.DeleteMsg(ctx, m.raw.Sequence)
	if err == nil {
		return nil
	}
	// The server's reasons for a missing sequence vary (not found, store EOF): ask.
	if _, gerr := m.stream.GetMsg(ctx, m.raw.Sequence); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return fmt.Errorf("stream %s: removing message %d: %w", m.streamName, m.raw.Sequence, err)
}

var _ jetstream.Msg = (*DirectMsg)(nil)
