package kustomertest

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// Config shapes the fake's behaviour. The zero value is a well-behaved Kustomer org with
// a budget of 1000 requests per minute that accepts the API key "test-key".
type Config struct {
	// APIKey is the only bearer key accepted; any other key, or none, is answered 401.
	// Default "test-key".
	APIKey string

	// Budget is the org-wide number of requests per Window; once spent, requests are answered
	// 429 until the window ends. Negative means unlimited: no org 429s and no rate-limit
	// headers. Default 1000.
	Budget int

	// Window is the length of the budget window. Default 60s.
	Window time.Duration

	// ResetDelta sends x-ratelimit-reset as whole seconds from now instead of UTC epoch
	// seconds. Both are rounded up, so waiting until the reset is always enough.
	// Default false (epoch seconds).
	ResetDelta bool

	// RetryAfter adds a Retry-After header (whole seconds, rounded up) to every 429.
	// Default false.
	RetryAfter bool

	// ResetRoundDown rounds x-ratelimit-reset down to whole seconds, epoch seconds or seconds
	// from now alike, so that the window may end up to a second after it. Default false
	// (rounded up).
	ResetRoundDown bool

	// ResetAbsent leaves x-ratelimit-reset out; x-ratelimit-limit and x-ratelimit-remaining
	// are still sent. Default false.
	ResetAbsent bool

	// RateHeadersAbsent leaves out all three x-ratelimit-* headers; the budget still holds.
	// Default false.
	RateHeadersAbsent bool

	// WindowStart is where budget windows begin. Default WindowFromFirstRequest.
	WindowStart WindowStart

	// WindowOffset shifts fixed windows (WindowFromStart, WindowOnClock) by this much, from
	// 0 to less than Window. Default 0.
	WindowOffset time.Duration

	// Others are the org's other clients, spending from the same budget inside the fake.
	// Default none.
	Others []OtherClient

	// ConversationLimit is how many updates one conversation may receive per
	// ConversationWindow; more are answered 429 while the org budget remains.
	// Default 0 (no per-conversation limit).
	ConversationLimit int

	// ConversationWindow is the fixed window of ConversationLimit, per conversation.
	// Default 10s.
	ConversationWindow time.Duration

	// RequireSeeded answers 404 for conversations not created with [Server.Seed].
	// Default false: every valid id exists.
	RequireSeeded bool

	// RejectReads makes [Server.Reject] answer reads of the conversation (GET
	// /v1/conversations/{id}) as it answers its updates. Whether a conversation whose updates
	// Kustomer keeps failing can still be read is unconfirmed. Default false: reads of a
	// rejected conversation are answered as usual.
	RejectReads bool

	// ReadForbidden answers 403 to every read of a conversation, as for a key without the
	// read role ([Server.SetReadForbidden] switches it later). Default false.
	ReadForbidden bool

	// Latency is added to every answer. Default 0.
	Latency time.Duration

	// LatencyJitter adds a further uniform random delay in [0, LatencyJitter) to every
	// answer. Default 0.
	LatencyJitter time.Duration

	// FaultRate is the share of authenticated, in-budget requests answered with a random
	// status from FaultStatuses instead of being applied. Default 0.
	FaultRate float64

	// FaultStatuses are the statuses FaultRate picks from, each 400 to 599.
	// Default 500, 502, 503.
	FaultStatuses []int

	// DropRate is the share of authenticated, in-budget requests whose connection is closed
	// without an answer (and without applying them). Default 0.
	DropRate float64

	// SlowRate is the share of authenticated, in-budget requests that are applied but
	// answered only after SlowDelay. Default 0.
	SlowRate float64

	// SlowDelay is how late a slow answer comes. Default 35s, longer than a typical 30s
	// client timeout.
	SlowDelay time.Duration

	// RandSeed seeds the draw of DropRate, FaultRate and SlowRate, so that a sequence of
	// requests meets the same faults on every run. Default 0: seeded from the clock.
	RandSeed int64

	// MergeNested merges an object sent as an attribute's value into the object the
	// conversation holds there, key by key (recursively), instead of replacing it: whether
	// Kustomer merges nested objects is unconfirmed, so tests that depend on it run with both.
	// Arrays are replaced whole either way. Default false (replaced).
	MergeNested bool

	// DiscardBodies keeps request bodies out of the log (for long benchmarks); everything
	// else is kept. Default false.
	DiscardBodies bool

	// DisableLog keeps no per-request log, only the counters of [Server.Stats], so memory
	// stays proportional to the number of conversations. Default false.
	DisableLog bool

	// BulkDuration is how long a bulk job takes from its submit until it is complete: queued
	// for the first half, running for the second, its batches completing one after another
	// at even intervals. A batch's items are applied when it completes. Default 0: a job is
	// complete, and its items applied, by the time the submit is answered.
	BulkDuration time.Duration

	// BulkBatchSize is how many items go into one batch of a bulk job. Default 25.
	BulkBatchSize int

	// BulkFailRate is the share of bulk items that fail with the reason "injected failure"
	// instead of being applied (drawn at the submit, from RandSeed). Default 0.
	BulkFailRate float64

	// BulkStrict answers 400 for the whole bulk submit when one item has a bad attribute,
	// instead of failing only that item in the job's results. Default false.
	BulkStrict bool

	// BulkReadDenied answers 403 to every read of a bulk job, as for a key without the role
	// org.permission.bulk.read ([Server.SetBulkReadDenied] switches it later). Default false.
	BulkReadDenied bool

	// BulkFlat puts the fields of bulk jobs and batches directly on their objects instead of
	// under the JSON:API "attributes". Default false.
	BulkFlat bool

	// BulkUncounted is the reading of the batches list that says least: batches give no
	// successCount or failureCount, and the list shows only the batches done so far, so that
	// every batch listed may be done while the job is not. GET /v1/bulk/{id} still gives the
	// job's own totals. Default false.
	BulkUncounted bool
}

// WindowStart is where the org's budget windows begin.
type WindowStart int

const (
	// WindowFromFirstRequest begins a window with the first request after the last one
	// ended.
	WindowFromFirstRequest WindowStart = iota
	// WindowFromStart begins windows at the fake's start plus Config.WindowOffset and every
	// Config.Window after, whatever the requests.
	WindowFromStart
	// WindowOnClock begins windows at whole multiples of Config.Window since the Unix epoch,
	// plus Config.WindowOffset.
	WindowOnClock
)

// Defaults used when the corresponding Config field is zero.
const (
	DefaultAPIKey             = "test-key"
	DefaultBudget             = 1000
	DefaultWindow             = 60 * time.Second
	DefaultConversationWindow = 10 * time.Second
	DefaultSlowDelay          = 35 * time.Second
	DefaultBulkBatchSize      = 25
)

// DefaultFaultStatuses returns the statuses used when Config.FaultStatuses is empty.
func DefaultFaultStatuses() []int { return []int{500, 502, 503} }

// Validate reports every field that holds an impossible value. Zero values are valid: they
// stand for the defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kustomertest: Config.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"Window", c.Window}, {"ConversationWindow", c.ConversationWindow},
		{"Latency", c.Latency}, {"LatencyJitter", c.LatencyJitter}, {"SlowDelay", c.SlowDelay},
		{"BulkDuration", c.BulkDuration},
	}
	for _, d := range durations {
		if d.d < 0 {
			bad(d.name, "%v is negative", d.d)
		}
	}
	c.validateBudget(bad)
	if c.ConversationLimit < 0 {
		bad("ConversationLimit", "%d is negative", c.ConversationLimit)
	}
	if c.BulkBatchSize < 0 {
		bad("BulkBatchSize", "%d is negative", c.BulkBatchSize)
	}
	if math.IsNaN(c.BulkFailRate) || c.BulkFailRate < 0 || c.BulkFailRate > 1 {
		bad("BulkFailRate", "%v is not a share from 0 to 1", c.BulkFailRate)
	}
	rates := []struct {
		name string
		r    float64
	}{{"FaultRate", c.FaultRate}, {"DropRate", c.DropRate}, {"SlowRate", c.SlowRate}}
	sum := 0.0
	for _, r := range rates {
		if math.IsNaN(r.r) || r.r < 0 || r.r > 1 {
			bad(r.name, "%v is not a share from 0 to 1", r.r)
			continue
		}
		sum += r.r
	}
	if sum > 1 {
		bad("FaultRate", "FaultRate + DropRate + SlowRate is %v, more than 1", sum)
	}
	for _, st := range c.FaultStatuses {
		if st < 400 || st > 599 {
			bad("FaultStatuses", "%d is not an error status from 400 to 599", st)
		}
	}
	return errors.Join(errs...)
}

// validateBudget reports the impossible values of the fields that shape the org budget.
func (c Config) validateBudget(bad func(field, format string, args ...any)) {
	window := c.Window
	if window == 0 {
		window = DefaultWindow
	}
	if c.WindowStart < WindowFromFirstRequest || c.WindowStart > WindowOnClock {
		bad("WindowStart", "%d is not a WindowStart", c.WindowStart)
	}
	if c.WindowOffset < 0 || c.WindowOffset >= window {
		bad("WindowOffset", "%v is not from 0 to less than the window, %v", c.WindowOffset, window)
	}
	for i, o := range c.Others {
		field := fmt.Sprintf("Others[%d]", i)
		if math.IsNaN(o.Share) || o.Share < 0 || o.Share > 1 {
			bad(field+".Share", "%v is not a share from 0 to 1", o.Share)
		}
		if o.Pattern < OtherSteady || o.Pattern > OtherBursts {
			bad(field+".Pattern", "%d is not an OtherPattern", o.Pattern)
		}
		if o.Start < 0 || o.Stop < 0 || o.Stop > 0 && o.Stop <= o.Start {
			bad(field+".Stop", "start %v and stop %v are not a span after the fake's start", o.Start, o.Stop)
		}
	}
}

// LogValue keeps the API key out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("APIKey", logtext.Redacted),
		slog.Int("Budget", c.Budget),
		slog.Duration("Window", c.Window),
		slog.Bool("ResetDelta", c.ResetDelta),
		slog.Bool("RetryAfter", c.RetryAfter),
		slog.Bool("ResetRoundDown", c.ResetRoundDown),
		slog.Bool("ResetAbsent", c.ResetAbsent),
		slog.Bool("RateHeadersAbsent", c.RateHeadersAbsent),
		slog.Int("WindowStart", int(c.WindowStart)),
		slog.Duration("WindowOffset", c.WindowOffset),
		slog.Int("Others", len(c.Others)),
		slog.Int("ConversationLimit", c.ConversationLimit),
		slog.Duration("ConversationWindow", c.ConversationWindow),
		slog.Bool("RequireSeeded", c.RequireSeeded),
		slog.Bool("RejectReads", c.RejectReads),
		slog.Bool("ReadForbidden", c.ReadForbidden),
		slog.Duration("Latency", c.Latency),
		slog.Duration("LatencyJitter", c.LatencyJitter),
		slog.Float64("FaultRate", c.FaultRate),
		slog.Any("FaultStatuses", c.FaultStatuses),
		slog.Float64("DropRate", c.DropRate),
		slog.Float64("SlowRate", c.SlowRate),
		slog.Duration("SlowDelay", c.SlowDelay),
		slog.Int64("RandSeed", c.RandSeed),
		slog.Bool("MergeNested", c.MergeNested),
		slog.Bool("DiscardBodies", c.DiscardBodies),
		slog.Bool("DisableLog", c.DisableLog),
		slog.Duration("BulkDuration", c.BulkDuration),
		slog.Int("BulkBatchSize", c.BulkBatchSize),
		slog.Float64("BulkFailRate", c.BulkFailRate),
		slog.Bool("BulkStrict", c.BulkStrict),
		slog.Bool("BulkReadDenied", c.BulkReadDenied),
		slog.Bool("BulkFlat", c.BulkFlat),
	)
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	if c.APIKey == "" {
		c.APIKey = DefaultAPIKey
	}
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.ConversationWindow == 0 {
		c.ConversationWindow = DefaultConversationWindow
	}
	c.Others = append([]OtherClient(nil), c.Others...)
	if len(c.FaultStatuses) == 0 {
		c.FaultStatuses = DefaultFaultStatuses()
	} else {
		c.FaultStatuses = append([]int(nil), c.FaultStatuses...)
	}
	if c.BulkBatchSize == 0 {
		c.BulkBatchSize = DefaultBulkBatchSize
	}
	if c.SlowDelay == 0 {
		c.SlowDelay = DefaultSlowDelay
	}
	if c.RandSeed == 0 {
		c.RandSeed = time.Now().UnixNano()
	}
	return c
}
