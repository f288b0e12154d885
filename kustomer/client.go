package kustomer

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// STUB: replaced by the real implementation.

type RateLimit struct {
	Limit      int           // x-ratelimit-limit; -1 when absent
	Remaining  int           // x-ratelimit-remaining; -1 when absent
	Reset      time.Time     // x-ratelimit-reset as an absolute time; zero when absent
	RetryAfter time.Duration // Retry-After; 0 when absent
}

type Result struct {
	Status    int
	Rev       int64
	RateLimit RateLimit
}

type Client struct{}

func (c *Client) UpdateConversation(ctx context.Context, u Update) (*Result, error) {
	return nil, errors.New("unimplemented")
}

var _ = http.StatusOK
