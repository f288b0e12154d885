package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology names the streams and the consumer, and how they are configured.
type Topology struct {
	Stream         string        // work stream; default "KUSTOMER_UPDATES"
	Subject        string        // work subject; the stream also takes Subject+".>" so producers may append the id; default "kustomer.conversations.update"
	DLQStream      string        // dead-letter stream; default "KUSTOMER_UPDATES_DLQ"
	DLQSubject     string        // dead-letter subject; default "kustomer.conversations.dlq"
	DLQMaxAge      time.Duration // how long dead letters are kept; default 0, forever
	Consumer       string        // durable pull consumer shared by every replica; default "kustomer-worker"
	AttemptsBucket string        // KV bucket with attempt counts of messages that failed; default "KUSTOMER_WORKER_ATTEMPTS"
	DedupWindow    time.Duration // Nats-Msg-Id duplicate window; default 2m
	AckWait        time.Duration // redelivery after this long without ack or progress; default 30s
	MaxAckPending  int           // unacknowledged messages across all replicas; default 256
	MaxDeliver     int           // safety net above the worker's attempt limit; default 100
	Replicas       int           // stream replicas in a cluster; default 1
}

// WithDefaults returns t with every zero field set to its default.
func (t Topology) WithDefaults() Topology {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&t.Stream, "KUSTOMER_UPDATES")
	def(&t.Subject, "kustomer.conversations.update")
	def(&t.DLQStream, "KUSTOMER_UPDATES_DLQ")
	def(&t.DLQSubject, "kustomer.conversations.dlq")
	def(&t.Consumer, "kustomer-worker")
	def(&t.AttemptsBucket, "KUSTOMER_WORKER_ATTEMPTS")
	if t.DedupWindow == 0 {
		t.DedupWindow = 2 * time.Minute
	}
	if t.AckWait == 0 {
		t.AckWait = 30 * time.Second
	}
	if t.MaxAckPending == 0 {
		t.MaxAckPending = 256
	}
	if t.MaxDeliver == 0 {
		t.MaxDeliver = 100
	}
	if t.Replicas == 0 {
		t.Replicas = 1
	}
	return t
}

// Validate names the first setting that cannot work.
func (t Topology) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"stream", t.Stream}, {"dlq-stream", t.DLQStream}, {"consumer", t.Consumer}, {"attempts-bucket", t.AttemptsBucket},
	} {
		if f.v == "" || strings.ContainsAny(f.v, " .*>\t/\\") {
			return fmt.Errorf("%s: %q is not a valid name (no spaces, dots, wildcards or slashes)", f.name, f.v)
		}
	}
	for _, f := range []struct{ name, v string }{{"subject", t.Subject}, {"dlq-subject", t.DLQSubject}} {
		if f.v == "" || strings.ContainsAny(f.v, " *>\t") || strings.HasPrefix(f.v, ".") || strings.HasSuffix(f.v, ".") {
			return fmt.Errorf("%s: %q is not a valid subject without wildcards", f.name, f.v)
		}
	}
	if t.Subject == t.DLQSubject || strings.HasPrefix(t.DLQSubject, t.Subject+".") {
		return fmt.Errorf("dlq-subject: %q overlaps the work subject %q", t.DLQSubject, t.Subject)
	}
	if t.AckWait < time.Second {
		return fmt.Errorf("ack-wait: %s is under 1s", t.AckWait)
	}
	if t.Replicas < 1 || t.Replicas > 5 {
		return fmt.Errorf("stream-replicas: %d is not from 1 to 5", t.Replicas)
	}
	if t.MaxAckPending < 1 {
		return fmt.Errorf("max-ack-pending: %d is below 1", t.MaxAckPending)
	}
	return nil
}

// WorkSubjects are the subjects of the work stream.
func (t Topology) WorkSubjects() []string { return []string{t.Subject, t.Subject + ".>"} }

// Ensure creates or updates the streams, the consumer and the attempts bucket so that they
// match t. It is idempotent and safe to run from several replicas at once.
func Ensure(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        t.Stream,
		Description: "Kustomer conversation updates waiting to be applied",
		Subjects:    t.WorkSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  t.DedupWindow,
		Replicas:    t.Replicas,
	}); err != nil {
		return fmt.Errorf("stream %s: %w", t.Stream, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        t.DLQStream,
		Description: "Kustomer conversation updates that can never succeed, with the reason",
		Subjects:    []string{t.DLQSubject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      t.DLQMaxAge,
		Replicas:    t.Replicas,
	}); err != nil {
		return fmt.Errorf("stream %s: %w", t.DLQStream, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, t.Stream, t.ConsumerConfig()); err != nil {
		return fmt.Errorf("consumer %s: %w", t.Consumer, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      t.AttemptsBucket,
		Description: "attempts spent on work messages that failed, by stream sequence",
		TTL:         7 * 24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	}); err != nil {
		return fmt.Errorf("bucket %s: %w", t.AttemptsBucket, err)
	}
	return nil
}

// ConsumerConfig is the durable pull consumer's configuration.
func (t Topology) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       t.Consumer,
		Description:   "kustomer-worker pool",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxAckPending: t.MaxAckPending,
		MaxDeliver:    t.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxWaiting:    512,
		Replicas:      t.Replicas,
	}
}

// Bind looks up the consumer and the attempts bucket without changing anything, for operators
// who manage streams elsewhere (manage-streams=false) and for the second replica onwards.
func Bind(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.Consumer, *Attempts, error) {
	cons, err := js.Consumer(ctx, t.Stream, t.Consumer)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, nil, fmt.Errorf("consumer %s on stream %s: %w (create it, or run with manage-streams on)", t.Consumer, t.Stream, err)
		}
		return nil, nil, fmt.Errorf("consumer %s on stream %s: %w", t.Consumer, t.Stream, err)
	}
	kv, err := js.KeyValue(ctx, t.AttemptsBucket)
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %s: %w", t.AttemptsBucket, err)
	}
	return cons, &Attempts{kv: kv}, nil
}
