package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

func TestRunLogRecordApplied(t *testing.T) {
	srv := queuetest.StartServer(t)
	_, js := queuetest.Connect(t, srv.URL())
	top := queue.Topology{}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	log := &queue.RunLog{JS: js, Topology: top}
	if err := log.Put(ctx, queue.Run{ID: "r", Lines: 3, Published: time.Now()}); err != nil {
		t.Fatal(err)
	}
	h := nats.Header{queue.HeaderRunID: []string{"r"}, queue.HeaderRunLine: []string{"2"}}

	t.Run("a line recorded twice counts once", func(t *testing.T) {
		for range 2 {
			if err := log.RecordApplied(ctx, h, queue.Applied{Units: 1}); err != nil {
				t.Fatal(err)
			}
		}
		st, err := (&queue.RunReader{Log: log, ID: "r"}).Read(ctx)
		if err != nil || st.Applied != 1 || st.Pending != 2 || st.Units != 1 {
			t.Errorf("%+v, %v", st, err)
		}
	})
	t.Run("a message of no run records nothing", func(t *testing.T) {
		if err := log.RecordApplied(ctx, nats.Header{}, queue.Applied{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("without a runs stream the error says so", func(t *testing.T) {
		if err := js.DeleteStream(ctx, top.RunsStream); err != nil {
			t.Fatal(err)
		}
		if err := log.RecordApplied(ctx, h, queue.Applied{Units: 1}); !errors.Is(err, queue.ErrNoRunsStream) {
			t.Errorf("got %v, want ErrNoRunsStream", err)
		}
	})
}
