package worker

import (
	"errors"
	"fmt"
	"time"
)

// ErrAuthBlocked is Ready's answer while Kustomer refuses the API key.
var ErrAuthBlocked = errors.New("Kustomer refuses the API key (401/403): not taking messages")

// ErrNotRunning is Ready's answer before Run binds the consumer or after it returned.
var ErrNotRunning = errors.New("worker pool not running")

// Unavailable is the readiness error while the breaker holds Kustomer down: for everybody, or,
// with Writes, for updates alone while it answers reads.
type Unavailable struct {
	Since  time.Time
	Writes bool // Kustomer answers reads but refuses updates across many conversations
}

func (e *Unavailable) Error() string {
	if e.Writes {
		return "Kustomer refuses updates since " + e.Since.UTC().Format(time.RFC3339) +
			" while it answers reads (updates fail across many conversations; probing with one update)"
	}
	return "Kustomer unavailable since " + e.Since.UTC().Format(time.RFC3339) + " (requests fail transiently; probing)"
}

// FetchError is Ready's answer while pulls from the consumer have been failing for a while
// (NATS unreachable, the consumer or stream deleted, permissions).
type FetchError struct {
	Lane  string // "live" or "backfill"
	Since time.Time
	Err   error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("cannot take messages from NATS (%s lane) since %s: %v", e.Lane, e.Since.UTC().Format(time.RFC3339), e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// ConfigError names the Config field that cannot work and why. Callers that expose the
// settings under other names (the command line's flags) map Field to theirs.
type ConfigError struct {
	Field   string // the Go field name, such as "MaxAttempts"
	Problem string
}

func (e *ConfigError) Error() string { return "worker: Config." + e.Field + ": " + e.Problem }
