package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// fixture is one embedded NATS server, the fake Kustomer server and a pool between them.
type fixture struct {
	t      testing.TB
	srv    *queuetest.Server
	js     jetstream.JetStream
	top    queue.Topology
	fake   *kustomertest.Server
	client *kustomer.Client
	pool   *worker.Pool
	cancel context.CancelFunc
	done   chan error
}

type options struct {
	fake       kustomertest.Config
	cfg        worker.Config
	rate       int
	wrap       func(u updaterFunc) updaterFunc
	noStart    bool
	logLevel   slog.Level
	ackWait    time.Duration                               // the consumer's AckWait; default 5s
	maxDeliver int                                         // the consumers' MaxDeliver; default the topology's
	consumer   func(jetstream.Consumer) jetstream.Consumer // wraps the bound consumer
	heal       bool                                        // re-create a missing consumer, as the command does
	recover    bool                                        // read what a dead process left unacknowledged, as the command does
	lanes      bool                                        // pull from both lanes with the order check, as the command does
	live       func(worker.Consumer) worker.Consumer       // wraps the live lane's consumer (with lanes)
	before     func(*worker.Pool)                          // last changes to the pool before it runs
	logs       io.Writer                                   // when set, the pool's log at debug level goes here too
}

type updaterFunc func(ctx context.Context, u kustomer.Update) (*kustomer.Result, error)

func (f updaterFunc) UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
	return f(ctx, u)
}

func setup(t *testing.T, o options) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: queuetest.StartServer(t)}
	_, f.js = queuetest.Connect(t, f.srv.URL())
	ackWait := o.ackWait
	if ackWait == 0 {
		ackWait = 5 * time.Second
	}
	f.top = queue.Topology{AckWait: ackWait, MaxAckPending: 64, DedupWindow: time.Minute, MaxDeliver: o.maxDeliver}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, f.js, f.top); err != nil {
		t.Fatal(err)
	}
	if o.fake.Budget == 0 {
		o.fake.Budget = -1 // tests about the budget set their own
	}
	f.fake = kustomertest.NewServer(t, o.fake)
	client, err := kustomer.New(kustomer.Options{BaseURL: f.fake.URL, Key: kustomer.StaticKey("test-key"), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.client = client
	t.Cleanup(client.CloseIdleConnections)
	if !o.noStart {
		f.start(o)
	}
	return f
}

// start runs a pool until the test ends or stop is called.
func (f *fixture) start(o options) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, attempts, err := queue.Bind(ctx, f.js, f.top)
	if err != nil {
		f.t.Fatal(err)
	}
	if o.consumer != nil {
		cons = o.consumer(cons)
	}
	var up updaterFunc = f.client.UpdateConversation
	if o.wrap != nil {
		up = o.wrap(up)
	}
	cfg := o.cfg
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial, cfg.RetryMax = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.MaxAckPending = f.top.MaxAckPending
	if cfg.FetchWait == 0 {
		cfg.FetchWait = time.Second
	}
	rate := o.rate
	if rate == 0 {
		rate = -1 // no pacing of our own unless a test asks for it
	}
	level := o.logLevel
	if level == 0 && os.Getenv("WORKER_TEST_LOG") == "" {
		level = slog.LevelError + 1
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if o.logs != nil {
		handler = slog.NewMultiHandler(handler, slog.NewTextHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f.pool = &worker.Pool{
		Consumer:    cons,
		Client:      up,
		Reader:      f.client, // the breaker probes with reads, as with the command's client
		DeadLetters: &queue.DeadLetterPublisher{JS: f.js, Subject: f.top.DLQSubject},
		Attempts:    attempts,
		Pacer:       pacer.New(rate),
		Log:         slog.New(handler),
		Config:      cfg,
	}
	if o.lanes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lanes, _, err := queue.BindLanes(ctx, f.js, f.top)
		if err != nil {
			f.t.Fatal(err)
		}
		order, err := queue.NewOrderCheck(ctx, f.js, f.top)
		if err != nil {
			f.t.Fatal(err)
		}
		f.pool.Consumer, f.pool.Backfill, f.pool.Order = lanes.Live, lanes.Backfill, order
		if o.live != nil {
			f.pool.Consumer = o.live(lanes.Live)
		}
	}
	if o.recover {
		f.pool.Outstanding = &queue.Outstanding{JS: f.js, Topology: f.top}
	}
	if o.heal {
		top := f.top
		f.pool.Heal = func(ctx context.Context) error { return queue.Ensure(ctx, f.js, top) }
	}
	if o.before != nil {
		o.before(f.pool)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	f.cancel = rcancel
	f.done = make(chan error, 1)
	pool := f.pool
	go func() { f.done <- pool.Run(rctx) }()
	f.t.Cleanup(f.stop)
	testwait.Until(f.t, "pool running", 10*time.Second, func() bool { return !errors.Is(pool.Ready(), worker.ErrNotRunning) })
}

// stop shuts the pool down gracefully and waits for Run to return.
func (f *fixture) stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil
	if err := testwait.Recv(f.t, "Run to return after shutdown", 60*time.Second, f.done); err != nil {
		f.t.Errorf("Run: %v", err)
	}
}

func id(n int) string { return fmt.Sprintf("%024x", n+1) }

// publish sends one update message and waits for the stream to store it.
func (f *fixture) publish(msg string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.js.Publish(ctx, f.top.Subject, []byte(msg)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) publishUpdate(conv int, body string) {
	f.t.Helper()
	f.publish(fmt.Sprintf(`{"id":%q,"body":%s}`, id(conv), body))
}

// waitDrained waits until the work stream is empty (everything acked) and the fake has had
// no request for a moment.
func (f *fixture) waitDrained(timeout time.Duration) {
	f.t.Helper()
	testwait.Until(f.t, "work stream to empty", timeout, func() bool { return queuetest.StreamMsgs(f.t, f.js, f.top.Stream) == 0 })
}

type deadLetter struct {
	seq    uint64
	data   string
	header nats.Header
}

func (f *fixture) deadLetters() []deadLetter {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := f.js.Stream(ctx, f.top.DLQStream)
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []deadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			f.t.Fatal(err)
		}
		out = append(out, deadLetter{seq: seq, data: string(m.Data), header: m.Header})
	}
	return out
}

func applied(reqs []kustomertest.Request) int {
	n := 0
	for _, r := range reqs {
		if r.Status == 200 {
			n++
		}
	}
	return n
}

func TestPool(t *testing.T) {
	t.Run("applies a thousand updates and leaves nothing behind", func(t *testing.T) {
		f := setup(t, options{cfg: worker.Config{Concurrency: 16}})
		for i := range 1000 {
			f.publishUpdate(i, fmt.Sprintf(`{"name":"n-%d","tags":["t%d"]}`, i, i))
		}
		f.waitDrained(60 * time.Second)
		for i := range 1000 {
			c, ok := f.fake.Conversation(id(i))
			if !ok || c.Attributes["name"] != fmt.Sprintf("n-%d", i) {
				t.Fatalf("conversation %d: %+v, %v", i, c, ok)
			}
		}
		st := f.fake.Stats()
		if st.Applied != 1000 || st.Requests != 1000 {
			t.Errorf("fake saw %d requests, %d applied; want 1000 and 1000", st.Requests, st.Applied)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("applies each conversation's updates in stream order while earlier ones are retried", func(t *testing.T) {
		// Every conversation's first update fails at once: the breaker would call that an
		// outage; this test is about order under retries.
		noBreaker := worker.Config{Concurrency: 8, OutageThreshold: -1}
		f := setup(t, options{cfg: noBreaker, noStart: true})
		const convs, per = 20, 5
		for c := range convs {
			// The first two tries of each conversation's first update fail, the first of its third.
			f.fake.Script(id(c), kustomertest.Status(503), kustomertest.Drop())
		}
		for k := range per {
			for c := range convs {
				f.publishUpdate(c, fmt.Sprintf(`{"name":"v%d"}`, k))
			}
		}
		f.start(options{cfg: noBreaker})
		f.waitDrained(60 * time.Second)
		for c := range convs {
			conv, _ := f.fake.Conversation(id(c))
			if conv.Attributes["name"] != fmt.Sprintf("v%d", per-1) {
				t.Errorf("conversation %d ends as %v; want v%d", c, conv.Attributes["name"], per-1)
			}
			var order []string
			for _, r := range f.fake.RequestsFor(id(c)) {
				if r.Status == 200 {
					var b struct{ Name string }
					_ = json.Unmarshal(r.Body, &b)
					order = append(order, b.Name)
				}
			}
			for k, name := range order {
				if name != fmt.Sprintf("v%d", k) {
					t.Fatalf("conversation %d applied in order %v", c, order)
				}
			}
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("dead-letters invalid messages without a request and rejections with Kustomer's reason", func(t *testing.T) {
		f := setup(t, options{})
		f.fake.Reject(id(1), 400)
		f.fake.Reject(id(2), 404)
		f.publish(`{"id":"../customers/x","body":{"status":"done"}}`)
		f.publish(`{"id":"` + id(3) + `","body":{"stauts":"done"}}`)
		f.publish(`not json`)
		f.publishUpdate(1, `{"status":"done"}`)
		f.publishUpdate(2, `{"status":"done"}`)
		f.publishUpdate(4, `{"status":"done"}`)
		f.waitDrained(30 * time.Second)
		dls := f.deadLetters()
		if len(dls) != 5 {
			t.Fatalf("%d dead letters; want 5: %+v", len(dls), dls)
		}
		// Messages of different conversations are handled concurrently: match dead letters
		// to what was published by their original sequence, not by their order.
		bySeq := map[string]deadLetter{}
		for _, dl := range dls {
			bySeq[dl.header.Get(queue.HeaderOriginalSequence)] = dl
		}
		want := map[string]struct{ class, status, reason, attempts string }{
			"1": {"invalid", "", "id: ", "0"},
			"2": {"invalid", "", "body.stauts: unknown field", "0"},
			"3": {"invalid", "", "message", "0"},
			"4": {"rejected", "400", "HTTP 400", "1"},
			"5": {"rejected", "404", "HTTP 404", "1"},
		}
		for seq, w := range want {
			dl, ok := bySeq[seq]
			if !ok {
				t.Errorf("no dead letter for message %s", seq)
				continue
			}
			h := dl.header
			if h.Get(queue.HeaderClass) != w.class || h.Get(queue.HeaderStatus) != w.status || !strings.Contains(h.Get(queue.HeaderReason), w.reason) {
				t.Errorf("dead letter of message %s: class %q status %q reason %q; want %q %q containing %q",
					seq, h.Get(queue.HeaderClass), h.Get(queue.HeaderStatus), h.Get(queue.HeaderReason), w.class, w.status, w.reason)
			}
			if h.Get(queue.HeaderAttempts) != w.attempts {
				t.Errorf("dead letter of message %s: %s attempts; want %s", seq, h.Get(queue.HeaderAttempts), w.attempts)
			}
			if h.Get(queue.HeaderFailedAt) == "" || h.Get(queue.HeaderOriginalSubject) != f.top.Subject {
				t.Errorf("dead letter of message %s lacks its origin headers: %v", seq, h)
			}
		}
		if got := bySeq["3"].data; got != "not json" {
			t.Errorf("dead letter keeps %q; want the original bytes", got)
		}
		if got := len(f.fake.RequestsFor(id(3))); got != 0 {
			t.Errorf("%d requests for an invalid message; want none", got)
		}
		if st := f.fake.Stats(); st.Requests != 3 || st.Unmatched != 0 {
			t.Errorf("fake saw %d requests (%d unmatched); want 3 and 0", st.Requests, st.Unmatched)
		}
	})

	t.Run("rides out storms of 5xx and dropped connections", func(t *testing.T) {
		// Sixty failures in a row: the breaker (TestOutageBreaker) would pause for them; this
		// test is about retries riding them out.
		noBreaker := worker.Config{Concurrency: 8, MaxAttempts: 10, OutageThreshold: -1}
		f := setup(t, options{cfg: noBreaker, noStart: true})
		var storm []kustomertest.Answer
		for i := range 60 {
			if i%3 == 0 {
				storm = append(storm, kustomertest.Drop())
			} else {
				storm = append(storm, kustomertest.Status(500+i%4))
			}
		}
		f.fake.ScriptAny(storm...)
		for i := range 40 {
			f.publishUpdate(i, `{"status":"open"}`)
		}
		f.start(options{cfg: noBreaker})
		f.waitDrained(60 * time.Second)
		if got := applied(f.fake.Requests()); got != 40 {
			t.Errorf("%d applied; want 40", got)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("dead-letters as exhausted when attempts run out", func(t *testing.T) {
		f := setup(t, options{cfg: worker.Config{MaxAttempts: 3}})
		f.fake.Reject(id(7), 503)
		f.publishUpdate(7, `{"status":"open"}`)
		f.publishUpdate(8, `{"status":"open"}`)
		f.waitDrained(30 * time.Second)
		dls := f.deadLetters()
		if len(dls) != 1 {
			t.Fatalf("%d dead letters; want 1", len(dls))
		}
		h := dls[0].header
		if h.Get(queue.HeaderClass) != "exhausted" || h.Get(queue.HeaderAttempts) != "3" || h.Get(queue.HeaderStatus) != "503" {
			t.Errorf("dead letter headers %v; want exhausted after 3 attempts with status 503", h)
		}
		if got := len(f.fake.RequestsFor(id(7))); got != 3 {
			t.Errorf("%d requests for the failing conversation; want 3", got)
		}
	})

	t.Run("pauses the whole pool on an org-wide 429 and resumes after the reset", func(t *testing.T) {
		f := setup(t, options{fake: kustomertest.Config{Budget: 30, Window: 2 * time.Second}, noStart: true})
		// Another client spends the whole budget first.
		for i := range 30 {
			if _, err := f.client.UpdateConversation(context.Background(), kustomer.Update{ID: id(1000 + i), Body: json.RawMessage(`{"status":"open"}`)}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 50 {
			f.publishUpdate(i, `{"status":"done"}`)
		}
		start := time.Now()
		f.start(options{cfg: worker.Config{Concurrency: 16}, rate: 6000})
		f.waitDrained(60 * time.Second)
		if got := applied(f.fake.Requests()) - 30; got != 50 {
			t.Errorf("%d applied; want 50", got)
		}
		n429 := f.fake.Stats().ByStatus[429]
		// 50 updates at 30 per 2s window take three windows. At the end of each the pool
		// probes, one request per 200ms, through the second the rounded reset leaves open:
		// at most 6 a window. A pool that did not pause would draw a 429 per goroutine (16)
		// per try.
		t.Logf("%d answers were 429", n429)
		if n429 == 0 || n429 > 18 {
			t.Errorf("%d answers were 429; want a few (1 to 18), not one per goroutine per try", n429)
		}
		if el := time.Since(start); el < time.Second {
			t.Errorf("finished in %s: it cannot have waited for the reset", el)
		}
	})

	t.Run("backs off one conversation on its own limit without holding up others", func(t *testing.T) {
		f := setup(t, options{fake: kustomertest.Config{ConversationLimit: 2, ConversationWindow: time.Second}, noStart: true})
		for k := range 6 {
			f.publishUpdate(0, fmt.Sprintf(`{"name":"v%d"}`, k))
		}
		for i := 1; i <= 30; i++ {
			f.publishUpdate(i, `{"status":"done"}`)
		}
		f.start(options{cfg: worker.Config{Concurrency: 4}})
		f.waitDrained(60 * time.Second)
		conv, _ := f.fake.Conversation(id(0))
		if conv.Attributes["name"] != "v5" {
			t.Errorf("busy conversation ends as %v; want v5", conv.Attributes["name"])
		}
		var lastOther, lastBusy time.Time
		for _, r := range f.fake.Requests() {
			if r.Status != 200 {
				continue
			}
			if r.ID == id(0) {
				lastBusy = r.Time
			} else {
				lastOther = r.Time
			}
		}
		if !lastOther.Before(lastBusy) {
			t.Errorf("other conversations finished at %s, after the throttled one at %s", lastOther, lastBusy)
		}
	})

	t.Run("stops on a refused key without dead-lettering and resumes when it works", func(t *testing.T) {
		f := setup(t, options{noStart: true})
		f.fake.SetAPIKey("rotated-key")
		for i := range 20 {
			f.publishUpdate(i, `{"status":"done"}`)
		}
		f.start(options{cfg: worker.Config{Concurrency: 8}})
		testwait.Until(f.t, "the pool to report the refused key", 10*time.Second, func() bool {
			return errors.Is(f.pool.Ready(), worker.ErrAuthBlocked)
		})
		time.Sleep(1500 * time.Millisecond) // let it probe a while
		n401 := f.fake.Stats().ByStatus[401]
		if n401 > 12 {
			t.Errorf("%d requests answered 401 while blocked; want a probe at a time", n401)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Fatalf("%d dead letters for a key problem; want none", n)
		}
		f.fake.SetAPIKey("test-key")
		f.waitDrained(30 * time.Second)
		if err := f.pool.Ready(); err != nil {
			t.Errorf("Ready after the key works again: %v", err)
		}
		if got := applied(f.fake.Requests()); got != 20 {
			t.Errorf("%d applied; want 20", got)
		}
	})

	t.Run("recovers from a panic and retries the message", func(t *testing.T) {
		var panicked atomic.Bool
		f := setup(t, options{wrap: func(next updaterFunc) updaterFunc {
			return func(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
				if u.ID == id(5) && panicked.CompareAndSwap(false, true) {
					panic("boom")
				}
				return next(ctx, u)
			}
		}})
		f.publishUpdate(5, `{"status":"done"}`)
		f.publishUpdate(6, `{"status":"done"}`)
		f.waitDrained(30 * time.Second)
		if !panicked.Load() {
			t.Fatal("the update never reached the panicking client")
		}
		if got := applied(f.fake.RequestsFor(id(5))); got != 1 {
			t.Errorf("%d applied after the panic; want 1", got)
		}
	})

	t.Run("loses nothing across a broker restart", func(t *testing.T) {
		f := setup(t, options{fake: kustomertest.Config{Latency: 5 * time.Millisecond}, cfg: worker.Config{Concurrency: 8}, rate: 3000})
		for i := range 300 {
			f.publishUpdate(i, fmt.Sprintf(`{"name":"n-%d"}`, i))
		}
		testwait.Until(f.t, "some progress", 30*time.Second, func() bool { return f.fake.Stats().Applied > 50 })
		f.srv.Restart(t)
		f.waitDrained(90 * time.Second)
		missing := 0
		for i := range 300 {
			if c, ok := f.fake.Conversation(id(i)); !ok || c.Attributes["name"] != fmt.Sprintf("n-%d", i) {
				missing++
			}
		}
		if missing != 0 {
			t.Errorf("%d of 300 updates never applied", missing)
		}
		if n := len(f.deadLetters()); n != 0 {
			t.Errorf("%d dead letters; want none", n)
		}
	})

	t.Run("hands unfinished messages back on shutdown for the next pool", func(t *testing.T) {
		// AckWait is long, so the next pool finishing in time proves the messages were handed
		// back at shutdown rather than redelivered when AckWait ran out.
		f := setup(t, options{fake: kustomertest.Config{Latency: 20 * time.Millisecond}, cfg: worker.Config{Concurrency: 4}, rate: 1200, ackWait: 3 * time.Minute})
		for i := range 200 {
			f.publishUpdate(i, fmt.Sprintf(`{"name":"n-%d"}`, i))
		}
		testwait.Until(f.t, "some progress", 30*time.Second, func() bool { return f.fake.Stats().Applied > 20 })
		f.stop()
		if got := f.fake.Stats().Applied; got >= 200 {
			t.Fatalf("all %d applied before shutdown; the test needs a backlog", got)
		}
		f.start(options{cfg: worker.Config{Concurrency: 4}})
		f.waitDrained(60 * time.Second) // well under AckWait
		for i := range 200 {
			if c, ok := f.fake.Conversation(id(i)); !ok || c.Attributes["name"] != fmt.Sprintf("n-%d", i) {
				t.Fatalf("update %d lost across shutdown", i)
			}
		}
	})
}
