package queue

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Topology, written once: the command line shows and uses these too.
const (
	DefaultStream          = "KUSTOMER_UPDATES"
	DefaultSubject         = "kustomer.conversations.update"
	DefaultBackfillSubject = "kustomer.conversations.backfill"
	DefaultDLQStream       = "KUSTOMER_UPDATES_DLQ"
	DefaultDLQSubject      = "kustomer.conversations.dlq"
	DefaultConsumer        = "kustomer-worker"
	DefaultAttemptsBucket  = "KUSTOMER_WORKER_ATTEMPTS"
	DefaultDedupWindow     = 2 * time.Minute
	DefaultAckWait         = 30 * time.Second
	DefaultMaxAckPending   = 256
	DefaultMaxDeliver      = 100
	DefaultStreamReplicas  = 1
	DefaultPriorityGroup   = "active"
	DefaultPinnedTTL       = 5 * time.Second
	DefaultRolesBucket     = "KUSTOMER_WORKER_ROLES"
	MinPinnedTTL           = time.Second // the least PinnedTTL Validate accepts
	MinAckWait             = time.Second // the least AckWait Validate accepts
	MaxStreamReplicas      = 5           // the most replicas a NATS cluster keeps of a stream
)

// Topology names the streams and the consumer, and how they are configured. The zero value of
// every field means its default.
type Topology struct {
	Stream           string        // work stream; default DefaultStream
	Subject          string        // live lane's subject; the stream also takes Subject+".>" so producers may append the id; default DefaultSubject
	BackfillSubject  string        // backfill lane's subject, with BackfillSubject+".>" likewise; default DefaultBackfillSubject
	DLQStream        string        // dead-letter stream; default DefaultDLQStream
	DLQSubject       string        // dead-letter subject; default DefaultDLQSubject
	DLQMaxAge        time.Duration // how long dead letters are kept; default 0, forever
	Consumer         string        // durable pull consumer of the live lane, shared by every replica; default DefaultConsumer
	BackfillConsumer string        // durable pull consumer of the backfill lane; default Consumer+"-backfill"
	AttemptsBucket   string        // KV bucket with attempt counts of messages that failed; default DefaultAttemptsBucket
	DedupWindow      time.Duration // Nats-Msg-Id duplicate window; default DefaultDedupWindow (2m)
	AckWait          time.Duration // redelivery after this long without ack or progress; default DefaultAckWait (30s)
	MaxAckPending    int           // unacknowledged messages across all replicas; default DefaultMaxAckPending (256)
	MaxDeliver       int           // safety net above the worker's attempt limit; default DefaultMaxDeliver (100)
	StreamReplicas   int           // replicas of the streams and the buckets in a cluster; default DefaultStreamReplicas (1)
	// PriorityGroup is the consumer's pinned-client priority group: of the replicas pulling in
	// it, the server hands messages to one (the active), the others wait as standbys. Default
	// DefaultPriorityGroup ("active").
	PriorityGroup string
	// PinnedTTL is how long the server keeps the pin of an active replica that sends no pull
	// request: the longest a standby waits before it takes over from a replica that died.
	// Default DefaultPinnedTTL (5s).
	PinnedTTL   time.Duration
	RolesBucket string // KV bucket where replicas publish their role (active, standby); default DefaultRolesBucket
	BulkBucket  string // KV bucket of the bulk jobs in flight (bulk mode); default DefaultBulkBucket
	// RunsStream keeps what is known of each run (a backfill enqueued under a run id): its
	// record and one record per line applied. Default DefaultRunsStream.
	RunsStream string
	// RunsSubject is the runs stream's subject prefix: it takes RunsSubject.>. Default
	// DefaultRunsSubject.
	RunsSubject string
	// RunsMaxAge is how long a run's records are kept. Default DefaultRunsMaxAge (30 days).
	RunsMaxAge time.Duration
}

// WithDefaults returns t with every zero field set to its default.
func (t Topology) WithDefaults() Topology {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defI := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&t.Stream, DefaultStream)
	def(&t.Subject, DefaultSubject)
	def(&t.BackfillSubject, DefaultBackfillSubject)
	def(&t.DLQStream, DefaultDLQStream)
	def(&t.DLQSubject, DefaultDLQSubject)
	def(&t.Consumer, DefaultConsumer)
	def(&t.BackfillConsumer, t.Consumer+"-backfill")
	def(&t.AttemptsBucket, DefaultAttemptsBucket)
	def(&t.PriorityGroup, DefaultPriorityGroup)
	def(&t.RolesBucket, DefaultRolesBucket)
	def(&t.BulkBucket, DefaultBulkBucket)
	def(&t.RunsStream, DefaultRunsStream)
	def(&t.RunsSubject, DefaultRunsSubject)
	defD(&t.RunsMaxAge, DefaultRunsMaxAge)
	defD(&t.PinnedTTL, DefaultPinnedTTL)
	defD(&t.DedupWindow, DefaultDedupWindow)
	defD(&t.AckWait, DefaultAckWait)
	defI(&t.MaxAckPending, DefaultMaxAckPending)
	defI(&t.MaxDeliver, DefaultMaxDeliver)
	defI(&t.StreamReplicas, DefaultStreamReplicas)
	return t
}

// Validate returns a *ConfigError for the first field that cannot work.
func (t Topology) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Type: "Topology", Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	for _, f := range []struct{ name, v string }{
		{"Stream", t.Stream}, {"DLQStream", t.DLQStream}, {"Consumer", t.Consumer},
		{"BackfillConsumer", t.BackfillConsumer}, {"AttemptsBucket", t.AttemptsBucket},
		{"RolesBucket", t.RolesBucket}, {"BulkBucket", t.BulkBucket}, {"RunsStream", t.RunsStream},
	} {
		if f.v == "" || strings.ContainsAny(f.v, " .*>\t/\\") {
			return bad(f.name, "%q is not a valid name (no spaces, dots, wildcards or slashes)", f.v)
		}
	}
	for _, f := range []struct{ name, v string }{{"Subject", t.Subject}, {"BackfillSubject", t.BackfillSubject}, {"DLQSubject", t.DLQSubject}, {"RunsSubject", t.RunsSubject}} {
		if f.v == "" || strings.ContainsAny(f.v, " *>\t") || strings.HasPrefix(f.v, ".") || strings.HasSuffix(f.v, ".") {
			return bad(f.name, "%q is not a valid subject without wildcards", f.v)
		}
	}
	switch {
	case within(t.DLQSubject, t.Subject):
		return bad("DLQSubject", "%q overlaps the work subject %q", t.DLQSubject, t.Subject)
	case !validGroup.MatchString(t.PriorityGroup):
		return bad("PriorityGroup", "%q is not a valid group name (1 to 16 of letters, digits, /, _, = and -)", t.PriorityGroup)
	case t.PinnedTTL < MinPinnedTTL:
		return bad("PinnedTTL", "%s is under %s", t.PinnedTTL, MinPinnedTTL)
	case LanesOverlap(t.RunsSubject, t.Subject) || LanesOverlap(t.RunsSubject, t.BackfillSubject) || LanesOverlap(t.RunsSubject, t.DLQSubject):
		return bad("RunsSubject", "%q overlaps the work or dead-letter subjects", t.RunsSubject)
	case within(t.DLQSubject, t.BackfillSubject):
		return bad("DLQSubject", "%q overlaps the backfill subject %q", t.DLQSubject, t.BackfillSubject)
	case LanesOverlap(t.Subject, t.BackfillSubject):
		return bad("BackfillSubject", "%q overlaps the work subject %q: the lanes need subjects of their own", t.BackfillSubject, t.Subject)
	case t.Consumer == t.BackfillConsumer:
		return bad("BackfillConsumer", "%q is the name of the live lane's Consumer too", t.BackfillConsumer)
	case t.AckWait < MinAckWait:
		return bad("AckWait", "%s is under %s", t.AckWait, MinAckWait)
	case t.StreamReplicas < 1 || t.StreamReplicas > MaxStreamReplicas:
		return bad("StreamReplicas", "%d is not from 1 to %d", t.StreamReplicas, MaxStreamReplicas)
	case t.MaxAckPending < 1:
		return bad("MaxAckPending", "%d is below 1", t.MaxAckPending)
	case t.DedupWindow < 0:
		return bad("DedupWindow", "%s is negative", t.DedupWindow)
	case t.DLQMaxAge < 0:
		return bad("DLQMaxAge", "%s is negative", t.DLQMaxAge)
	}
	return nil
}

// validGroup is the server's rule for priority group names.
var validGroup = regexp.MustCompile(`^[a-zA-Z0-9/_=-]{1,16}$`)

// within reports whether subject s is one a stream of lane subject lane takes: lane itself or
// a subject under it.
func within(s, lane string) bool { return s == lane || strings.HasPrefix(s, lane+".") }

// LanesOverlap reports whether the subjects two lanes take overlap: the lane subjects are
// equal or one lies under the other (a lane takes its subject and every subject under it).
func LanesOverlap(a, b string) bool { return within(a, b) || within(b, a) }

// WorkSubjects are the subjects of the work stream: both lanes', each bare and with a suffix.
func (t Topology) WorkSubjects() []string {
	return append(t.LaneSubjects(LaneLive), t.LaneSubjects(LaneBackfill)...)
}

// Ensure creates or updates the streams, the lanes' consumers, the attempts, roles and bulk buckets
// so that they match t. It is idempotent and safe to run from several replicas at once.
//
// It also converts the topology of versions before lanes, in place: the one consumer, named
// Consumer, took every subject of the work stream. It keeps its name, its acknowledgement
// state and the messages it holds and becomes the live lane's, filtered to the live subjects
// before the stream takes the backfill subjects, so no backfill message is ever delivered
// to it; then the backfill lane's consumer is created. See docs/LANES.md.
func Ensure(ctx context.Context, js jetstream.JetStream, t Topology) error {
	// What depends on nothing else here goes out at once (over a slow link to NATS a round
	// trip each would add up to seconds): the work stream's chain (its live consumer
	// narrowed, the stream, then both lanes' consumers), the dead-letter stream, the
	// buckets and the runs stream. The error is the first in that order.
	steps := []func() error{
		func() error { return ensureWork(ctx, js, t) },
		func() error {
			if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
				Name:        t.DLQStream,
				Description: "Kustomer conversation updates that can never succeed, with the reason",
				Subjects:    []string{t.DLQSubject},
				Retention:   jetstream.LimitsPolicy,
				Storage:     jetstream.FileStorage,
				MaxAge:      t.DLQMaxAge,
				Replicas:    t.StreamReplicas,
			}); err != nil {
				return fmt.Errorf("stream %s: %w", t.DLQStream, err)
			}
			return nil
		},
		func() error {
			if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      t.AttemptsBucket,
				Description: "attempts spent on work messages that failed, by stream sequence",
				TTL:         7 * 24 * time.Hour,
				Storage:     jetstream.FileStorage,
				Replicas:    t.StreamReplicas,
			}); err != nil {
				return fmt.Errorf("bucket %s: %w", t.AttemptsBucket, err)
			}
			return nil
		},
		func() error {
			if _, err := js.CreateOrUpdateKeyValue(ctx, t.rolesConfig()); err != nil {
				return fmt.Errorf("bucket %s: %w", t.RolesBucket, err)
			}
			return nil
		},
		func() error {
			if _, err := js.CreateOrUpdateKeyValue(ctx, t.bulkConfig()); err != nil {
				return fmt.Errorf("bucket %s: %w", t.BulkBucket, err)
			}
			return nil
		},
		func() error {
			if _, err := js.CreateOrUpdateStream(ctx, t.runsConfig()); err != nil {
				return fmt.Errorf("stream %s: %w", t.RunsStream, err)
			}
			return nil
		},
	}
	return allAtOnce(steps)
}

// ensureWork is Ensure's work stream: the live consumer of a version before lanes narrowed
// to the live subjects, then the stream, then both lanes' consumers (at once).
func ensureWork(ctx context.Context, js jetstream.JetStream, t Topology) error {
	if err := narrowLiveConsumer(ctx, js, t); err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        t.Stream,
		Description: "Kustomer conversation updates waiting to be applied: a live lane and a backfill lane",
		Subjects:    t.WorkSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  t.DedupWindow,
		Replicas:    t.StreamReplicas,
	}); err != nil {
		return fmt.Errorf("stream %s: %w", t.Stream, err)
	}
	var steps []func() error
	for _, l := range Lanes() {
		steps = append(steps, func() error {
			if err := ensureConsumer(ctx, js, t, l); err != nil {
				return fmt.Errorf("consumer %s: %w", t.LaneConsumer(l), err)
			}
			return nil
		})
	}
	return allAtOnce(steps)
}

// allAtOnce runs steps at once and returns the first of their errors in the order given.
func allAtOnce(steps []func() error) error {
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Go(func() { errs[i] = step() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// ensureConsumer creates or updates lane l's consumer. A consumer made by an earlier version
// has no priority policy; a server that refuses to add one in place gets the consumer
// recreated, which loses nothing on a work-queue stream: a message leaves the stream only when
// acknowledged, so the new consumer (DeliverAll) delivers again whatever was not acknowledged
// yet.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, t Topology, l Lane) error {
	want := t.ConsumerConfig(l)
	_, err := js.CreateOrUpdateConsumer(ctx, t.Stream, want)
	if err == nil {
		return nil
	}
	cons, lerr := js.Consumer(ctx, t.Stream, want.Durable)
	if lerr != nil || cons.CachedInfo().Config.PriorityPolicy == want.PriorityPolicy {
		return err // not a conversion, or another replica converted it meanwhile
	}
	if derr := js.DeleteConsumer(ctx, t.Stream, want.Durable); derr != nil && !errors.Is(derr, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("converting to a pinned priority group: update refused (%w), delete failed: %w", err, derr)
	}
	if _, cerr := js.CreateOrUpdateConsumer(ctx, t.Stream, want); cerr != nil {
		return fmt.Errorf("converting to a pinned priority group: update refused (%w), recreating failed: %w", err, cerr)
	}
	return nil
}

// narrowLiveConsumer filters an existing live consumer that takes more than the live lane
// (the one unfiltered consumer of versions before lanes) to the live subjects, while the
// stream does not take the backfill subjects yet. It changes the filter alone, so that a
// server which refuses the priority policy in place (see ensureConsumer) still narrows it.
// Without a stream or a consumer there is nothing to convert; a failure here is left for
// the full update after the stream's to report, since that one is made with the stream as it
// must be.
func narrowLiveConsumer(ctx context.Context, js jetstream.JetStream, t Topology) error {
	cons, err := js.Consumer(ctx, t.Stream, t.Consumer)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer %s: %w", t.Consumer, err)
	}
	cfg := cons.CachedInfo().Config
	want := t.LaneSubjects(LaneLive)
	if slices.Equal(filters(cfg), want) {
		return nil
	}
	cfg.FilterSubject, cfg.FilterSubjects = "", want
	_, _ = js.UpdateConsumer(ctx, t.Stream, cfg)
	return nil
}

// filters are the subject filters of a consumer, in either of its two fields.
func filters(cfg jetstream.ConsumerConfig) []string {
	if cfg.FilterSubject != "" {
		return []string{cfg.FilterSubject}
	}
	return cfg.FilterSubjects
}

// ConsumerConfig is the configuration of lane l's durable pull consumer: filtered to the
// lane's subjects, so that on the work-queue stream both lanes' consumers may exist at once
// and each delivers its own lane in stream order. Both have the pinned-client priority group:
// the live lane's pin makes a replica the active one (see Pinned); the backfill lane's keeps
// a second replica from pulling it meanwhile (see Follower).
func (t Topology) ConsumerConfig(l Lane) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        t.LaneConsumer(l),
		Description:    "kustomer-worker pool, " + string(l) + " lane",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        t.AckWait,
		MaxAckPending:  t.MaxAckPending,
		MaxDeliver:     t.MaxDeliver,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		FilterSubjects: t.LaneSubjects(l),
		MaxWaiting:     512,
		Replicas:       t.StreamReplicas,
		// One replica active, the others standbys: see Pinned and Follower.
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PinnedTTL:      t.PinnedTTL,
		PriorityGroups: []string{t.PriorityGroup},
	}
}

// Consumers are the durable consumers of both lanes, as BindLanes found them. Pass Live as the
// pool's consumer and Backfill as its backfill consumer: then the replica the server pins on
// the live lane is the active one and takes both lanes.
type Consumers struct {
	Live     *Pinned   // delivers the live lane (Topology.Subject) in stream order, to the active replica
	Backfill *Follower // delivers the backfill lane (Topology.BackfillSubject) in stream order, to the active replica only
	// Stream is the work stream as BindLanes looked it up (nil if made otherwise), so that
	// what the pool builds on it (the order check, the recovery of order) need not read it
	// again.
	Stream jetstream.Stream
}

// Of returns lane l's consumer.
func (c Consumers) Of(l Lane) jetstream.Consumer {
	if l == LaneBackfill {
		return c.Backfill
	}
	return c.Live
}

// Bind looks up the live lane's consumer and the attempts bucket without changing anything;
// BindLanes looks up both lanes' consumers. The consumer is a *Pinned: a consumer with a
// pinned priority group refuses pull requests without the group.
func Bind(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.Consumer, *Attempts, error) {
	p, a, err := BindPinned(ctx, js, t)
	if err != nil {
		return nil, nil, err
	}
	return p, a, nil
}

// BindPinned is Bind with the live lane's consumer as a *Pinned, which pulls in the priority
// group and says whether this replica is the active one.
func BindPinned(ctx context.Context, js jetstream.JetStream, t Topology) (*Pinned, *Attempts, error) {
	cs, attempts, err := BindLanes(ctx, js, t)
	return cs.Live, attempts, err
}

// BindLanes looks up both lanes' consumers and the attempts bucket without changing
// anything, for operators who manage streams elsewhere (manage-streams=false) and for the
// second replica onwards. Its four reads (the work stream, each lane's consumer, the bucket)
// go out at once: over a slow link to NATS it costs one round trip, not four.
func BindLanes(ctx context.Context, js jetstream.JetStream, t Topology) (Consumers, *Attempts, error) {
	t = t.WithDefaults()
	var (
		wg      sync.WaitGroup
		s       jetstream.Stream
		sErr    error
		cons    [2]jetstream.Consumer
		consErr [2]error
		kv      jetstream.KeyValue
		kvErr   error
	)
	wg.Go(func() { s, sErr = js.Stream(ctx, t.Stream) })
	for i, l := range Lanes() {
		wg.Go(func() { cons[i], consErr[i] = js.Consumer(ctx, t.Stream, t.LaneConsumer(l)) })
	}
	wg.Go(func() { kv, kvErr = js.KeyValue(ctx, t.AttemptsBucket) })
	wg.Wait()
	if sErr != nil { // reported first: without the stream, the consumers' lookups fail too
		if errors.Is(sErr, jetstream.ErrStreamNotFound) {
			return Consumers{}, nil, fmt.Errorf("consumer %s on stream %s: %w (create it, or run with manage-streams on)", t.Consumer, t.Stream, sErr)
		}
		return Consumers{}, nil, fmt.Errorf("consumer %s on stream %s: %w", t.Consumer, t.Stream, sErr)
	}
	var pinned [2]*Pinned
	for i, l := range Lanes() {
		name := t.LaneConsumer(l)
		if err := consErr[i]; err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				return Consumers{}, nil, fmt.Errorf("consumer %s of the %s lane on stream %s: %w (create it, or run with manage-streams on)", name, l, t.Stream, err)
			}
			return Consumers{}, nil, fmt.Errorf("consumer %s on stream %s: %w", name, t.Stream, err)
		}
		pinned[i] = NewPinned(cons[i], s, t)
	}
	if kvErr != nil {
		return Consumers{}, nil, fmt.Errorf("bucket %s: %w", t.AttemptsBucket, kvErr)
	}
	return Consumers{Live: pinned[0], Backfill: NewFollower(pinned[1], pinned[0]), Stream: s}, &Attempts{kv: kv}, nil
}
