package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// Headers a dead letter carries on top of the original message's own headers.
const (
	HeaderReason           = "Dlq-Reason"            // the validation or API error, readable
	HeaderClass            = "Dlq-Class"             // invalid, rejected or exhausted
	HeaderStatus           = "Dlq-Status"            // the HTTP status, when there was one
	HeaderAttempts         = "Dlq-Attempts"          // requests spent on the message
	HeaderOriginalSubject  = "Dlq-Original-Subject"  // where the message was published
	HeaderOriginalSequence = "Dlq-Original-Sequence" // its sequence in the work stream
	HeaderFailedAt         = "Dlq-Failed-At"         // RFC 3339
	HeaderGroup            = "Dlq-Group"             // a merged update's messages (--coalesce): their work-stream sequences, comma-separated
)

// DeadLetterClass is why a message was dead-lettered.
type DeadLetterClass string

const (
	ClassInvalid   DeadLetterClass = "invalid"   // failed validation; no request was made
	ClassRejected  DeadLetterClass = "rejected"  // Kustomer answered a non-retryable 4xx
	ClassExhausted DeadLetterClass = "exhausted" // retryable failures until attempts ran out
	// ClassStranded: the work stream kept the message after its consumer delivered it
	// MaxDeliver times without an outcome (see Stranded); it was never applied.
	ClassStranded DeadLetterClass = "stranded"
)

// Failure is what is known about a message that can never succeed.
type Failure struct {
	Class    DeadLetterClass
	Reason   string
	Status   int // HTTP status, 0 if none
	Attempts int
	FailedAt time.Time
	// Group, for a message sent in a merged update (the pool's Config.Coalesce), lists the
	// work-stream sequences of the messages that went in it; "" otherwise.
	Group string
}

// maxReasonLen keeps headers reasonable; reasons come from validation or a 1 KB error body.
const maxReasonLen = 2048

// DeadLetterPublisher publishes dead letters to the dead-letter subject.
type DeadLetterPublisher struct {
	JS      jetstream.JetStream
	Subject string
}

// Publish stores msg's original bytes and headers with the dead-letter headers added. It
// returns only once JetStream acknowledged the publish; only then may the original be acked.
// The publish carries a Nats-Msg-Id derived from the work stream and sequence, so a retried
// publish for the same message is stored once.
func (d *DeadLetterPublisher) Publish(ctx context.Context, msg jetstream.Msg, dl Failure) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("dead letter: message metadata: %w", err)
	}
	out := nats.NewMsg(d.Subject)
	out.Data = msg.Data()
	for k, vs := range msg.Headers() {
		if strings.HasPrefix(k, "Nats-") {
			// JetStream acts on these at publish (Nats-Msg-Id dedup, Nats-Expected-Stream,
			// Nats-Rollup, Nats-TTL...): meant for the work stream, they would make the dead
			// letter a duplicate or refuse it. Keep them readable under another name.
			k = "Dlq-Original-" + strings.TrimPrefix(k, "Nats-")
		}
		for _, v := range vs {
			out.Header.Add(k, v)
		}
	}
	reason := logtext.Truncate(dl.Reason, maxReasonLen, "…")
	if dl.FailedAt.IsZero() {
		dl.FailedAt = time.Now()
	}
	out.Header.Set(HeaderReason, reason)
	out.Header.Set(HeaderClass, string(dl.Class))
	if dl.Status != 0 {
		out.Header.Set(HeaderStatus, strconv.Itoa(dl.Status))
	}
	out.Header.Set(HeaderAttempts, strconv.Itoa(dl.Attempts))
	out.Header.Set(HeaderOriginalSubject, msg.Subject())
	out.Header.Set(HeaderOriginalSequence, strconv.FormatUint(md.Sequence.Stream, 10))
	out.Header.Set(HeaderFailedAt, dl.FailedAt.UTC().Format(time.RFC3339))
	if dl.Group != "" {
		out.Header.Set(HeaderGroup, dl.Group)
	}
	id := "dlq-" + md.Stream + "-" + strconv.FormatUint(md.Sequence.Stream, 10)
	if _, err := d.JS.PublishMsg(ctx, out, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("dead letter: publish: %w", err)
	}
	return nil
}
