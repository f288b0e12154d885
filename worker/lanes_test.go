package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// publishLane publishes an update of conversation conv to lane's <subject>.<id>.
func (f *fixture) publishLane(l queue.Lane, conv int, body string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := fmt.Sprintf(`{"id":%q,"body":%s}`, id(conv), body)
	if _, err := f.js.Publish(ctx, f.top.ConversationSubject(l, id(conv)), []byte(msg)); err != nil {
		f.t.Fatal(err)
	}
}

// publishBare publishes an update of conversation conv to lane's bare subject: its
// conversation is only in its body.
func (f *fixture) publishBare(l queue.Lane, conv int, body string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := fmt.Sprintf(`{"id":%q,"body":%s}`, id(conv), body)
	if _, err := f.js.Publish(ctx, f.top.LaneSubject(l), []byte(msg)); err != nil {
		f.t.Fatal(err)
	}
}

// heldBack is a lane's consumer that delivers nothing until open is closed: its messages stay
// pending in the stream, as they do while a crashed process holds them or while a backlog
// beyond MaxAckPending keeps them from being pulled.
type heldBack struct {
	worker.Consumer
	open chan struct{}
}

func (h heldBack) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	select {
	case <-h.open:
		return h.Consumer.Fetch(n, opts...)
	case <-time.After(50 * time.Millisecond):
		return noMessages{}, nil
	}
}

// noMessages is a pull that ended without any.
type noMessages struct{}

func (noMessages) Messages() <-chan jetstream.Msg {
	c := make(chan jetstream.Msg)
	close(c)
	return c
}
func (noMessages) Error() error { return nil }

// publishAs publishes an update of conversation conv to lane l, on the lane's bare subject if
// bare, else on <lane subject>.<id>.
func (f *fixture) publishAs(bare bool, l queue.Lane, conv int, body string) {
	f.t.Helper()
	if bare {
		f.publishBare(l, conv, body)
	} else {
		f.publishLane(l, conv, body)
	}
}

// notEndedAt counts the conversations 0..convs-1 whose name at the fake is not want.
func (f *fixture) notEndedAt(convs int, want string) int { return notEndedAt(f.fake, convs, want) }

func TestLanes(t *testing.T) {
	t.Parallel()
	t.Run("a live update does not wait behind a backfill", func(t *testing.T) {
		t.Parallel()
		const backfill = 300
		f := setup(t, options{noStart: true})
		for i := range backfill {
			f.publishLane(queue.LaneBackfill, i, `{"name":"backfill"}`)
		}
		f.start(options{cfg: worker.Config{Concurrency: 4}, rate: 1200, lanes: true}) // 20 a second: 15 s of backfill
		testwait.Until(t, "the backfill to start", 30*time.Second, func() bool { return f.fake.Stats().Applied >= 10 })
		f.publishLane(queue.LaneLive, 10_000, `{"name":"live"}`)
		testwait.Until(t, "the live update to be applied", 30*time.Second, func() bool {
			c, ok := f.fake.Conversation(id(10_000))
			return ok && c.Attributes["name"] == "live"
		})
		if left := backfill - f.fake.Stats().Applied; left < backfill/2 {
			t.Errorf("the live update was applied with only %d of %d backfill updates left; want it to pass the backlog", left, backfill)
		}
		f.waitDrained(60 * time.Second)
	})
	for _, bare := range []bool{false, true} {
		name := "a live update never overtakes an older pending backfill update of its conversation"
		if bare {
			name += ", published on the bare subject"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, options{noStart: true})
			const convs = 50
			for i := range 200 {
				f.publishAs(bare, queue.LaneBackfill, 1000+i, `{"name":"filler"}`)
			}
			for i := range convs {
				f.publishAs(bare, queue.LaneBackfill, i, `{"name":"backfill"}`)
			}
			for i := range convs {
				f.publishLane(queue.LaneLive, i, `{"name":"live"}`)
			}
			f.start(options{cfg: worker.Config{Concurrency: 4}, rate: 3000, lanes: true})
			f.waitDrained(60 * time.Second)
			if n := f.notEndedAt(convs, "live"); n != 0 {
				t.Errorf("%d of %d conversations ended at their older backfill update; want the live one last", n, convs)
			}
			if got, want := f.fake.Stats().Applied, 200+2*convs; got != want {
				t.Errorf("the fake applied %d updates; want %d, each once", got, want)
			}
			if n := len(f.deadLetters()); n != 0 {
				t.Errorf("%d dead letters; want none", n)
			}
		})
	}
	t.Run("a backfill update never overtakes an older live update of its conversation still pending", func(t *testing.T) {
		t.Parallel()
		for _, bare := range []bool{false, true} {
			f := setup(t, options{noStart: true})
			const convs = 20
			for i := range convs {
				f.publishAs(bare, queue.LaneLive, i, `{"name":"live"}`)
			}
			for i := range convs {
				f.publishLane(queue.LaneBackfill, i, `{"name":"backfill"}`)
			}
			open := make(chan struct{})
			f.start(options{cfg: worker.Config{Concurrency: 4}, lanes: true,
				live: func(c worker.Consumer) worker.Consumer { return heldBack{Consumer: c, open: open} }})
			testwait.Until(t, "every backfill update to be applied", 30*time.Second, func() bool {
				return f.notEndedAt(convs, "backfill") == 0
			})
			close(open) // the live lane's consumer delivers what it still has
			f.waitDrained(60 * time.Second)
			if n := f.notEndedAt(convs, "backfill"); n != 0 {
				t.Errorf("live updates on the bare subject %v: %d of %d conversations ended at their older live update; want the backfill one last", bare, n, convs)
			}
			if got := f.fake.Stats().Applied; got != 2*convs {
				t.Errorf("live updates on the bare subject %v: the fake applied %d updates; want %d, each once", bare, got, 2*convs)
			}
			f.stop()
		}
	})
}
