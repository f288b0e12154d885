package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Stranded is a message the work stream still keeps although its lane's consumer will never
// deliver it again: it is at or below the consumer's acknowledgement floor. On a work-queue
// stream an acknowledged (or terminated) message is deleted, and the server moves the floor
// past a message that reached MaxDeliver without being acknowledged while the stream keeps
// it (when the consumer holds nothing in progress, its floor is taken to be its delivered
// sequence: the server moves the floor only on the next acknowledgement): one Nak'd on its last delivery, or held by a process that died on its last delivery.
// Nothing would ever apply it, dead-letter it or show it. JetStream's max-deliveries advisory
// says the same, but it is plain NATS and lost while no worker runs; this rule lasts.
type Stranded struct {
	Lane  Lane
	Floor uint64     // the lane consumer's acknowledgement floor when the message was found
	Msg   *DirectMsg // the message; its Ack deletes it from the stream
}

// Stranded lists the stranded messages of both lanes, at most limit of each lane (limit <= 0:
// DefaultStrandedLimit), oldest first per lane subject. Cost, in requests to the stream's leader: one
// per lane's consumer and one per lane subject, plus one per message found. A lane whose
// consumer does not exist yet is skipped.
func (o *Outstanding) Stranded(ctx context.Context, limit int) ([]Stranded, error) {
	stream, err := o.stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", o.Topology.Stream, err)
	}
	if limit <= 0 {
		limit = DefaultStrandedLimit
	}
	var out []Stranded
	for _, l := range Lanes() {
		floor, found, err := ackFloor(ctx, stream, o.Topology.LaneConsumer(l))
		if err != nil {
			return out, err
		}
		if !found {
			continue
		}
		err = strandedOn(ctx, stream, o.Topology, l, floor, limit, func(m *jetstream.RawStreamMsg) {
			out = append(out, Stranded{Lane: l, Floor: floor, Msg: &DirectMsg{raw: m, stream: stream, streamName: o.Topology.Stream}})
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// DefaultStrandedLimit is how many stranded messages of a lane one read lists (Stranded) or
// counts (ReadStatus) at most.
const DefaultStrandedLimit = 1000

// ackFloor reads the acknowledgement floor (a stream sequence) of the consumer name; found is
// false when the consumer does not exist.
func ackFloor(ctx context.Context, stream jetstream.Stream, name string) (floor uint64, found bool, err error) {
	cons, err := readLeader(ctx, func(ctx context.Context) (jetstream.Consumer, error) { return stream.Consumer(ctx, name) })
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("consumer %s: %w", name, err)
	}
	return floorOf(cons.CachedInfo()), true, nil
}

// floorOf is the stream sequence at or below which the consumer of info will deliver nothing
// again: its acknowledgement floor or, while it has nothing in progress, its delivered
// sequence (every message delivered was settled or reached MaxDeliver; the server leaves the
// floor behind such a message until the next acknowledgement moves it).
func floorOf(info *jetstream.ConsumerInfo) uint64 {
	if info.NumAckPending == 0 {
		return max(info.AckFloor.Stream, info.Delivered.Stream)
	}
	return info.AckFloor.Stream
}

// strandedOn calls found for each message of lane l at or below floor that the stream keeps,
// oldest first on each of the lane's subjects, at most limit in all.
func strandedOn(ctx context.Context, stream jetstream.Stream, t Topology, l Lane, floor uint64, limit int, found func(*jetstream.RawStreamMsg)) error {
	n := 0
	for _, subject := range t.LaneSubjects(l) {
		for seq := uint64(1); seq <= floor && n < limit; {
			m, err := getMsg(ctx, stream, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("stream %s: message on %s at or after %d: %w", t.Stream, subject, seq, err)
			}
			if m.Sequence > floor {
				break
			}
			found(m)
			n++
			seq = m.Sequence + 1
		}
	}
	return nil
}
