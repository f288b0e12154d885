package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
)

// Defaults of Config, written once: the command line shows and uses these too.
const (
	DefaultConcurrency = 8
	DefaultMaxAttempts = 10
	// HeldPerWorker is how many messages the pool holds per worker by default, and
	// MinMaxAckPending the least MaxAckPending defaults to, whatever the concurrency. On a
	// backlog a pull waits for room for a quarter of the window (room, fetch.go), so the window
	// sets how many pulls a backlog costs, and the three quarters still held keep the
	// workers busy while a pull is on its way (docs/BENCHMARKS.md, run T6).
	HeldPerWorker          = 8
	MinMaxAckPending       = 128
	DefaultRetryInitial    = 500 * time.Millisecond
	DefaultRetryMax        = 60 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultFetchWait       = time.Second
	DefaultOutageThreshold = gate.DefaultThreshold
	DefaultOutageSpread    = gate.DefaultSpread
	DefaultStrandedEvery   = time.Minute
	// DefaultRatePerMinute is the pace of the Pacer a Pool makes when given none: an
	// Enterprise org's budget, the smallest Kustomer sells.
	DefaultRatePerMinute = 1000
)

const (
	maxConcurrency = 1024
	ackWaitFloor   = time.Second
	// defaultAckWaitIfUnknown is the AckWait assumed of a consumer whose info was never read:
	// the streams' default.
	defaultAckWaitIfUnknown = queue.DefaultAckWait
)

// Config tunes the pool. The zero value of every field means its default. AckWait and
// MaxDeliver are not here: the pool reads them from the consumer it is given, so there is one
// source for each.
type Config struct {
	// Concurrency is the number of requests in flight at once. Default DefaultConcurrency (8).
	Concurrency int
	// MaxAttempts is how many requests a message may spend on retryable failures (5xx,
	// timeouts, dropped connections), counted across redeliveries and restarts, before it is
	// dead-lettered as exhausted. 429s and 401s spend none. Default DefaultMaxAttempts (10).
	MaxAttempts int
	// MaxAckPending is how many messages the pool holds (taken from the consumer, not yet
	// acknowledged), including those waiting behind an earlier update to the same
	// conversation. Keep it at or below the consumer's MaxAckPending. Default HeldPerWorker
	// (8) × Concurrency, at least MinMaxAckPending (128); in bulk mode at least
	// bulk.DefaultJobsHeld × Bulk.Size (40 × 100), so that several jobs can be in flight.
	MaxAckPending int
	// RetryInitial and RetryMax bound the exponential backoff (with jitter) between retries of
	// one message. Defaults DefaultRetryInitial (500ms) and DefaultRetryMax (60s).
	RetryInitial, RetryMax time.Duration
	// ShutdownTimeout is how long in-flight requests may finish after shutdown begins; what is
	// unfinished then is handed back for redelivery. Default DefaultShutdownTimeout (30s).
	ShutdownTimeout time.Duration
	// OutageThreshold is how many requests failing transiently in a row, across at least two
	// conversations, open the outage breaker: the pool pauses and probes until Kustomer
	// answers, spending no attempts. Negative turns the breaker off. Default
	// DefaultOutageThreshold (5).
	OutageThreshold int
	// OutageSpread is, once the breaker paused requests and a read of a conversation shows
	// that Kustomer answers, the most conversations whose updates may have failed with none
	// accepted since for those failures to be taken as the conversations' own: they then
	// spend attempts and are dead-lettered after MaxAttempts, without pausing anybody. More
	// is taken as Kustomer refusing writes: every request stays paused, no attempt is spent,
	// and an update probes until one is accepted. Needs Pool.Reader. Default
	// DefaultOutageSpread (20).
	OutageSpread int
	// FetchWait is how long one pull request waits for messages; shutdown waits for the pull
	// in progress. Default DefaultFetchWait (1s).
	FetchWait time.Duration
	// Bulk turns on bulk mode and tunes it (see bulk.Config). Default off.
	Bulk bulk.Config
	// StrandedEvery is how often the pool looks for stranded messages (see Pool.Outstanding):
	// kept by the work stream, never to be delivered again. It looks once at start too.
	// Default DefaultStrandedEvery (1m).
	StrandedEvery time.Duration

	// Coalesce names the lanes whose queued partial updates of one conversation go as one PUT
	// (package coalesce: merged key by key, later values winning), for state synchronisation
	// where only the final state matters: Kustomer workflows and webhooks then never see the
	// intermediate states. Default none.
	Coalesce CoalesceLanes
}

// CoalesceLanes are the lanes Config.Coalesce applies to. The zero value is none.
type CoalesceLanes struct {
	Live, Backfill bool
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Concurrency, DefaultConcurrency)
	def(&c.MaxAttempts, DefaultMaxAttempts)
	if c.Bulk.Enabled {
		c.Bulk = c.Bulk.WithDefaults()
		def(&c.MaxAckPending, max(HeldPerWorker*c.Concurrency, MinMaxAckPending, bulk.DefaultJobsHeld*c.Bulk.Size))
	}
	def(&c.MaxAckPending, max(HeldPerWorker*c.Concurrency, MinMaxAckPending))
	defD(&c.RetryInitial, DefaultRetryInitial)
	defD(&c.RetryMax, DefaultRetryMax)
	defD(&c.ShutdownTimeout, DefaultShutdownTimeout)
	defD(&c.FetchWait, DefaultFetchWait)
	def(&c.OutageThreshold, DefaultOutageThreshold)
	def(&c.OutageSpread, DefaultOutageSpread)
	defD(&c.StrandedEvery, DefaultStrandedEvery)
	return c
}

// Validate returns a *ConfigError for the first field that cannot work.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	switch {
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return bad("Concurrency", "%d is not from 1 to %d", c.Concurrency, maxConcurrency)
	case c.MaxAttempts < 1:
		return bad("MaxAttempts", "%d is below 1", c.MaxAttempts)
	case c.MaxAckPending < c.Concurrency:
		return bad("MaxAckPending", "%d is below Concurrency %d", c.MaxAckPending, c.Concurrency)
	case c.RetryInitial <= 0:
		return bad("RetryInitial", "%s is not positive", c.RetryInitial)
	case c.RetryMax < c.RetryInitial:
		return bad("RetryMax", "%s is below RetryInitial %s", c.RetryMax, c.RetryInitial)
	case c.ShutdownTimeout < 0:
		return bad("ShutdownTimeout", "%s is negative", c.ShutdownTimeout)
	case c.OutageThreshold == 1:
		return bad("OutageThreshold", "1 cannot span two conversations; use 2 or more, or a negative number to turn the breaker off")
	case c.OutageSpread < 1:
		return bad("OutageSpread", "%d is below 1", c.OutageSpread)
	case c.FetchWait < 0:
		return bad("FetchWait", "%s is negative", c.FetchWait)
	case c.StrandedEvery < 0:
		return bad("StrandedEvery", "%s is negative", c.StrandedEvery)
	}
	var be *bulk.ConfigError
	if err := c.Bulk.Validate(); errors.As(err, &be) {
		return &ConfigError{Field: "Bulk." + be.Field, Problem: be.Problem}
	}
	return nil
}
