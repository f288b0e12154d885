package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// The pool's seams: each is the little it uses of a collaborator, so that tests of ordering and
// decisions can run without a NATS server or an HTTP server, and so that what comes next (pulls
// in a priority group, several consumers, bulk requests) is an implementation of one of these,
// not a change to the pool.

// Consumer is what the pool uses of a JetStream pull consumer: batches of messages and the
// consumer's own settings (AckWait, MaxDeliver), read once at start. A jetstream.Consumer is
// one; a wrapper can add options to every pull (a priority group, say).
type Consumer interface {
	// Fetch returns up to batch messages; the batch ends when the context given with
	// jetstream.FetchContext ends.
	Fetch(batch int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error)
	// CachedInfo is the consumer's configuration and state as last read; nil if never read.
	CachedInfo() *jetstream.ConsumerInfo
	// Info reads the consumer's configuration and state (its acknowledgement floor) afresh.
	Info(ctx context.Context) (*jetstream.ConsumerInfo, error)
}

// Updater applies one update to Kustomer; *kustomer.Client is the real one. Errors are
// *kustomer.APIError for answers and transport failures, or match kustomer.ErrInvalid for an
// update that failed validation.
type Updater interface {
	UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error)
}

// Reader reads one conversation; *kustomer.Client is the real one. The outage breaker probes
// with it: a read depends on none of the conversations whose updates fail.
type Reader interface {
	GetConversation(ctx context.Context, id string) (*kustomer.Result, error)
}

// DeadLetterer stores a message that can never succeed with the reason; it returns only once
// the store confirmed it. *queue.DeadLetterPublisher is the real one.
type DeadLetterer interface {
	Publish(ctx context.Context, msg jetstream.Msg, f queue.Failure) error
}

// AttemptStore remembers the attempts spent on a message across deliveries, restarts and
// replicas; *queue.Attempts is the real one.
type AttemptStore interface {
	Get(ctx context.Context, ref queue.MsgRef) (int, error)
	Set(ctx context.Context, ref queue.MsgRef, n int) error
	Delete(ctx context.Context, ref queue.MsgRef) error
}

// RunRecorder records that a message of a run (a backfill enqueued under a run id) was
// applied, before the message is acknowledged, so that the run's status counts it once
// whatever becomes of the acknowledgement; *queue.RunLog is the real one. A message of no
// run records nothing.
type RunRecorder interface {
	RecordApplied(ctx context.Context, h nats.Header, a queue.Applied) error
}

// Budget is what the pool asks of the pacer in front of every request; *Pacer is the real one.
type Budget interface {
	// Wait blocks until a request of the class may go out, or ctx ends.
	Wait(ctx context.Context, class pacer.Priority) error
	// Observe adapts the pace to a rate-limit reading; inflight is the number of requests
	// sent and not yet answered.
	Observe(rl kustomer.RateLimit, inflight int)
	// OrgThrottled pauses every request after an org-wide 429 and says for how long.
	OrgThrottled(rl kustomer.RateLimit) time.Duration
	// PausedUntil is when the current pause ends; zero when not paused.
	PausedUntil() time.Time
}

// Outstanding reads what the work stream still holds of messages the consumer delivered and
// nobody acknowledged; *queue.Outstanding is the real one.
type Outstanding interface {
	// Unacked lists them, oldest first.
	Unacked(ctx context.Context, own queue.Own) ([]queue.Unacked, error)
	// Pending reports whether one is still unacknowledged.
	Pending(ctx context.Context, ref queue.MsgRef) (bool, error)
	// Stranded lists, per lane, up to limit messages the work stream keeps that their
	// consumer will never deliver again (see queue.Stranded); limit <= 0 means a default.
	Stranded(ctx context.Context, limit int) ([]queue.Stranded, error)
}

// OlderFinder finds the messages of a conversation still pending in a lane with a stream
// sequence below before, oldest first; *queue.OrderCheck is the real one.
type OlderFinder interface {
	OlderPending(ctx context.Context, lane queue.Lane, id string, before uint64) ([]*queue.DirectMsg, error)
}

// warmer is what an OlderFinder may do besides: read, when the pool starts, what its first
// checks need, so that they do not wait for it one after another (*queue.OrderCheck.Warm).
type warmer interface {
	Warm(ctx context.Context)
}

var (
	_ OlderFinder  = (*queue.OrderCheck)(nil)
	_ warmer       = (*queue.OrderCheck)(nil)
	_ Outstanding  = (*queue.Outstanding)(nil)
	_ Consumer     = jetstream.Consumer(nil)
	_ Updater      = (*kustomer.Client)(nil)
	_ Reader       = (*kustomer.Client)(nil)
	_ DeadLetterer = (*queue.DeadLetterPublisher)(nil)
	_ AttemptStore = (*queue.Attempts)(nil)
	_ RunRecorder  = (*queue.RunLog)(nil)
	_ Budget       = (*pacer.Pacer)(nil)
)
