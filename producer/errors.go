package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

var (
	// ErrInvalid matches every error about an update that breaks the message rules; such an
	// update is never sent. It is kustomer.ErrInvalid.
	ErrInvalid = kustomer.ErrInvalid
	// ErrEventID: the event id is empty, too long or holds characters a NATS header cannot
	// carry. Nothing was sent.
	ErrEventID = errors.New("producer: unusable event id")
	// ErrWrongStream: JetStream stored the message in a stream other than Config.Stream,
	// because another stream's subjects overlap the producer's subject. The worker will not
	// see it. Publishing again does not help: fix the streams or the subject.
	ErrWrongStream = errors.New("stored in another stream")
	// ErrNoStream: no stream takes the subject (or JetStream did not answer): the worker's
	// stream is not declared yet, or the subject is wrong. Retryable.
	ErrNoStream = jetstream.ErrNoStreamResponse
)

// PublishError is a message that passed validation but was not confirmed as stored.
type PublishError struct {
	EventID string // the caller's event id, sent as Nats-Msg-Id
	Subject string // where the message was published
	Err     error  // what went wrong
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("producer: publish event %q to %s: %v", e.EventID, e.Subject, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// Retryable reports whether publishing the same message again, with the same event id, may
// succeed: JetStream or the connection did not answer in time, or no stream took the subject
// yet. Within the stream's dedup window a retry of a message that was in fact stored is
// recognised as a duplicate. A refusal (ErrWrongStream, limits reached, a closed connection,
// a cancelled context) is not retryable.
func (e *PublishError) Retryable() bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(e.Err, ErrWrongStream), errors.Is(e.Err, context.Canceled), errors.Is(e.Err, nats.ErrConnectionClosed):
		return false
	case errors.As(e.Err, &apiErr):
		return apiErr.Code == 503
	}
	return errors.Is(e.Err, context.DeadlineExceeded) ||
		errors.Is(e.Err, nats.ErrTimeout) ||
		errors.Is(e.Err, nats.ErrNoResponders) ||
		errors.Is(e.Err, jetstream.ErrNoStreamResponse) ||
		errors.Is(e.Err, nats.ErrConnectionReconnecting) ||
		errors.Is(e.Err, nats.ErrDisconnected)
}
