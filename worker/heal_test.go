package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

func (f *fixture) deleteConsumer() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.js.DeleteConsumer(ctx, f.top.Stream, f.top.Consumer); err != nil {
		f.t.Fatal(err)
	}
}

func TestConsumerDeletedUnderARunningPool(t *testing.T) {
	t.Parallel()
	t.Run("with stream management the consumer is re-created and work goes on", func(t *testing.T) {
		t.Parallel()
		f := setup(t, options{fake: kustomertest.Config{Latency: 2 * time.Millisecond}, cfg: worker.Config{Concurrency: 4}, heal: true})
		for i := range 100 {
			f.publishUpdate(i, `{"name":"before"}`)
		}
		f.waitDrained(30 * time.Second)
		f.deleteConsumer()
		for i := range 300 {
			f.publishUpdate(i, fmt.Sprintf(`{"name":"n-%d"}`, i))
		}
		f.waitDrained(60 * time.Second)
		for i := range 300 {
			if c, _ := f.fake.Conversation(id(i)); c.Attributes["name"] != fmt.Sprintf("n-%d", i) {
				t.Fatalf("update %d after the consumer was deleted never applied", i)
			}
		}
	})
	t.Run("without it the pool says why it is not ready, and is ready again once the consumer is back", func(t *testing.T) {
		t.Parallel()
		f := setup(t, options{cfg: worker.Config{Concurrency: 2}})
		f.deleteConsumer()
		var fe *worker.FetchError
		testwait.Until(t, "Ready to report failing pulls", 15*time.Second, func() bool { return errors.As(f.pool.Ready(), &fe) })
		if fe.Since.IsZero() || fe.Err == nil {
			t.Errorf("FetchError %+v lacks the time or the cause", fe)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := f.js.CreateOrUpdateConsumer(ctx, f.top.Stream, f.top.ConsumerConfig(queue.LaneLive)); err != nil {
			t.Fatal(err)
		}
		testwait.Until(t, "Ready again", 15*time.Second, func() bool { return f.pool.Ready() == nil })
	})
	t.Run("a lane whose pulls fail is reported while the other lane's pulls work", func(t *testing.T) {
		t.Parallel()
		f := setup(t, options{cfg: worker.Config{Concurrency: 2, FetchWait: 100 * time.Millisecond}, lanes: true})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.js.DeleteConsumer(ctx, f.top.Stream, f.top.BackfillConsumer); err != nil {
			t.Fatal(err)
		}
		var fe *worker.FetchError
		if !testwait.Within(15*time.Second, func() bool { return errors.As(f.pool.Ready(), &fe) }) {
			t.Fatalf("Ready = %v; want a FetchError for the backfill lane while the live lane's pulls work", f.pool.Ready())
		}
		if fe.Lane != "backfill" || !strings.Contains(fe.Error(), "(backfill lane)") {
			t.Errorf("Ready = %q; want it to name the backfill lane", fe)
		}
		f.publishUpdate(1, `{"name":"live"}`)
		testwait.Until(t, "the live lane to go on", 15*time.Second, func() bool {
			c, ok := f.fake.Conversation(id(1))
			return ok && c.Attributes["name"] == "live"
		})
		if !errors.As(f.pool.Ready(), &fe) {
			t.Errorf("Ready = %v after the live lane's pulls worked; want the backfill lane's failure still reported", f.pool.Ready())
		}
	})
}
