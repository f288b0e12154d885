package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// A daemon SIGKILLed while it holds a message on its last delivery: the consumer never
// delivers it again, and the next daemon dead-letters it as stranded instead of leaving it in
// the work stream for ever.
func TestDaemonDeadLettersAMessageKilledOnItsLastDelivery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	const conv = "5f3c9a1b2c3d4e5f60718293"
	// Both deliveries hang in Kustomer until their daemon dies.
	fake.Script(conv, kustomertest.Slow(10*time.Minute), kustomertest.Slow(10*time.Minute))
	args := []string{"--nats-url", b.url, "--kustomer-url", fake.URL, "--rate-per-minute", "0",
		"--ack-wait", "2s", "--max-attempts", "1", "--max-deliver", "2", "--request-timeout", "10m",
		"--stranded-every", "1s"}
	key := map[string]string{"KUSTOMER_API_KEY": "test-key"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body := `{"id":"` + conv + `","body":{"name":"x"}}`
	if _, err := b.js.Publish(ctx, "kustomer.conversations.update", []byte(body)); err != nil {
		t.Fatal(err)
	}
	delivered := func(n uint64) func() bool {
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := b.js.Consumer(ctx, "KUSTOMER_UPDATES", "kustomer-worker")
			if err != nil {
				return false
			}
			info := c.CachedInfo()
			return info.Delivered.Consumer >= n && info.NumAckPending == 1
		}
	}
	for i := range 2 { // killed on its first delivery, then on its second and last
		d := startDaemon(t, key, args...)
		testwait.Until(t, "the message delivered and held", 60*time.Second, delivered(uint64(i+1)))
		d.signal(syscall.SIGKILL)
		d.wait(10 * time.Second)
	}
	startDaemon(t, key, args...)
	testwait.Until(t, "the stranded message dead-lettered", 90*time.Second, func() bool {
		return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ") == 1
	})
	testwait.Until(t, "the work stream to empty", 30*time.Second, func() bool { return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0 })
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, "KUSTOMER_UPDATES_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "kustomer.conversations.dlq")
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != body || m.Header.Get(queue.HeaderClass) != string(queue.ClassStranded) {
		t.Errorf("dead letter %q, class %q; want the original bytes, class stranded", m.Data, m.Header.Get(queue.HeaderClass))
	}
	if n := len(fake.RequestsFor(conv)); n > 2 {
		t.Errorf("%d requests for the conversation; want 2 at most (one per delivery: it was dead-lettered, not sent a third time)", n)
	}
}
