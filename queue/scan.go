package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// scanFrom says where a scan starts and ends.
type scanFrom struct {
	seq         uint64    // first sequence (ignored when time is set)
	time        time.Time // first stored time, when set
	until       uint64    // last sequence to read: the stream's last when the scan began
	headersOnly bool
	filter      string // only messages of this subject (wildcards allowed), when set
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
	if from.filter != "" {
		cfg.FilterSubjects = []string{from.filter}
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
