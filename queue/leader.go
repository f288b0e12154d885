package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Tuned waits of the reads a stream's leader answers (readLeader): one attempt's wait for the
// answer, and the pauses between attempts.
const (
	leaderAttempt    = time.Second
	leaderRetryFirst = 50 * time.Millisecond
	leaderRetryMax   = 500 * time.Millisecond
)

// readLeader runs read, a request that the stream's leader answers, giving each attempt a
// wait of its own (leaderAttempt), and tries again while ctx lasts. A request sent while the
// stream elects a new leader (its node died) is never answered: without this, the caller
// would wait out its whole deadline for it, seconds after the new leader is there. An answer,
// an error among them (no such message), ends it at once.
func readLeader[T any](ctx context.Context, read func(context.Context) (T, error)) (T, error) {
	var last error // the last unanswered attempt's, for the error when ctx ends between attempts
	attempt := func() (T, error) {
		actx, cancel := context.WithTimeout(ctx, leaderAttempt)
		defer cancel()
		v, err := read(actx)
		if err != nil && (ctx.Err() != nil || !unanswered(err)) {
			return v, backoff.Permanent(err)
		}
		last = err
		return v, err
	}
	schedule := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(leaderRetryFirst),
		backoff.WithMaxInterval(leaderRetryMax),
		backoff.WithMaxElapsedTime(0), // until ctx ends
	)
	v, err := backoff.RetryWithData(attempt, backoff.WithContext(schedule, ctx))
	if err != nil && last != nil && err == ctx.Err() {
		err = fmt.Errorf("%w (the last attempt: %v)", err, last)
	}
	return v, err
}

// unanswered reports whether err says a request got no answer in time, as during a leader
// election, rather than an answer.
func unanswered(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// getMsg is stream.GetMsg through readLeader.
func getMsg(ctx context.Context, stream jetstream.Stream, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	return readLeader(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return stream.GetMsg(ctx, seq, opts...)
	})
}
