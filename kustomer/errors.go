package kustomer

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// Sentinels for errors.Is. Every *APIError matches exactly one of ErrPermanent, ErrAuth,
// ErrThrottled or ErrTransient, and possibly ErrBulkReadDenied or ErrMalformedAnswer besides;
// every *ValidationError matches ErrInvalid.
var (
	// ErrInvalid: the update failed validation; no request was made. Never retry.
	ErrInvalid = errors.New("invalid update")
	// ErrPermanent: Kustomer rejected the request (400, 404, 409, 413, 422, other 4xx, or an
	// unexpected redirect, which points at a wrong base URL). Never retry.
	ErrPermanent = errors.New("rejected by Kustomer")
	// ErrAuth: 401 or 403. The API key is wrong or lacks the role; the message is not at fault.
	ErrAuth = errors.New("Kustomer refused the API key")
	// ErrThrottled: 429. Pacing, not a failure: retry after RetryAfter.
	ErrThrottled = errors.New("throttled by Kustomer")
	// ErrTransient: 5xx, timeouts, connection errors. Retry with backoff.
	ErrTransient = errors.New("transient failure")
	// ErrBulkReadDenied: a 403 to ReadBulkJob or ReadBulkBatches. The key may submit bulk
	// updates but lacks the role org.permission.bulk.read, so jobs cannot be followed: stop
	// using bulk rather than stopping everything. Such an error also matches ErrAuth.
	ErrBulkReadDenied = errors.New("the API key lacks the role org.permission.bulk.read")
	// ErrMalformedAnswer: a 2xx answer the client cannot read (a bulk submit without a job id,
	// a job or batch list of the wrong shape). The request may have taken effect: a bulk job
	// may exist although its id is unknown. Such an error is ClassTransient.
	ErrMalformedAnswer = errors.New("malformed answer from Kustomer")
)

// Op names the Client method a request was made for.
type Op string

// The requests Client makes.
const (
	OpUpdate          Op = "update conversation"   // UpdateConversation
	OpSubmitBulk      Op = "submit bulk update"    // SubmitBulk
	OpReadBulkJob     Op = "read bulk job"         // ReadBulkJob
	OpReadBulkBatches Op = "read bulk job batches" // ReadBulkBatches
	OpRead            Op = "read conversation"     // GetConversation
)

// bulkRead reports whether op reads a bulk job, which needs org.permission.bulk.read.
func (op Op) bulkRead() bool { return op == OpReadBulkJob || op == OpReadBulkBatches }

// Class tells the worker what to do about a failed request.
type Class int

const (
	ClassPermanent Class = iota + 1 // dead-letter at once
	ClassAuth                       // stop and probe until the key works again
	ClassThrottled                  // wait RetryAfter, costs no attempt
	ClassTransient                  // retry with backoff, costs an attempt
)

func (c Class) String() string {
	switch c {
	case ClassPermanent:
		return "permanent"
	case ClassAuth:
		return "auth"
	case ClassThrottled:
		return "throttled"
	case ClassTransient:
		return "transient"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Scope says whose limit a 429 concerns.
type Scope int

const (
	ScopeNone         Scope = iota // not a 429
	ScopeOrg                       // the org-wide budget is spent: every request waits until reset
	ScopeConversation              // one conversation's object limit; the org budget remains
)

func (s Scope) String() string {
	switch s {
	case ScopeOrg:
		return "org"
	case ScopeConversation:
		return "conversation"
	}
	return "none"
}

// APIError is a failed call of a Client method: an HTTP answer other than 2xx, a transport
// failure (Status 0), or a 2xx answer that cannot be read (see ErrMalformedAnswer). It never
// contains the API key.
type APIError struct {
	Op        Op            // the method that made the request; "" for an APIError built by hand, read as OpUpdate
	Status    int           // HTTP status; 0 when no answer arrived
	Class     Class         // what to do about it
	Scope     Scope         // for 429s: org budget or one conversation
	Reason    string        // Kustomer's reason from either error shape, or a description of the transport error
	Body      string        // at most MaxErrorBody bytes of the answer body
	RateLimit RateLimit     // the rate-limit headers of the answer
	Wait      time.Duration // for 429 and any answer with Retry-After: how long to wait before the next try, capped at MaxWait; 0 if unknown
	Err       error         // the underlying transport error, if any
}

// MaxErrorBody is how much of an error answer's body an APIError keeps.
const MaxErrorBody = 1024

// MaxWait caps any wait derived from Retry-After or x-ratelimit-reset.
const MaxWait = 60 * time.Second

// Error describes the failure; the bulk methods name themselves after "kustomer: ", an update
// (Op "" or OpUpdate) does not.
func (e *APIError) Error() string {
	prefix := "kustomer: "
	if e.Op != "" && e.Op != OpUpdate {
		prefix += string(e.Op) + ": "
	}
	if e.Status == 0 {
		return fmt.Sprintf("%s%s: %s", prefix, e.Class, e.Reason)
	}
	if e.Reason == "" {
		return fmt.Sprintf("%sHTTP %d", prefix, e.Status)
	}
	return fmt.Sprintf("%sHTTP %d: %s", prefix, e.Status, e.Reason)
}

func (e *APIError) Unwrap() error { return e.Err }

// BulkReadDenied reports whether the error is a 403 to a read of a bulk job: the key lacks
// org.permission.bulk.read. errors.Is(err, ErrBulkReadDenied) says the same.
func (e *APIError) BulkReadDenied() bool {
	return e.Status == http.StatusForbidden && e.Op.bulkRead()
}

// ReadDenied reports whether the error is a 403 to a read of a conversation: the key lacks the
// read role. It says nothing of the key's right to update conversations.
func (e *APIError) ReadDenied() bool {
	return e.Status == http.StatusForbidden && e.Op == OpRead
}

// Malformed reports whether the error is a 2xx answer that could not be read.
// errors.Is(err, ErrMalformedAnswer) says the same.
func (e *APIError) Malformed() bool { return e.Status >= 200 && e.Status <= 299 }

// Is matches the sentinel of the error's class, and ErrBulkReadDenied and ErrMalformedAnswer
// when they apply.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrBulkReadDenied:
		return e.BulkReadDenied()
	case ErrMalformedAnswer:
		return e.Malformed()
	case ErrPermanent:
		return e.Class == ClassPermanent
	case ErrAuth:
		return e.Class == ClassAuth
	case ErrThrottled:
		return e.Class == ClassThrottled
	case ErrTransient:
		return e.Class == ClassTransient
	}
	return false
}

// maxReason caps APIError.Reason, in bytes (cut on a character boundary).
const maxReason = 300

// classify maps a non-2xx status to what the worker should do about it. Redirects and other
// unexpected statuses are not retried: they point at a misconfigured base URL, not a busy server.
func classify(status int) Class {
	switch {
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return ClassAuth
	case status == http.StatusTooManyRequests:
		return ClassThrottled
	case status >= 500:
		return ClassTransient
	}
	return ClassPermanent
}

// newAPIError describes a non-2xx answer received at now. body is the start of the answer; key is
// removed from everything kept.
func newAPIError(status int, rl RateLimit, body []byte, key string, now time.Time) *APIError {
	e := &APIError{Status: status, Class: classify(status), RateLimit: rl}
	if e.Class == ClassThrottled {
		// An object (per-conversation) limit answers 429 while the org budget still has room.
		e.Scope = ScopeOrg
		if rl.Remaining > 0 {
			e.Scope = ScopeConversation
		}
	}
	switch {
	case rl.RetryAfter > 0:
		e.Wait = min(rl.RetryAfter, MaxWait)
	case e.Scope == ScopeOrg:
		e.Wait = rl.untilReset(now)
	}
	text := scrub(string(body), key)
	e.Body = logtext.Truncate(text, MaxErrorBody, "")
	// Scrubbed again after decoding: the body may hold the key JSON-escaped (\/, \u003c, ...).
	e.Reason = logtext.Truncate(scrub(reason(text), key), maxReason, "")
	return e
}

// scrub removes the API key from s, in case a server or proxy echoes the request back.
func scrub(s, key string) string {
	if key == "" {
		return s
	}
	return strings.ReplaceAll(s, key, redacted)
}

// errorDoc covers Kustomer's two error shapes, {"errors":[{"code","message","meta"}]} and the
// JSON:API one {"errors":[{"status","code","title","detail","source"}]}, and a bare {"message"}.
type errorDoc struct {
	Errors []struct {
		Code    string `json:"code"`
		Title   string `json:"title"`
		Detail  string `json:"detail"`
		Message string `json:"message"`
		Source  struct {
			Pointer   string `json:"pointer"`
			Parameter string `json:"parameter"`
		} `json:"source"`
	} `json:"errors"`
	Message string `json:"message"`
	Error   string `json:"error"`
}

// reason extracts Kustomer's explanation from an error answer, several errors joined with "; ",
// falling back to the start of the body text.
func reason(body string) string {
	var doc errorDoc
	// A field of an unexpected type is skipped and the rest still decoded, so type errors are
	// ignored; what could be read is used.
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		if _, ok := errors.AsType[*json.UnmarshalTypeError](err); !ok {
			return plain(body)
		}
	}
	var reasons []string
	for _, item := range doc.Errors {
		var parts []string
		for _, p := range []string{item.Code, item.Title, item.Detail, item.Message} {
			if p = strings.TrimSpace(p); p != "" && !slices.Contains(parts, p) {
				parts = append(parts, p)
			}
		}
		r := strings.Join(parts, ": ")
		if ptr := item.Source.Pointer; ptr != "" {
			r += " (at " + ptr + ")"
		} else if param := item.Source.Parameter; param != "" {
			r += " (parameter " + param + ")"
		}
		if r = strings.TrimSpace(r); r != "" {
			reasons = append(reasons, r)
		}
	}
	if len(reasons) > 0 {
		return plain(strings.Join(reasons, "; "))
	}
	for _, m := range []string{doc.Message, doc.Error} {
		if m = strings.TrimSpace(m); m != "" {
			return plain(m)
		}
	}
	return plain(body)
}

// plain makes s fit one log line: valid UTF-8, no control characters, runs of space collapsed.
func plain(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}
