package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// mockCmd serves the fake Kustomer API of package kustomertest.
type mockCmd struct {
	Addr               string        `name:"addr" env:"MOCK_ADDR" default:"127.0.0.1:8080" help:"Listen address."`
	APIKey             string        `name:"api-key" env:"MOCK_API_KEY" default:"${default_mock_api_key}" help:"The bearer key the fake accepts; a test value, not a secret."`
	Budget             int           `name:"budget" env:"MOCK_BUDGET" default:"${default_mock_budget}" help:"Org budget per window; --budget=-1 for none."`
	Window             time.Duration `name:"window" env:"MOCK_WINDOW" default:"${default_mock_window}" help:"Rate-limit window."`
	ResetDelta         bool          `name:"reset-delta" env:"MOCK_RESET_DELTA" help:"Send x-ratelimit-reset as seconds from now instead of epoch seconds."`
	RetryAfter         bool          `name:"retry-after" env:"MOCK_RETRY_AFTER" help:"Send Retry-After on 429s."`
	ResetRoundDown     bool          `name:"reset-round-down" env:"MOCK_RESET_ROUND_DOWN" help:"Round x-ratelimit-reset down to whole seconds instead of up: the window may end up to a second after it."`
	ResetAbsent        bool          `name:"reset-absent" env:"MOCK_RESET_ABSENT" help:"Leave x-ratelimit-reset out; x-ratelimit-limit and x-ratelimit-remaining are still sent."`
	RateHeadersAbsent  bool          `name:"rate-headers-absent" env:"MOCK_RATE_HEADERS_ABSENT" help:"Leave out all three x-ratelimit-* headers; the budget still holds."`
	WindowStart        string        `name:"window-start" env:"MOCK_WINDOW_START" default:"first-request" enum:"first-request,start,clock" help:"Where budget windows begin: first-request (the first request after the last window ended), start (the fake's start, and every --window after), clock (whole multiples of --window since the Unix epoch)."`
	WindowOffset       time.Duration `name:"window-offset" env:"MOCK_WINDOW_OFFSET" default:"0s" help:"Shift windows of --window-start start or clock by this much, less than --window."`
	Others             []string      `name:"other" env:"MOCK_OTHERS" placeholder:"SHARE[:PATTERN[:START[:STOP]]]" help:"Another client of the org spending SHARE (0 to 1) of every window's budget inside the fake; PATTERN is steady, front-loaded or bursts (default steady); START and STOP are durations after the fake starts (default from the start, never stopping). Repeat the flag, or separate clients with commas (default none)."`
	ConversationLimit  int           `name:"conversation-limit" env:"MOCK_CONVERSATION_LIMIT" default:"0" help:"Updates per conversation per conversation-window; 0 is off."`
	ConversationWindow time.Duration `name:"conversation-window" env:"MOCK_CONVERSATION_WINDOW" default:"${default_mock_conversation_window}" help:"Window of the per-conversation limit."`
	Latency            time.Duration `name:"latency" env:"MOCK_LATENCY" default:"0s" help:"Added to every answer."`
	LatencyJitter      time.Duration `name:"latency-jitter" env:"MOCK_LATENCY_JITTER" default:"0s" help:"Random extra latency up to this."`
	FaultRate          float64       `name:"fault-rate" env:"MOCK_FAULT_RATE" default:"0" help:"Share of requests answered ${mock_fault_statuses}."`
	DropRate           float64       `name:"drop-rate" env:"MOCK_DROP_RATE" default:"0" help:"Share of requests whose connection is dropped."`
	SlowRate           float64       `name:"slow-rate" env:"MOCK_SLOW_RATE" default:"0" help:"Share of requests answered after slow-delay."`
	SlowDelay          time.Duration `name:"slow-delay" env:"MOCK_SLOW_DELAY" default:"${default_mock_slow_delay}" help:"Delay of slow answers."`
	RequireSeeded      bool          `name:"require-seeded" env:"MOCK_REQUIRE_SEEDED" help:"Answer 404 for every conversation (none is seeded)."`
	DiscardBodies      bool          `name:"discard-bodies" env:"MOCK_DISCARD_BODIES" help:"Keep no request bodies in the request log (long runs)."`
	BulkDuration       time.Duration `name:"bulk-duration" env:"MOCK_BULK_DURATION" default:"0s" help:"How long a bulk job takes until complete: queued half the time, then running; 0 completes it at once."`
	BulkBatchSize      int           `name:"bulk-batch-size" env:"MOCK_BULK_BATCH_SIZE" default:"${default_mock_bulk_batch_size}" help:"Items per batch of a bulk job."`
	BulkFailRate       float64       `name:"bulk-fail-rate" env:"MOCK_BULK_FAIL_RATE" default:"0" help:"Share of bulk items that fail with an injected error."`
	BulkStrict         bool          `name:"bulk-strict" env:"MOCK_BULK_STRICT" help:"Answer 400 for a whole bulk update when one item has a bad attribute."`
	BulkReadDenied     bool          `name:"bulk-read-denied" env:"MOCK_BULK_READ_DENIED" help:"Answer 403 to reads of bulk jobs, as for a key without org.permission.bulk.read."`
	BulkFlat           bool          `name:"bulk-flat" env:"MOCK_BULK_FLAT" help:"Put the fields of bulk jobs and batches on the objects instead of under attributes."`
}

// mockVars are the mock flags' defaults, from kustomertest's constants, and the fault
// statuses their help names.
func mockVars() map[string]string {
	statuses := kustomertest.DefaultFaultStatuses()
	names := make([]string, len(statuses))
	for i, st := range statuses {
		names[i] = strconv.Itoa(st)
	}
	faults := strings.Join(names, ", ")
	if n := len(names); n > 1 {
		faults = strings.Join(names[:n-1], ", ") + " or " + names[n-1]
	}
	return map[string]string{
		"default_mock_api_key":             kustomertest.DefaultAPIKey,
		"default_mock_budget":              strconv.Itoa(kustomertest.DefaultBudget),
		"default_mock_window":              kustomertest.DefaultWindow.String(),
		"default_mock_conversation_window": kustomertest.DefaultConversationWindow.String(),
		"default_mock_slow_delay":          kustomertest.DefaultSlowDelay.String(),
		"default_mock_bulk_batch_size":     strconv.Itoa(kustomertest.DefaultBulkBatchSize),
		"mock_fault_statuses":              faults,
	}
}

func (c *mockCmd) Help() string {
	return `The fake keeps conversations in memory, enforces the org budget with Kustomer's rate-limit
headers, and injects faults. GET /_mock/stats, /_mock/requests and /_mock/conversations/ID show
what it received. Bulk updates (PUT /v1/conversations/bulk) run as jobs that complete after
--bulk-duration; GET /_mock/bulk lists them. Never expose it publicly.

Examples:
  kustomer-worker mock --budget 600 --window 10s
  kustomer-worker mock --addr 0.0.0.0:8080 --fault-rate 0.05 --latency 80ms --latency-jitter 40ms
  kustomer-worker mock --budget 100 --window 6s --bulk-duration 2s --bulk-fail-rate 0.01
  kustomer-worker mock --budget 200 --window 5s --reset-round-down --window-start start --window-offset 370ms --other 0.3
  kustomer-worker mock --budget 200 --window 5s --reset-absent --other 0.3:bursts --other 0.1:steady:1m:5m`
}

func (c *mockCmd) Run(ctx context.Context, e *env, g *globals) error {
	if c.FaultRate < 0 || c.FaultRate > 1 || c.DropRate < 0 || c.DropRate > 1 || c.SlowRate < 0 || c.SlowRate > 1 {
		return usagef("fault-rate, drop-rate, slow-rate: each must be from 0 to 1")
	}
	if c.Window <= 0 {
		return usagef("window: %s is not positive", c.Window)
	}
	if c.BulkFailRate < 0 || c.BulkFailRate > 1 {
		return usagef("bulk-fail-rate: %v is not from 0 to 1", c.BulkFailRate)
	}
	if c.BulkDuration < 0 {
		return usagef("bulk-duration: %s is negative", c.BulkDuration)
	}
	if c.BulkBatchSize < 1 {
		return usagef("bulk-batch-size: %d is not positive", c.BulkBatchSize)
	}
	others, err := parseOthers(c.Others)
	if err != nil {
		return err
	}
	if c.WindowOffset < 0 || c.WindowOffset >= c.Window {
		return usagef("window-offset: %s is not from 0 to less than the window, %s", c.WindowOffset, c.Window)
	}
	srv, err := kustomertest.Start(c.Addr, kustomertest.Config{
		APIKey: c.APIKey, Budget: c.Budget, Window: c.Window, ResetDelta: c.ResetDelta, RetryAfter: c.RetryAfter,
		ResetRoundDown: c.ResetRoundDown, ResetAbsent: c.ResetAbsent, RateHeadersAbsent: c.RateHeadersAbsent,
		WindowStart: windowStarts[c.WindowStart], WindowOffset: c.WindowOffset, Others: others,
		ConversationLimit: c.ConversationLimit, ConversationWindow: c.ConversationWindow,
		Latency: c.Latency, LatencyJitter: c.LatencyJitter, FaultRate: c.FaultRate, DropRate: c.DropRate,
		SlowRate: c.SlowRate, SlowDelay: c.SlowDelay, RequireSeeded: c.RequireSeeded, DiscardBodies: c.DiscardBodies,
		BulkDuration: c.BulkDuration, BulkBatchSize: c.BulkBatchSize, BulkFailRate: c.BulkFailRate,
		BulkStrict: c.BulkStrict, BulkReadDenied: c.BulkReadDenied, BulkFlat: c.BulkFlat,
	})
	if err != nil {
		return usagef("addr: %v", err)
	}
	defer srv.Close()
	log := g.logger(e.stderr)
	log.Info("fake Kustomer API listening", "url", srv.URL, "budget", c.Budget, "window", c.Window)
	fmt.Fprintf(e.stdout, "fake Kustomer API at %s (key %q)\n", srv.URL, c.APIKey)
	<-ctx.Done()
	st := srv.Stats()
	log.Info("fake Kustomer API stopping", "requests", st.Requests, "applied", st.Applied, "units", st.Units,
		"bulk_jobs", st.BulkJobs, "bulk_items_failed", st.BulkItemsFailed,
		"others_requests", st.Others.Requests, "others_refused", st.Others.Refused)
	return nil
}

// windowStarts are the values of --window-start.
var windowStarts = map[string]kustomertest.WindowStart{
	"first-request": kustomertest.WindowFromFirstRequest,
	"start":         kustomertest.WindowFromStart,
	"clock":         kustomertest.WindowOnClock,
}

// otherPatterns are the patterns an --other client may spend in.
var otherPatterns = map[string]kustomertest.OtherPattern{
	"steady":       kustomertest.OtherSteady,
	"front-loaded": kustomertest.OtherFrontLoaded,
	"bursts":       kustomertest.OtherBursts,
}

// parseOthers reads the --other clients, each SHARE[:PATTERN[:START[:STOP]]].
func parseOthers(specs []string) ([]kustomertest.OtherClient, error) {
	var others []kustomertest.OtherClient
	for _, spec := range specs {
		bad := func(format string, args ...any) error {
			return usagef("other: %q: %s", spec, fmt.Sprintf(format, args...))
		}
		parts := strings.Split(spec, ":")
		if len(parts) > 4 {
			return nil, bad("want SHARE[:PATTERN[:START[:STOP]]]")
		}
		var o kustomertest.OtherClient
		share, err := strconv.ParseFloat(parts[0], 64)
		if err != nil || !(share >= 0 && share <= 1) {
			return nil, bad("share %q is not from 0 to 1", parts[0])
		}
		o.Share = share
		if len(parts) > 1 {
			p, ok := otherPatterns[parts[1]]
			if !ok {
				return nil, bad("pattern %q is not steady, front-loaded or bursts", parts[1])
			}
			o.Pattern = p
		}
		for i, d := range []*time.Duration{&o.Start, &o.Stop} {
			if len(parts) <= 2+i {
				break
			}
			v, err := time.ParseDuration(parts[2+i])
			if err != nil || v < 0 {
				return nil, bad("%s %q is not a duration of 0 or more", [...]string{"start", "stop"}[i], parts[2+i])
			}
			*d = v
		}
		if o.Stop > 0 && o.Stop <= o.Start {
			return nil, bad("stop %s is not after start %s", o.Stop, o.Start)
		}
		others = append(others, o)
	}
	return others, nil
}
