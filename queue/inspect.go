package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

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

	Pinned    bool          // the consumer has a pinned priority group: one replica active, the others standbys
	PinID     string        // the server's current pin; "" when no replica is pinned
	PinnedAt  time.Time     // when the server pinned it
	Replicas  []ReplicaRole // the replicas that published their role lately, the active first
	RolesRead error         // why Replicas could not be read; nil when they were

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
		st.Pinned = ci.Config.PriorityPolicy == jetstream.PriorityPolicyPinned
		for _, g := range ci.PriorityGroups {
			if g.Group == t.PriorityGroup {
				st.PinID, st.PinnedAt = g.PinnedClientID, g.PinnedTS
			}
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		st.Undelivered = st.Backlog
	default:
		return st, fmt.Errorf("consumer %s: %w", t.Consumer, err)
	}
	// The roles are a courtesy of the replicas: failing to read them fails nothing else.
	st.Replicas, st.RolesRead = ReadRoles(ctx, js, t)
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
