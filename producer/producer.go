package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

const (
	// DefaultSubject is the subject prefix of the worker's live lane, the default of its
	// --subject flag. Messages go to DefaultSubject + "." + conversation id.
	DefaultSubject = queue.DefaultSubject
	// DefaultBackfillSubject is the subject prefix of the worker's backfill lane, the default
	// of its --backfill-subject flag.
	DefaultBackfillSubject = queue.DefaultBackfillSubject
	// DefaultStream is the worker's work stream, the default of its --stream flag.
	DefaultStream = queue.DefaultStream
	// MaxEventIDBytes is the longest event id accepted.
	MaxEventIDBytes = 256
)

// Lane is one of the worker's two lanes (see the worker's docs/LANES.md). Updates of one
// conversation are applied in the order they were stored, whatever their lanes.
type Lane = queue.Lane

const (
	// Live is the lane for updates as things happen: the worker serves it first. The default.
	Live = queue.LaneLive
	// Backfill is the lane for bulk loads: the worker applies them with the rate budget the
	// live lane leaves, so a backfill never delays live updates.
	Backfill = queue.LaneBackfill
)

// Config says where a Producer publishes. The zero value publishes to the worker's live lane
// with its default subjects and stream.
type Config struct {
	// Subject is the live lane's subject prefix: an update to conversation ID goes to
	// Subject.ID. It must be the worker's --subject. Default DefaultSubject.
	Subject string
	// BackfillSubject is the backfill lane's subject prefix, the worker's --backfill-subject.
	// Default DefaultBackfillSubject.
	BackfillSubject string
	// Lane is the lane the Producer publishes to: Live or Backfill. Default Live.
	Lane Lane
	// Stream is the stream every message must be stored in (the worker's --stream): an
	// acknowledgement from another stream is an ErrWrongStream. Default DefaultStream.
	Stream string
}

// WithDefaults returns c with every empty field set to its default.
func (c Config) WithDefaults() Config {
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.BackfillSubject == "" {
		c.BackfillSubject = DefaultBackfillSubject
	}
	if c.Lane == "" {
		c.Lane = Live
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	return c
}

// Validate names the first field of c that cannot work.
func (c Config) Validate() error {
	for _, f := range []struct{ name, subject string }{{"Subject", c.Subject}, {"BackfillSubject", c.BackfillSubject}} {
		s := f.subject
		if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") ||
			strings.Contains(s, "..") || strings.ContainsAny(s, "*> \t\r\n") {
			return fmt.Errorf("producer: %s %q is not a plain NATS subject (no wildcards, spaces or empty tokens)", f.name, s)
		}
	}
	if queue.LanesOverlap(c.Subject, c.BackfillSubject) {
		return fmt.Errorf("producer: Subject %q and BackfillSubject %q overlap; the lanes need subjects of their own", c.Subject, c.BackfillSubject)
	}
	if c.Lane != Live && c.Lane != Backfill {
		return fmt.Errorf("producer: Lane %q is not a lane; use %q or %q", c.Lane, Live, Backfill)
	}
	if c.Stream == "" || strings.ContainsAny(c.Stream, ".*> \t\r\n") {
		return fmt.Errorf("producer: Stream %q is not a stream name", c.Stream)
	}
	return nil
}

// LaneSubject is the subject prefix of c's lane: Subject or BackfillSubject.
func (c Config) LaneSubject() string {
	if c.Lane == Backfill {
		return c.BackfillSubject
	}
	return c.Subject
}

// Producer publishes validated updates one at a time and waits for JetStream to store each.
// It is safe for concurrent use. It does not own the connection: close that yourself.
type Producer struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg Config
}

// New returns a Producer publishing on nc with cfg (defaults filled in).
func New(nc *nats.Conn, cfg Config) (*Producer, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return &Producer{nc: nc, js: js, cfg: cfg}, nil
}

// Config is the configuration in use, defaults filled in.
func (p *Producer) Config() Config { return p.cfg }

// Receipt is JetStream's acknowledgement of one message.
type Receipt struct {
	Subject   string // where the message was published: the lane's subject.<conversation id>
	Stream    string // the stream that stored it
	Sequence  uint64 // its sequence in that stream; for a duplicate, the first copy's
	Duplicate bool   // a message with this event id was already stored within the dedup window; nothing new was stored
}

// Publish validates u with the worker's rules and publishes it with eventID as its
// Nats-Msg-Id, returning once JetStream stored it or recognised it as a duplicate of a
// message with the same event id. An invalid update or event id is never sent. Publishing
// again after a Retryable *PublishError is safe within the stream's dedup window.
func (p *Producer) Publish(ctx context.Context, eventID string, u kustomer.Update) (Receipt, error) {
	data, err := Marshal(eventID, u)
	if err != nil {
		return Receipt{}, err
	}
	return p.publish(ctx, eventID, u.ID, data)
}

// PublishJSON is Publish for a message already in its JSON form
// ({"id": ..., "replace": ..., "body": {...}}), checked with kustomer.Decode and sent as given.
func (p *Producer) PublishJSON(ctx context.Context, eventID string, msg []byte) (Receipt, error) {
	id, err := CheckJSON(eventID, msg)
	if err != nil {
		return Receipt{}, err
	}
	return p.publish(ctx, eventID, id, msg)
}

func (p *Producer) publish(ctx context.Context, eventID, id string, data []byte) (Receipt, error) {
	subject := p.cfg.LaneSubject() + "." + id
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{eventID}}}
	ack, err := p.js.PublishMsg(ctx, m)
	if err != nil {
		return Receipt{}, &PublishError{EventID: eventID, Subject: subject, Err: err}
	}
	r := Receipt{Subject: subject, Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}
	if ack.Stream != p.cfg.Stream {
		return r, &PublishError{EventID: eventID, Subject: subject,
			Err: fmt.Errorf("%w: %s, not %s: their subjects overlap", ErrWrongStream, ack.Stream, p.cfg.Stream)}
	}
	return r, nil
}

// Marshal validates u and eventID by the rules Publish applies and returns the message as
// JSON, for producers that publish by other means.
func Marshal(eventID string, u kustomer.Update) ([]byte, error) {
	if err := CheckEventID(eventID); err != nil {
		return nil, err
	}
	if err := u.Validate(); err != nil {
		return nil, invalid(eventID, err)
	}
	data, err := json.Marshal(u)
	if err != nil { // Validate accepted the body, so it is valid JSON: this does not happen
		return nil, fmt.Errorf("producer: event %q: %w", eventID, err)
	}
	return data, nil
}

// CheckJSON validates eventID and msg by the rules PublishJSON applies, without publishing,
// and returns the id of the conversation msg updates. An invalid msg matches ErrInvalid and
// unwraps to the *kustomer.ValidationError listing every problem.
func CheckJSON(eventID string, msg []byte) (conversationID string, err error) {
	if err := CheckEventID(eventID); err != nil {
		return "", err
	}
	u, err := kustomer.Decode(msg)
	if err != nil {
		return "", invalid(eventID, err)
	}
	return u.ID, nil
}

func invalid(eventID string, err error) error {
	return fmt.Errorf("producer: event %q: invalid update: %w", eventID, err)
}

// CheckEventID returns an ErrEventID unless id can be a Nats-Msg-Id: 1 to MaxEventIDBytes
// printable ASCII characters, without leading or trailing spaces (a NATS header would
// trim them, and two ids would become one).
func CheckEventID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty; give the id of the event this update reports", ErrEventID)
	case len(id) > MaxEventIDBytes:
		return fmt.Errorf("%w: %d bytes; at most %d", ErrEventID, len(id), MaxEventIDBytes)
	case id[0] == ' ' || id[len(id)-1] == ' ':
		return fmt.Errorf("%w: %q starts or ends with a space", ErrEventID, id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: %q holds byte 0x%02x at %d; only printable ASCII is allowed", ErrEventID, id, c, i)
		}
	}
	return nil
}
