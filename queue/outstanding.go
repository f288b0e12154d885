package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
)

// Unacked is a message of the work stream that the consumer delivered and nobody has
// acknowledged yet.
type Unacked struct {
	Ref     MsgRef
	Subject string
	Data    []byte
}

// Outstanding reads what the work stream still holds of the messages the consumer delivered:
// on a work-queue stream an acknowledged message is deleted, so every message still in the
// stream at or below the consumer's delivered sequence is unacknowledged, held by a process
// that may have died. A starting process reads them to keep each conversation's order.
type Outstanding struct {
	JS       jetstream.JetStream
	Topology Topology
	// Limit caps how many messages Unacked reads per lane (over both of its subjects); default
	// 10 × the lane's consumer's MaxAckPending. The server lets no more than MaxAckPending go
	// unacknowledged; the margin is for a MaxAckPending lowered since those deliveries and for
	// messages that ran out of deliveries and still sit in the stream.
	Limit int
	// Stream, optional, is the work stream already looked up (as Consumers.Stream): then it
	// is not read again.
	Stream jetstream.Stream

	mu   sync.Mutex
	work jetstream.Stream // the work stream once looked up: a handle by name, good for a stream re-created since
}

// Own marks what a replica's own pull brought on one lane, so that Unacked does not list it:
// when the first message of a replica's turn as the active one is a first delivery at stream
// sequence Below, the consumer delivered every message it gave another replica before it,
// at a lower sequence, and every message of that lane at Below or above came to this
// replica. The zero Own marks nothing.
type Own struct {
	Lane  Lane
	Below uint64
}

// Unacked lists the delivered, unacknowledged messages of both lanes, oldest first: one
// request to read each lane's consumer, then one per message (the stream skips what was
// acknowledged) and one per subject that finds the end, at most Limit messages per lane. On
// the lane of own, if set, it lists only those below own.Below: the messages the consumer
// delivered before this replica's own pull (see Own). The lanes are read at once, and so are
// a lane's subjects once its consumer is read: over a slow link to NATS it costs two round
// trips plus one per message of the longest subject, not six or more.
func (o *Outstanding) Unacked(ctx context.Context, own Own) ([]Unacked, error) {
	stream, err := o.stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", o.Topology.Stream, err)
	}
	lanes := Lanes()
	found := make([][]Unacked, len(lanes))
	errs := make([]error, len(lanes))
	var wg sync.WaitGroup
	for i, l := range lanes {
		wg.Go(func() { found[i], errs[i] = o.unackedLane(ctx, stream, l, own) })
	}
	wg.Wait()
	var out []Unacked
	for _, msgs := range found {
		out = append(out, msgs...)
	}
	slices.SortFunc(out, func(a, b Unacked) int { return cmp.Compare(a.Ref.Seq, b.Ref.Seq) })
	return out, errors.Join(errs...)
}

// unackedLane is Unacked of lane l: its consumer read, then its subjects read at once, at most
// the lane's limit in all (a budget the subjects share).
func (o *Outstanding) unackedLane(ctx context.Context, stream jetstream.Stream, l Lane, own Own) ([]Unacked, error) {
	name := o.Topology.LaneConsumer(l)
	cons, err := readLeader(ctx, func(ctx context.Context) (jetstream.Consumer, error) { return stream.Consumer(ctx, name) })
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", name, err)
	}
	info := cons.CachedInfo() // as the lookup just read it
	limit := o.Limit
	if limit <= 0 {
		limit = 10 * max(info.Config.MaxAckPending, 1)
	}
	last := info.Delivered.Stream
	if own.Lane == l && own.Below > 0 {
		last = min(last, own.Below-1)
	}
	var budget atomic.Int64 // the lane's limit, shared by its subjects
	budget.Store(int64(limit))
	subjects := o.Topology.LaneSubjects(l)
	found := make([][]Unacked, len(subjects))
	errs := make([]error, len(subjects))
	var wg sync.WaitGroup
	for i, subject := range subjects {
		wg.Go(func() { found[i], errs[i] = o.unacked(ctx, stream, subject, info.AckFloor.Stream, last, &budget) })
	}
	wg.Wait()
	var out []Unacked
	for _, msgs := range found {
		out = append(out, msgs...)
	}
	return out, errors.Join(errs...)
}

// unacked reads the messages on subject after floor up to last, one from budget each, while
// budget lasts.
func (o *Outstanding) unacked(ctx context.Context, stream jetstream.Stream, subject string, floor, last uint64, budget *atomic.Int64) ([]Unacked, error) {
	var out []Unacked
	for seq := floor + 1; seq <= last && budget.Load() > 0; {
		m, err := getMsg(ctx, stream, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("stream %s: message on %s at or after %d: %w", o.Topology.Stream, subject, seq, err)
		}
		if m.Sequence > last || budget.Add(-1) < 0 {
			break
		}
		out = append(out, Unacked{Ref: NewMsgRef(m.Sequence, m.Time), Subject: m.Subject, Data: m.Data})
		seq = m.Sequence + 1
	}
	return out, nil
}

// Pending reports whether the message ref is still in the stream, unacknowledged.
func (o *Outstanding) Pending(ctx context.Context, ref MsgRef) (bool, error) {
	stream, err := o.stream(ctx)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", o.Topology.Stream, err)
	}
	m, err := getMsg(ctx, stream, ref.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return m.Time.UnixNano() == ref.Stored, nil
}

// stream is the work stream, looked up once; while the stream elects a leader, the lookup
// is tried again each second (readLeader) instead of waiting out ctx for an answer that never
// comes.
func (o *Outstanding) stream(ctx context.Context) (jetstream.Stream, error) {
	o.mu.Lock()
	work := o.work
	if work == nil && o.Stream != nil {
		work, o.work = o.Stream, o.Stream
	}
	o.mu.Unlock()
	if work != nil {
		return work, nil
	}
	work, err := readLeader(ctx, func(ctx context.Context) (jetstream.Stream, error) { return o.JS.Stream(ctx, o.Topology.Stream) })
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.work = work
	o.mu.Unlock()
	return work, nil
}
