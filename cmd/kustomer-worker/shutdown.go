package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// errCutShort ends a request abandoned by a second signal.
var errCutShort = errors.New("shutdown cut short by a second signal")

// updater is what the pool calls of the Kustomer client.
type updater interface {
	UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error)
}

// cutShortUpdater abandons requests in flight once hardStop ends, so that the pool's shutdown
// does not wait its ShutdownTimeout for them.
//
// It stands in for a hook of the pool: worker.Pool should take hardStop itself and, once it
// ends, cancel its "hard" context at once, as when ShutdownTimeout passes, so that a request
// cut short is handed back without spending an attempt. Until then an abandoned request
// counts as one failed attempt, and cutShortDeadLetters keeps it out of the dead-letter
// stream.
type cutShortUpdater struct {
	next     updater
	hardStop context.Context
}

func (u cutShortUpdater) UpdateConversation(ctx context.Context, up kustomer.Update) (*kustomer.Result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(u.hardStop, func() { cancel(errCutShort) })
	defer stop()
	res, err := u.next.UpdateConversation(ctx, up)
	if err != nil && errors.Is(context.Cause(ctx), errCutShort) {
		return nil, fmt.Errorf("%w: %w", errCutShort, err)
	}
	return res, err
}

// deadLetterer is what the pool calls to store a dead letter.
type deadLetterer interface {
	Publish(ctx context.Context, msg jetstream.Msg, dl queue.Failure) error
}

// cutShortDeadLetters refuses to store dead letters once hardStop ended: a message whose last
// attempt was abandoned by the second signal did not fail, and a refused dead letter keeps the
// message, which the pool then hands back for redelivery.
type cutShortDeadLetters struct {
	next     deadLetterer
	hardStop context.Context
}

func (d cutShortDeadLetters) Publish(ctx context.Context, msg jetstream.Msg, dl queue.Failure) error {
	if d.hardStop.Err() != nil {
		return errCutShort
	}
	return d.next.Publish(ctx, msg, dl)
}
