package worker

import (
	"fmt"
	"time"
)

// Config tunes the pool. The zero value of every field means its default.
type Config struct {
	// Concurrency is the number of goroutines sending requests. Default 8.
	Concurrency int
	// MaxAttempts is how many requests a message may spend on retryable failures (5xx,
	// timeouts, dropped connections), counted across redeliveries and restarts, before it is
	// dead-lettered as exhausted. 429s and 401s spend none. Default 10.
	MaxAttempts int
	// MaxHeld is how many messages the pool takes from the consumer before acking them,
	// including those waiting behind an earlier update to the same conversation. Keep it at or
	// below the consumer's MaxAckPending. Default 4 × Concurrency, at least 32.
	MaxHeld int
	// AckWait is the consumer's AckWait: held messages are marked in progress well before it
	// runs out, so waiting for budget or backoff never causes a redelivery. Default 30s.
	AckWait time.Duration
	// MaxDeliver is the consumer's MaxDeliver: a message on its last delivery that cannot be
	// finished is dead-lettered rather than handed back to a consumer that will never
	// deliver it again. Default 100.
	MaxDeliver int
	// RetryInitial and RetryMax bound the exponential backoff (with jitter) between retries of
	// one message. Defaults 500ms and 60s.
	RetryInitial, RetryMax time.Duration
	// ShutdownTimeout is how long in-flight requests may finish after shutdown begins; what is
	// unfinished then is handed back for redelivery. Default 30s.
	ShutdownTimeout time.Duration
	// FetchWait is how long one pull request waits for messages. Default 5s.
	FetchWait time.Duration
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 10
	}
	if c.MaxHeld == 0 {
		c.MaxHeld = max(4*c.Concurrency, 32)
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 100
	}
	if c.RetryInitial == 0 {
		c.RetryInitial = 500 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 60 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.FetchWait == 0 {
		c.FetchWait = 5 * time.Second
	}
	return c
}

// Validate names the first setting that cannot work, as its command-line flag.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 1024:
		return fmt.Errorf("concurrency: %d is not from 1 to 1024", c.Concurrency)
	case c.MaxAttempts < 1:
		return fmt.Errorf("max-attempts: %d is below 1", c.MaxAttempts)
	case c.MaxHeld < c.Concurrency:
		return fmt.Errorf("max-ack-pending: %d is below concurrency %d", c.MaxHeld, c.Concurrency)
	case c.AckWait < time.Second:
		return fmt.Errorf("ack-wait: %s is under 1s", c.AckWait)
	case c.RetryInitial <= 0 || c.RetryMax < c.RetryInitial:
		return fmt.Errorf("retry backoff: initial %s and max %s do not make a range", c.RetryInitial, c.RetryMax)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("shutdown-timeout: %s is negative", c.ShutdownTimeout)
	}
	return nil
}
