package kustomer

import (
	"errors"
	"fmt"
	"time"
)

// Sentinels for errors.Is. Every *APIError matches exactly one of ErrPermanent, ErrAuth,
// ErrThrottled or ErrTransient; every *ValidationError matches ErrInvalid.
var (
	// ErrInvalid: the update failed validation; no request was made. Never retry.
	ErrInvalid = errors.New("invalid update")
	// ErrPermanent: Kustomer rejected the request (400, 404, 409, 413, 422, other 4xx). Never retry.
	ErrPermanent = errors.New("rejected by Kustomer")
	// ErrAuth: 401 or 403. The API key is wrong or lacks the role; the message is not at fault.
	ErrAuth = errors.New("Kustomer refused the API key")
	// ErrThrottled: 429. Pacing, not a failure: retry after RetryAfter.
	ErrThrottled = errors.New("throttled by Kustomer")
	// ErrTransient: 5xx, timeouts, connection errors. Retry with backoff.
	ErrTransient = errors.New("transient failure")
)

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

// APIError is a failed UpdateConversation call: an HTTP answer other than 2xx, or a transport
// failure (Status 0). It never contains the API key.
type APIError struct {
	Status    int           // HTTP status; 0 when no answer arrived
	Class     Class         // what to do about it
	Scope     Scope         // for 429s: org budget or one conversation
	Reason    string        // Kustomer's reason from either error shape, or a description of the transport error
	Body      string        // at most MaxErrorBody bytes of the answer body
	RateLimit RateLimit     // the rate-limit headers of the answer
	Wait      time.Duration // for 429 (and 503 with Retry-After): how long to wait before the next try, capped at MaxWait; 0 if unknown
	Err       error         // the underlying transport error, if any
}

// MaxErrorBody is how much of an error answer's body an APIError keeps.
const MaxErrorBody = 1024

// MaxWait caps any wait derived from Retry-After or x-ratelimit-reset.
const MaxWait = 60 * time.Second

func (e *APIError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("kustomer: %s: %s", e.Class, e.Reason)
	}
	if e.Reason == "" {
		return fmt.Sprintf("kustomer: HTTP %d", e.Status)
	}
	return fmt.Sprintf("kustomer: HTTP %d: %s", e.Status, e.Reason)
}

func (e *APIError) Unwrap() error { return e.Err }

// Is matches the sentinel of the error's class.
func (e *APIError) Is(target error) bool {
	switch target {
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
