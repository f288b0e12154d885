package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestPullFailed(t *testing.T) {
	t.Parallel()
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		what string
		ctx  context.Context
		err  error
		want bool
	}{
		{"a pull that brought messages", live, nil, false},
		{"a pull whose wait ended", live, context.DeadlineExceeded, false},
		{"a pull without messages", live, jetstream.ErrNoMessages, false},
		{"a pull refused because another replica holds the pin (a standby now)", live, jetstream.ErrPinIDMismatch, false},
		{"a wrapped pin refusal", live, fmt.Errorf("fetch: %w", jetstream.ErrPinIDMismatch), false},
		{"a pull cut short by shutdown", ended, nats.ErrConnectionClosed, false},
		{"NATS unreachable", live, nats.ErrNoResponders, true},
		{"the consumer deleted", live, jetstream.ErrConsumerDeleted, true},
		{"anything else", live, errors.New("boom"), true},
	} {
		if got := pullFailed(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: pullFailed = %v, want %v", tc.what, got, tc.want)
		}
	}
}
