package worker

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
)

// outcome is what happened to one try of a message: the value that sending returns and
// deciding reads. Exactly one of its cases holds.
type outcome struct {
	invalid  error // the message failed validation; nothing was sent
	err      error // the request failed; nil with the other fields zero means Kustomer accepted it
	canceled bool  // shutdown cut the request short: nothing is known
	panicked any   // handling the message panicked
}

// tries is what deciding needs to know of a message's history.
type tries struct {
	attempts  int           // requests spent on retryable failures so far, across deliveries
	throttles int           // per-conversation 429s so far, in this process
	delivered uint64        // the current delivery's number
	outage    bool          // Kustomer looks down for everybody (the breaker): a failure spends no attempt
	hold      time.Duration // with outage: the breaker's wait before the next try
}

// policy is the configuration deciding reads.
type policy struct {
	maxAttempts            int
	maxDeliver             int // the consumer's; <= 0 means unlimited
	retryInitial, retryMax time.Duration
}

func (c policy) lastDelivery(delivered uint64) bool {
	return c.maxDeliver > 0 && delivered >= uint64(c.maxDeliver)
}

// verdict is what to do with a message after one try.
type verdict int

const (
	verdictAck        verdict = iota + 1 // Kustomer accepted the update: acknowledge
	verdictRetry                         // a retryable failure: try again after delay
	verdictDeadLetter                    // can never succeed: dead-letter with the reason, then acknowledge
	verdictPauseAll                      // the org budget is spent: pause every request, then retry
	verdictBackOff                       // this conversation is rate-limited: retry it after delay
	verdictHoldForKey                    // Kustomer refused the key: hold until it works again
	verdictKeep                          // shutdown: keep it held to be handed back
)

var verdictNames = map[verdict]string{
	verdictAck: "ack", verdictRetry: "retry", verdictDeadLetter: "dead-letter", verdictPauseAll: "pause-all",
	verdictBackOff: "back-off", verdictHoldForKey: "hold-for-key", verdictKeep: "keep",
}

func (v verdict) String() string { return verdictNames[v] }

// keyOf reads an outcome for the auth gate: what the try says about the API key. It is
// decide's key verdict, and the bulk requests' (passage.go).
func keyOf(o outcome) gate.Verdict {
	switch {
	case o.invalid != nil || o.canceled || o.panicked != nil:
		return gate.Unknown
	case o.err == nil:
		return gate.Works
	}
	var apiErr *kustomer.APIError
	if !errors.As(o.err, &apiErr) {
		if errors.Is(o.err, kustomer.ErrInvalid) {
			return gate.Unknown // nothing was sent
		}
		return gate.NoAnswer
	}
	switch {
	case apiErr.BulkReadDenied():
		// The key may not read bulk jobs (bulk mode turns itself off, package bulk); whether it
		// may update conversations, this answer does not say.
		return gate.Unknown
	case apiErr.Class == kustomer.ClassAuth:
		return gate.Refused
	case apiErr.Malformed():
		return gate.Works // a 2xx the client could not read: the key got through
	case apiErr.Class == kustomer.ClassTransient:
		return gate.NoAnswer
	}
	return gate.Works // throttled or rejected: the answer got past Kustomer's key check
}

// healthOf reads an outcome for the outage breaker.
func healthOf(o outcome) gate.Health {
	switch {
	case o.invalid != nil || o.canceled || o.panicked != nil:
		return gate.HealthUnknown
	case o.err == nil:
		return gate.Up
	}
	var apiErr *kustomer.APIError
	if errors.As(o.err, &apiErr) {
		if apiErr.Class == kustomer.ClassTransient {
			return gate.Down
		}
		return gate.Up
	}
	if errors.Is(o.err, kustomer.ErrInvalid) {
		return gate.HealthUnknown
	}
	return gate.Down
}

// decision is the pure result of deciding: what to do with the message, and what the try
// says about the key and the budget. Carrying it out is settle's job.
type decision struct {
	verdict  verdict
	delay    time.Duration         // verdictRetry, verdictBackOff: wait this long
	attempts int                   // the message's attempts after this try
	class    queue.DeadLetterClass // verdictDeadLetter
	status   int                   // HTTP status, 0 if none
	reason   string                // for the dead letter, and the log unless logReason is set
	// logReason is reason without the message's values (a validation error), for the log,
	// which never quotes a body value; "" when reason has none.
	logReason string
	key       gate.Verdict       // for the auth gate
	apiErr    *kustomer.APIError // the answer, when there was one: its rate-limit reading
	metric    string             // the retry reason or the update outcome for the metrics
	throttle  kustomer.Scope     // verdictPauseAll, verdictBackOff: whose limit
}

// decide maps one try's outcome to a decision. It is pure: the same outcome, history, policy
// and jitter (uniform in [0, 1)) give the same decision. It is the whole of docs/PROCESSING.md's "What
// happens to a message" table.
func decide(o outcome, t tries, c policy, jitter float64) decision {
	d := verdictOf(o, t, c, jitter)
	d.key = keyOf(o)
	return d
}

// verdictOf is decide less the key verdict, which keyOf reads alone: bulk requests ask it too.
func verdictOf(o outcome, t tries, c policy, jitter float64) decision {
	switch {
	case o.invalid != nil:
		return decision{verdict: verdictDeadLetter, attempts: t.attempts, class: queue.ClassInvalid,
			reason: o.invalid.Error(), logReason: redacted(o.invalid), metric: string(queue.ClassInvalid)}
	case o.canceled:
		return decision{verdict: verdictKeep, attempts: t.attempts}
	case o.panicked != nil:
		return failed(t, c, jitter, 0, fmt.Sprintf("panic: %v", o.panicked), 0, "panic")
	case o.err == nil:
		return decision{verdict: verdictAck, attempts: t.attempts, metric: "applied"}
	}
	var apiErr *kustomer.APIError
	if !errors.As(o.err, &apiErr) {
		if errors.Is(o.err, kustomer.ErrInvalid) {
			return decision{verdict: verdictDeadLetter, attempts: t.attempts, class: queue.ClassInvalid,
				reason: o.err.Error(), logReason: redacted(o.err), metric: string(queue.ClassInvalid)}
		}
		return failed(t, c, jitter, 0, o.err.Error(), 0, "transient")
	}
	switch apiErr.Class {
	case kustomer.ClassAuth:
		return decision{verdict: verdictHoldForKey, attempts: t.attempts, status: apiErr.Status,
			reason: apiErr.Reason, apiErr: apiErr, metric: "auth"}
	case kustomer.ClassThrottled:
		d := decision{attempts: t.attempts, status: apiErr.Status, reason: apiErr.Error(), apiErr: apiErr,
			throttle: apiErr.Scope}
		if apiErr.Scope == kustomer.ScopeConversation {
			d.verdict, d.metric = verdictBackOff, "throttled_conversation"
			d.delay = max(apiErr.Wait, backoffDelay(t.throttles+1, c.retryInitial, c.retryMax, jitter))
			return d
		}
		d.verdict, d.metric = verdictPauseAll, "throttled_org"
		return d
	case kustomer.ClassPermanent:
		return decision{verdict: verdictDeadLetter, attempts: t.attempts + 1, class: queue.ClassRejected,
			status: apiErr.Status, reason: apiErr.Error(), apiErr: apiErr, metric: string(queue.ClassRejected)}
	}
	d := failed(t, c, jitter, apiErr.Status, apiErr.Error(), apiErr.Wait, "transient")
	d.apiErr = apiErr
	return d
}

// failed spends an attempt on a retryable failure: retry after the backoff (at least wait), or
// dead-letter as exhausted once attempts or deliveries run out.
func failed(t tries, c policy, jitter float64, status int, reason string, wait time.Duration, metric string) decision {
	if t.outage && metric == "transient" {
		return decision{verdict: verdictRetry, attempts: t.attempts, status: status, reason: reason,
			metric: "outage", delay: max(backoffDelay(1, c.retryInitial, c.retryMax, jitter), wait, t.hold)}
	}
	n := t.attempts + 1
	if n >= c.maxAttempts || c.lastDelivery(t.delivered) {
		return decision{verdict: verdictDeadLetter, attempts: n, class: queue.ClassExhausted, status: status,
			reason: fmt.Sprintf("gave up after %d attempts (delivery %d): %s", n, t.delivered, reason),
			metric: string(queue.ClassExhausted)}
	}
	return decision{verdict: verdictRetry, attempts: n, status: status, reason: reason, metric: metric,
		delay: max(backoffDelay(n, c.retryInitial, c.retryMax, jitter), wait)}
}

// Exponential backoff with jitter, as cenkalti/backoff's defaults: the n-th retry waits
// initial × 1.5^(n-1), capped at max, randomized by ±50 %. backoffDelay computes it from a
// count, with the jitter given, for decide (which stays pure) and for the retries of a job
// that one goroutine after another takes up (its count lives in the job); a loop in one
// goroutine keeps a backoff.ExponentialBackOff instead (fetch, a bulk submit).
const (
	backoffMultiplier = 1.5
	backoffJitter     = 0.5
)

func backoffDelay(n int, initial, maxD time.Duration, jitter float64) time.Duration {
	d := float64(initial) * math.Pow(backoffMultiplier, float64(max(n-1, 0)))
	d = min(d, float64(maxD))
	d *= 1 - backoffJitter + 2*backoffJitter*jitter
	return time.Duration(d)
}

// logged is the reason the log shows: without the message's values.
func (d decision) logged() string {
	if d.logReason != "" {
		return d.logReason
	}
	return d.reason
}

// redacted is a validation error's fields and problems without the values at fault.
func redacted(err error) string {
	var ve *kustomer.ValidationError
	if errors.As(err, &ve) {
		return ve.Redacted()
	}
	return err.Error()
}

// reasonOf says in a few words what went wrong in a try, for log lines about many.
func reasonOf(o outcome) string {
	switch {
	case o.err != nil:
		return redacted(o.err)
	case o.invalid != nil:
		return redacted(o.invalid)
	case o.panicked != nil:
		return fmt.Sprint("panic: ", o.panicked)
	}
	return ""
}
