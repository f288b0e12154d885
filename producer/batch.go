package producer

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// BatchConfig tunes a Batch. The zero value of every field means its default.
type BatchConfig struct {
	// Window is how many publishes may wait for their acknowledgement at once. Default 4096.
	Window int
	// AckTimeout is how long one publish waits for its acknowledgement before it is sent
	// again (with the same event id, so it is stored once). Default 10s.
	AckTimeout time.Duration
	// MaxRetries is how many times a publish that failed or timed out is sent again before
	// the Batch gives up. Default 5.
	MaxRetries int
}

// Batch publishes many updates without waiting for each acknowledgement, for bursts and
// backfills. Publish validates at once and returns an update's problems itself (nothing is
// sent for it; the batch goes on); publish failures are reported by Wait. Messages are stored
// in the order given except around a retry (see queue.Publisher), so send updates that must
// apply in order to one conversation with Producer.Publish, or in separate batches.
//
// Publish and Wait are for one goroutine at a time; Stats may be called from any. Close the
// Batch when done, after Wait.
type Batch struct {
	pub     *queue.Publisher
	subject string
}

// NewBatch returns a Batch publishing on the Producer's connection, lane and stream.
func (p *Producer) NewBatch(cfg BatchConfig) (*Batch, error) {
	pub, err := queue.NewPublisher(p.nc, queue.PublisherConfig{
		Window:     cfg.Window,
		AckTimeout: cfg.AckTimeout,
		MaxRetries: cfg.MaxRetries,
		Stream:     p.cfg.Stream,
	})
	if err != nil {
		return nil, fmt.Errorf("producer: batch: %w", err)
	}
	return &Batch{pub: pub, subject: p.cfg.LaneSubject()}, nil
}

// Publish validates u and eventID and sends the message, waiting only while the window is
// full. An invalid update returns its error (matching ErrInvalid or ErrEventID) and the Batch
// goes on; any other error means the Batch stopped: an earlier publish was given up on, or
// ctx ended.
func (b *Batch) Publish(ctx context.Context, eventID string, u kustomer.Update) error {
	data, err := Marshal(eventID, u)
	if err != nil {
		return err
	}
	return b.send(ctx, eventID, u.ID, data)
}

// PublishJSON is Publish for a message in its JSON form, checked with kustomer.Decode and
// sent as given. The Batch keeps a copy of msg: the caller may reuse it.
func (b *Batch) PublishJSON(ctx context.Context, eventID string, msg []byte) error {
	id, err := CheckJSON(eventID, msg)
	if err != nil {
		return err
	}
	return b.send(ctx, eventID, id, bytes.Clone(msg))
}

// PublishChecked publishes msg, a message in JSON form that already passed CheckJSON for
// eventID and conversationID, without decoding it again: for a producer that validates a
// whole input before it publishes any of it, in a pass of its own (kustomer-worker enqueue
// checks every line of a file on every core, then publishes), and would otherwise pay for
// the validation twice. The event id and the conversation id, which make the header and
// the subject, are checked again; the rest of msg is sent as given, so a msg that did not
// pass CheckJSON reaches the worker's dead letters instead of being refused here. Unlike
// PublishJSON it does not copy msg: the Batch keeps it until Wait returns, and the caller
// must not change it.
func (b *Batch) PublishChecked(ctx context.Context, eventID, conversationID string, msg []byte) error {
	if err := CheckEventID(eventID); err != nil {
		return err
	}
	if !kustomer.ValidID(conversationID) {
		return invalid(eventID, &kustomer.ValidationError{Problems: []kustomer.FieldError{
			{Field: "id", Problem: fmt.Sprintf("%q is not a conversation id (24 hex characters)", conversationID)}}})
	}
	return b.send(ctx, eventID, conversationID, msg)
}

// PublishRunLine is PublishChecked for line n of the input of run: the message also carries
// the run id and the line number in two headers (queue.HeaderRunID, queue.HeaderRunLine),
// which the worker records when it applies the update, its dead letter keeps, and
// `kustomer-worker status --run` counts by. run must pass queue.CheckRunID.
func (b *Batch) PublishRunLine(ctx context.Context, eventID, conversationID, run string, n int64, msg []byte) error {
	if err := CheckEventID(eventID); err != nil {
		return err
	}
	if err := queue.CheckRunID(run); err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	if !kustomer.ValidID(conversationID) {
		return invalid(eventID, &kustomer.ValidationError{Problems: []kustomer.FieldError{
			{Field: "id", Problem: fmt.Sprintf("%q is not a conversation id (24 hex characters)", conversationID)}}})
	}
	m := &nats.Msg{Subject: b.subject + "." + conversationID, Data: msg, Header: nats.Header{
		jetstream.MsgIDHeader: []string{eventID},
		queue.HeaderRunID:     []string{run},
		queue.HeaderRunLine:   []string{strconv.FormatInt(n, 10)},
	}}
	if err := b.pub.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("producer: batch: %w", err)
	}
	return nil
}

func (b *Batch) send(ctx context.Context, eventID, id string, data []byte) error {
	if err := b.pub.Publish(ctx, b.subject+"."+id, data, eventID); err != nil {
		// The error may be an earlier message's (it names its subject): the Batch stopped.
		return fmt.Errorf("producer: batch: %w", err)
	}
	return nil
}

// Wait returns once JetStream acknowledged every message published so far (stored, or
// recognised as a duplicate of an earlier event id), sending failed ones again as needed. It
// returns an error if a message could not be published after MaxRetries or was stored in
// another stream, or when ctx ends first.
func (b *Batch) Wait(ctx context.Context) error {
	if err := b.pub.Wait(ctx); err != nil {
		return fmt.Errorf("producer: batch: %w", err)
	}
	return nil
}

// Stats counts what the Batch has done so far.
func (b *Batch) Stats() queue.PublishStats { return b.pub.Stats() }

// Close stops acknowledgement handling. Publishes not yet acknowledged are abandoned: call
// Wait first.
func (b *Batch) Close() { b.pub.Close() }
