package worker

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker/gate"
)

func apiErr(status int, class kustomer.Class, scope kustomer.Scope, wait time.Duration) *kustomer.APIError {
	return &kustomer.APIError{Status: status, Class: class, Scope: scope, Reason: fmt.Sprintf("reason %d", status), Wait: wait,
		RateLimit: kustomer.RateLimit{Limit: -1, Remaining: -1}}
}

// TestDecide is the README's "What happens to a message" table, row by row.
func TestDecide(t *testing.T) {
	t.Parallel()
	pol := policy{maxAttempts: 10, maxDeliver: 100, retryInitial: 500 * time.Millisecond, retryMax: 60 * time.Second}
	first := tries{delivered: 1}
	const mid = 0.5 // jitter that leaves the backoff as computed
	type want struct {
		verdict  verdict
		attempts int
		class    queue.DeadLetterClass
		status   int
		key      gate.Verdict
		delay    time.Duration
		metric   string
		reason   string // a part of the reason
	}
	cases := []struct {
		name string
		o    outcome
		t    tries
		want want
	}{
		{"2xx: ack", outcome{}, first,
			want{verdict: verdictAck, key: gate.Works, metric: "applied"}},
		{"message invalid: dead letter invalid, no attempt", outcome{invalid: errors.New("body.priority: 9 is not from 1 to 5")}, first,
			want{verdict: verdictDeadLetter, class: queue.ClassInvalid, key: gate.Unknown, metric: "invalid", reason: "body.priority"}},
		{"invalid found by the client: dead letter invalid, and a probe is given back",
			outcome{err: fmt.Errorf("update: %w", kustomer.ErrInvalid)}, first,
			want{verdict: verdictDeadLetter, class: queue.ClassInvalid, key: gate.Unknown, metric: "invalid"}},
		{"400: dead letter rejected with Kustomer's reason, one attempt", outcome{err: apiErr(400, kustomer.ClassPermanent, kustomer.ScopeNone, 0)}, first,
			want{verdict: verdictDeadLetter, attempts: 1, class: queue.ClassRejected, status: 400, key: gate.Works, metric: "rejected", reason: "reason 400"}},
		{"404: dead letter rejected", outcome{err: apiErr(404, kustomer.ClassPermanent, kustomer.ScopeNone, 0)}, first,
			want{verdict: verdictDeadLetter, attempts: 1, class: queue.ClassRejected, status: 404, key: gate.Works, metric: "rejected"}},
		{"422: dead letter rejected", outcome{err: apiErr(422, kustomer.ClassPermanent, kustomer.ScopeNone, 0)}, first,
			want{verdict: verdictDeadLetter, attempts: 1, class: queue.ClassRejected, status: 422, key: gate.Works, metric: "rejected"}},
		{"5xx: retry with backoff, one attempt", outcome{err: apiErr(503, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, first,
			want{verdict: verdictRetry, attempts: 1, status: 503, key: gate.NoAnswer, delay: 500 * time.Millisecond, metric: "transient"}},
		{"5xx: the backoff grows with the attempts", outcome{err: apiErr(502, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 2, delivered: 1},
			want{verdict: verdictRetry, attempts: 3, status: 502, key: gate.NoAnswer, delay: 1125 * time.Millisecond, metric: "transient"}},
		{"5xx with Retry-After: at least that", outcome{err: apiErr(503, kustomer.ClassTransient, kustomer.ScopeNone, 7*time.Second)}, first,
			want{verdict: verdictRetry, attempts: 1, status: 503, key: gate.NoAnswer, delay: 7 * time.Second, metric: "transient"}},
		{"timeout or dropped connection: retry", outcome{err: &kustomer.APIError{Class: kustomer.ClassTransient, Reason: "connection reset"}}, first,
			want{verdict: verdictRetry, attempts: 1, key: gate.NoAnswer, delay: 500 * time.Millisecond, metric: "transient"}},
		{"an error that is not Kustomer's answer: retry", outcome{err: errors.New("boom")}, first,
			want{verdict: verdictRetry, attempts: 1, key: gate.NoAnswer, delay: 500 * time.Millisecond, metric: "transient"}},
		{"5xx on the last attempt: dead letter exhausted", outcome{err: apiErr(500, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 9, delivered: 3},
			want{verdict: verdictDeadLetter, attempts: 10, class: queue.ClassExhausted, status: 500, key: gate.NoAnswer, metric: "exhausted", reason: "gave up after 10 attempts (delivery 3)"}},
		{"5xx on the consumer's last delivery: dead letter exhausted", outcome{err: apiErr(500, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 1, delivered: 100},
			want{verdict: verdictDeadLetter, attempts: 2, class: queue.ClassExhausted, status: 500, key: gate.NoAnswer, metric: "exhausted"}},
		{"5xx while Kustomer is down for everybody (the breaker): retry, no attempt", outcome{err: apiErr(503, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 2, delivered: 1, outage: true},
			want{verdict: verdictRetry, attempts: 2, status: 503, key: gate.NoAnswer, delay: 500 * time.Millisecond, metric: "outage"}},
		{"5xx on the last attempt during an outage: not exhausted", outcome{err: apiErr(503, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 9, delivered: 1, outage: true},
			want{verdict: verdictRetry, attempts: 9, status: 503, key: gate.NoAnswer, delay: 500 * time.Millisecond, metric: "outage"}},
		{"5xx on the last attempt of a conversation failing alone while others start failing: held, no attempt", outcome{err: apiErr(503, kustomer.ClassTransient, kustomer.ScopeNone, 0)}, tries{attempts: 9, delivered: 1, outage: true, hold: 4 * time.Second},
			want{verdict: verdictRetry, attempts: 9, status: 503, key: gate.NoAnswer, delay: 4 * time.Second, metric: "outage"}},
		{"429 with the org budget spent: pause every request, no attempt", outcome{err: apiErr(429, kustomer.ClassThrottled, kustomer.ScopeOrg, 3*time.Second)}, tries{attempts: 2, delivered: 1},
			want{verdict: verdictPauseAll, attempts: 2, status: 429, key: gate.Works, metric: "throttled_org"}},
		{"429 while the budget remains: back off this conversation, no attempt", outcome{err: apiErr(429, kustomer.ClassThrottled, kustomer.ScopeConversation, 0)}, first,
			want{verdict: verdictBackOff, status: 429, key: gate.Works, delay: 500 * time.Millisecond, metric: "throttled_conversation"}},
		{"per-conversation 429 with Retry-After: at least that", outcome{err: apiErr(429, kustomer.ClassThrottled, kustomer.ScopeConversation, 4*time.Second)}, first,
			want{verdict: verdictBackOff, status: 429, key: gate.Works, delay: 4 * time.Second, metric: "throttled_conversation"}},
		{"repeated per-conversation 429s back off further", outcome{err: apiErr(429, kustomer.ClassThrottled, kustomer.ScopeConversation, 0)}, tries{throttles: 3, delivered: 1},
			want{verdict: verdictBackOff, status: 429, key: gate.Works, delay: 1687500 * time.Microsecond, metric: "throttled_conversation"}},
		{"401: hold for the key, no attempt, nothing dead-lettered", outcome{err: apiErr(401, kustomer.ClassAuth, kustomer.ScopeNone, 0)}, tries{attempts: 9, delivered: 100},
			want{verdict: verdictHoldForKey, attempts: 9, status: 401, key: gate.Refused, metric: "auth"}},
		{"403: hold for the key", outcome{err: apiErr(403, kustomer.ClassAuth, kustomer.ScopeNone, 0)}, first,
			want{verdict: verdictHoldForKey, status: 403, key: gate.Refused, metric: "auth"}},
		{"panic: retried like a transient failure, one attempt", outcome{panicked: "nil map"}, first,
			want{verdict: verdictRetry, attempts: 1, key: gate.Unknown, delay: 500 * time.Millisecond, metric: "panic", reason: "panic: nil map"}},
		{"shutdown cut the request short: keep it for hand-back, no attempt", outcome{canceled: true}, tries{attempts: 4, delivered: 2},
			want{verdict: verdictKeep, attempts: 4, key: gate.Unknown}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := decide(c.o, c.t, pol, mid)
			got := want{verdict: d.verdict, attempts: d.attempts, class: d.class, status: d.status, key: d.key, delay: d.delay, metric: d.metric}
			w := c.want
			w.reason = ""
			if got != w {
				t.Errorf("decide = %+v\nwant     %+v", got, w)
			}
			if !strings.Contains(d.reason, c.want.reason) {
				t.Errorf("reason %q does not contain %q", d.reason, c.want.reason)
			}
			if d.verdict == verdictPauseAll && d.apiErr == nil {
				t.Error("an org pause carries no rate-limit reading for the pacer")
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	t.Run("caps at the maximum, then jitters by half either way", func(t *testing.T) {
		t.Parallel()
		for _, c := range []struct {
			n      int
			jitter float64
			want   time.Duration
		}{
			{1, 0.5, time.Second}, {2, 0.5, 1500 * time.Millisecond}, {40, 0.5, 10 * time.Second},
			{40, 0, 5 * time.Second}, {40, 0.999999, 14999990 * time.Microsecond},
		} {
			if got := backoffDelay(c.n, time.Second, 10*time.Second, c.jitter); got.Round(10*time.Microsecond) != c.want.Round(10*time.Microsecond) {
				t.Errorf("backoffDelay(%d, jitter %v) = %s; want %s", c.n, c.jitter, got, c.want)
			}
		}
	})
}

// TestKeyOf covers the answers only bulk requests get; decide's table covers the rest.
func TestKeyOf(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		err  error
		want gate.Verdict
	}{
		{"a 403 to a bulk read (the role org.permission.bulk.read) says nothing of the key",
			&kustomer.APIError{Op: kustomer.OpReadBulkBatches, Status: 403, Class: kustomer.ClassAuth}, gate.Unknown},
		{"a 403 to a bulk submit refuses the key",
			&kustomer.APIError{Op: kustomer.OpSubmitBulk, Status: 403, Class: kustomer.ClassAuth}, gate.Refused},
		{"a 401 to a bulk read refuses the key",
			&kustomer.APIError{Op: kustomer.OpReadBulkBatches, Status: 401, Class: kustomer.ClassAuth}, gate.Refused},
		{"a 2xx the client could not read got past the key check",
			&kustomer.APIError{Op: kustomer.OpSubmitBulk, Status: 201, Class: kustomer.ClassTransient}, gate.Works},
		{"a dropped bulk submit learned nothing good",
			&kustomer.APIError{Op: kustomer.OpSubmitBulk, Class: kustomer.ClassTransient, Reason: "EOF"}, gate.NoAnswer},
	} {
		if got := keyOf(outcome{err: c.err}); got != c.want {
			t.Errorf("%s: keyOf = %d; want %d", c.name, got, c.want)
		}
	}
}
