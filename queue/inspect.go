package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Status is a snapshot of the work stream, its lanes' consumers and the dead-letter stream.
type Status struct {
	Time time.Time // when it was read

	Backlog   uint64 // messages in the work stream: not yet applied or dead-lettered
	Processed uint64 // messages that have left the work stream since it was created
	LastSeq   uint64 // the work stream's last sequence: messages ever published to it

	ConsumerFound bool   // false until a worker created the consumers of both lanes
	Undelivered   uint64 // consumers: not yet delivered to any worker
	AckPending    int    // consumers: delivered, not yet acknowledged
	Redelivered   int    // consumers: delivered more than once and not yet acknowledged

	Live     LaneStatus // the live lane
	Backfill LaneStatus // the backfill lane

	Pinned    bool          // the live lane's consumer has a pinned priority group: one replica active, the others standbys
	PinID     string        // the active replica's pin: the live lane's, else the backfill lane's; "" when none is pinned
	PinnedAt  time.Time     // when the server pinned it
	Replicas  []ReplicaRole // the replicas that published their role lately, the active first
	RolesRead error         // why Replicas could not be read; nil when they were

	DeadLetters uint64                  // messages in the dead-letter stream
	ByClass     map[DeadLetterClass]int // dead letters by class; "" counts those without a class
}

// Lane returns the status of lane l.
func (s Status) Lane(l Lane) LaneStatus {
	if l == LaneBackfill {
		return s.Backfill
	}
	return s.Live
}

// LaneStatus is a snapshot of one lane: its consumer and its oldest message.
type LaneStatus struct {
	Consumer      string // the lane's durable consumer
	ConsumerFound bool   // false until a worker created it; the counts below are then 0
	Backlog       uint64 // the lane's messages in the stream: Undelivered plus AckPending
	Undelivered   uint64 // not yet delivered to any worker
	AckPending    int    // delivered, not yet acknowledged
	Redelivered   int    // delivered more than once and not yet acknowledged
	// Delivered counts the consumer's deliveries since it was created, redeliveries
	// included; Delivered minus AckPending grows by one for every message of the lane that
	// left the stream through the consumer, and by one for every redelivery.
	Delivered uint64
	Oldest    time.Time // when the lane's oldest message was stored; zero when the lane is empty
	// Stranded counts the lane's messages the stream keeps that its consumer will never
	// deliver again (see Stranded), up to DefaultStrandedLimit: a running worker dead-letters
	// them (class stranded).
	Stranded int

	Pinned   bool      // the consumer has a pinned priority group
	PinID    string    // the server's current pin on the consumer; "" when no replica is pinned
	PinnedAt time.Time // when the server pinned it
}

// Settled is Delivered minus AckPending: the lane's messages that left the stream through
// its consumer since it was created, plus its redeliveries. Its growth is the lane's
// throughput.
func (l LaneStatus) Settled() uint64 { return l.Delivered - min(l.Delivered, uint64(l.AckPending)) }

// ReadStatus reads the work stream, the lanes' consumers and the dead-letter stream of t.
// counter counts the dead letters by class; pass the same one on every call to read only the
// dead letters added since the last. It costs a few requests: the streams' and consumers'
// info, and two reads per lane for its oldest message.
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
	st.ConsumerFound = true
	for _, l := range Lanes() {
		ls, err := readLane(ctx, js, work, t, l)
		if err != nil {
			return st, err
		}
		st.ConsumerFound = st.ConsumerFound && ls.ConsumerFound
		st.Undelivered += ls.Undelivered
		st.AckPending += ls.AckPending
		st.Redelivered += ls.Redelivered
		if l == LaneBackfill {
			st.Backfill = ls
		} else {
			st.Live = ls
			st.Pinned = ls.Pinned
		}
	}
	// The live lane's pin names the active replica; while no replica holds it, the backfill
	// lane's does (see Follower).
	for _, ls := range []LaneStatus{st.Live, st.Backfill} {
		if st.PinID == "" && ls.PinID != "" {
			st.PinID, st.PinnedAt = ls.PinID, ls.PinnedAt
		}
	}
	if !st.ConsumerFound {
		// Messages of a lane without a consumer wait for it.
		st.Undelivered = st.Backlog - min(st.Backlog, uint64(st.AckPending))
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

// ReadLanes reads both lanes of t: their consumers and the time of their oldest messages;
// four to six requests, fewer than ReadStatus.
func ReadLanes(ctx context.Context, js jetstream.JetStream, t Topology) (live, backfill LaneStatus, err error) {
	work, err := js.Stream(ctx, t.Stream)
	if err != nil {
		return live, backfill, streamError(t.Stream, err)
	}
	if live, err = readLane(ctx, js, work, t, LaneLive); err != nil {
		return live, backfill, err
	}
	backfill, err = readLane(ctx, js, work, t, LaneBackfill)
	return live, backfill, err
}

// readLane reads lane l's consumer and the time of its oldest message.
func readLane(ctx context.Context, js jetstream.JetStream, work jetstream.Stream, t Topology, l Lane) (LaneStatus, error) {
	ls := LaneStatus{Consumer: t.LaneConsumer(l)}
	cons, err := js.Consumer(ctx, t.Stream, ls.Consumer)
	switch {
	case err == nil:
		ci := cons.CachedInfo()
		ls.ConsumerFound = true
		ls.Undelivered, ls.AckPending, ls.Redelivered = ci.NumPending, ci.NumAckPending, ci.NumRedelivered
		ls.Backlog = ci.NumPending + uint64(ci.NumAckPending)
		ls.Delivered = ci.Delivered.Consumer
		ls.Pinned = ci.Config.PriorityPolicy == jetstream.PriorityPolicyPinned
		for _, g := range ci.PriorityGroups {
			if g.Group == t.PriorityGroup {
				ls.PinID, ls.PinnedAt = g.PinnedClientID, g.PinnedTS
			}
		}
		err := strandedOn(ctx, work, t, l, floorOf(ci), DefaultStrandedLimit, func(*jetstream.RawStreamMsg) { ls.Stranded++ })
		if err != nil {
			return ls, err
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	default:
		return ls, fmt.Errorf("consumer %s: %w", ls.Consumer, err)
	}
	for _, subj := range t.LaneSubjects(l) {
		m, err := work.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return ls, fmt.Errorf("stream %s: oldest message on %s: %w", t.Stream, subj, err)
		}
		if ls.Oldest.IsZero() || m.Time.Before(ls.Oldest) {
			ls.Oldest = m.Time
		}
	}
	return ls, nil
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
