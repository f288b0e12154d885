package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// pinTTL is short so that a takeover after a replica's death is quick in tests.
const pinTTL = 2 * time.Second

// replica is one worker process's side of a pinned consumer: its own connection, its own
// jetstream.Consumer and its Pinned, and a puller that keeps fetching as a pool does.
type replica struct {
	name string
	nc   *nats.Conn
	p    *queue.Pinned
	got  chan jetstream.Msg

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// startReplica connects a replica to url and pulls (acknowledging nothing) until stopped or
// the test ends; run says whether it also runs Pinned.Run.
func startReplica(t *testing.T, name, url string, top queue.Topology, run bool) *replica {
	t.Helper()
	nc, js := queuetest.Connect(t, url)
	ctx := context.Background()
	p, _, err := queue.BindPinned(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, nc: nc, p: p, got: make(chan jetstream.Msg, 1000)}
	rctx, cancel := context.WithCancel(ctx)
	r.stop = cancel
	r.wg.Go(func() {
		for rctx.Err() == nil {
			fctx, cancel := context.WithTimeout(rctx, 300*time.Millisecond)
			b, err := r.p.Fetch(10, jetstream.FetchContext(fctx))
			if err == nil {
				for m := range b.Messages() {
					r.got <- m
				}
			}
			cancel()
			if err != nil || (b.Error() != nil && !errors.Is(b.Error(), context.DeadlineExceeded)) {
				select { // a failed pull: try again shortly, as the pool does
				case <-rctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	})
	if run {
		r.wg.Go(func() { _ = r.p.Run(rctx) })
	}
	t.Cleanup(r.halt)
	return r
}

// halt stops pulling and renewing, as a process that froze or died does.
func (r *replica) halt() {
	r.stop()
	r.wg.Wait()
}

func pinnedSetup(t *testing.T) (string, jetstream.JetStream, queue.Topology) {
	t.Helper()
	srv := queuetest.StartServer(t)
	_, js := queuetest.Connect(t, srv.URL())
	top := queue.Topology{PinnedTTL: pinTTL}.WithDefaults()
	if err := queue.Ensure(context.Background(), js, top); err != nil {
		t.Fatal(err)
	}
	return srv.URL(), js, top
}

func publishN(t *testing.T, js jetstream.JetStream, top queue.Topology, prefix string, n int) {
	t.Helper()
	for i := range n {
		if _, err := js.Publish(context.Background(), top.Subject, fmt.Appendf(nil, `{"id":"%s-%d","body":{}}`, prefix, i)); err != nil {
			t.Fatal(err)
		}
	}
}

// activeOf waits until exactly one of the replicas received a message and is active, and
// returns it and the other.
func activeOf(t *testing.T, a, b *replica) (active, standby *replica) {
	t.Helper()
	var first jetstream.Msg
	select {
	case first = <-a.got:
		active, standby = a, b
	case first = <-b.got:
		active, standby = b, a
	case <-time.After(10 * time.Second):
		t.Fatal("no replica received a message within 10s")
	}
	if first.Headers().Get(queue.HeaderPinID) == "" {
		t.Fatalf("message without %s header", queue.HeaderPinID)
	}
	testwait.Until(t, active.name+" to be active", 5*time.Second, active.p.Active)
	return active, standby
}

func TestPinned(t *testing.T) {
	t.Parallel()

	t.Run("the server hands every message to one replica while the other waits as a standby", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startReplica(t, "a", url, top, true)
		b := startReplica(t, "b", url, top, true)
		publishN(t, js, top, "c", 50)
		active, standby := activeOf(t, a, b)
		testwait.Until(t, "the active replica to receive all 50", 10*time.Second, func() bool { return len(active.got) == 49 })
		if standby.p.Active() || len(standby.got) != 0 {
			t.Fatalf("standby %s: active %v, received %d messages", standby.name, standby.p.Active(), len(standby.got))
		}
		select {
		case <-standby.p.Lost():
		default:
			t.Error("a standby's Lost channel is not closed")
		}
		select {
		case <-active.p.Gained():
		default:
			t.Error("the active's Gained channel is not closed")
		}
	})

	t.Run("a standby takes over within about PinnedTTL when the active stops pulling", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startReplica(t, "a", url, top, true)
		b := startReplica(t, "b", url, top, true)
		publishN(t, js, top, "first", 1)
		active, standby := activeOf(t, a, b)
		lost := active.p.Lost()

		active.halt()
		killed := time.Now()
		testwait.Closed(t, "the halted replica to see its pin expire", pinTTL+time.Second, lost)
		publishN(t, js, top, "second", 1)
		testwait.Recv(t, "the standby to receive the next message", pinTTL+5*time.Second, standby.got)
		t.Logf("taken over %s after the active stopped (PinnedTTL %s)", time.Since(killed).Round(10*time.Millisecond), pinTTL)
		if !standby.p.Active() {
			t.Error("the new active does not say so")
		}
		if why := active.p.Role().Lost; !strings.Contains(why, "PinnedTTL") {
			t.Errorf("reason of the loss = %q, want one naming PinnedTTL", why)
		}
	})

	t.Run("Run keeps the pin of an active replica that pulls nothing", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startReplica(t, "a", url, top, true)
		publishN(t, js, top, "first", 1)
		testwait.Recv(t, "a to receive the first message", 5*time.Second, a.got)
		testwait.Until(t, "a to be active", 5*time.Second, a.p.Active)
		// a stops pulling but keeps renewing (a paused pool); b pulls all along.
		a.halt() // stops a's puller and its Run; Run starts again below, alone
		rctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { _ = a.p.Run(rctx) })
		defer func() { cancel(); wg.Wait() }()

		b := startReplica(t, "b", url, top, true)
		publishN(t, js, top, "held", 3)
		if testwait.Within(3*pinTTL, func() bool { return len(b.got) > 0 }) {
			t.Fatalf("the standby received a message while the active renewed its pin")
		}
		if !a.p.Active() {
			t.Fatalf("a lost its pin while renewing: %s", a.p.Role().Lost)
		}
		cancel() // a stops renewing: b takes over
		wg.Wait()
		testwait.Recv(t, "b to receive the held messages", pinTTL+5*time.Second, b.got)
	})

	t.Run("Unpin hands over at once and a replica that lost its pin gets no more messages", func(t *testing.T) {
		url, js, top := pinnedSetup(t)
		a := startReplica(t, "a", url, top, true)
		b := startReplica(t, "b", url, top, true)
		publishN(t, js, top, "first", 1)
		active, standby := activeOf(t, a, b)

		// An operator unpins behind the active's back (nats consumer unpin), as a new
		// consumer leader forgets the pin: the standby gets the next message, and the old
		// active's next pull is refused.
		s, _ := js.Stream(context.Background(), top.Stream)
		if err := s.UnpinConsumer(context.Background(), top.Consumer, top.PriorityGroup); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		publishN(t, js, top, "second", 1)
		testwait.Recv(t, "the standby to receive the next message", pinTTL, standby.got)
		// The old active gets nothing more: every later message goes to the new one. (It hears
		// of the loss when the server refuses one of its pulls, which happens only while a
		// message waits for it, or from its own clock; either may come late on a loaded
		// machine, so the test asserts what matters: no message reaches two replicas.)
		publishN(t, js, top, "after", 5)
		for range 5 {
			testwait.Recv(t, "the new active to receive the later messages", 5*pinTTL, standby.got)
		}
		if n := len(active.got); n != 0 {
			t.Errorf("the replica that lost its pin received %d later messages; want none", n)
		}
		t.Logf("handed over in %s", time.Since(start).Round(time.Millisecond))

		// Now the new active releases its pin properly: the other takes over at once.
		newActive, other := standby, active
		start = time.Now()
		if err := newActive.p.Unpin(context.Background()); err != nil {
			t.Fatal(err)
		}
		newActive.halt()
		if newActive.p.Active() {
			t.Error("still active after Unpin")
		}
		publishN(t, js, top, "third", 1)
		testwait.Recv(t, "the other replica to receive the next message", pinTTL/2, other.got)
		t.Logf("after Unpin, the other replica received the next message in %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("on a consumer without a priority policy every replica is active", func(t *testing.T) {
		srv := queuetest.StartServer(t)
		_, js := queuetest.Connect(t, srv.URL())
		top := queue.Topology{}.WithDefaults()
		createUnpinned(t, js, top)
		a := startReplica(t, "a", srv.URL(), top, true)
		b := startReplica(t, "b", srv.URL(), top, true)
		if !a.p.Active() || !b.p.Active() {
			t.Fatal("replicas of a shared consumer are not active")
		}
		publishN(t, js, top, "shared", 200)
		testwait.Until(t, "all 200 to arrive", time.Minute, func() bool { return len(a.got)+len(b.got) == 200 })
		if len(a.got) == 0 || len(b.got) == 0 {
			t.Errorf("a shared consumer gave a %d and b %d messages; want both some", len(a.got), len(b.got))
		}
	})
}

// createUnpinned creates the streams, and the consumer as versions before standby did:
// without a priority policy.
func createUnpinned(t *testing.T, js jetstream.JetStream, top queue.Topology) {
	t.Helper()
	createOld(t, js, top, 0)
}

// createOld is createUnpinned with another MaxWaiting, which no server updates in place, when
// maxWaiting is not 0.
func createOld(t *testing.T, js jetstream.JetStream, top queue.Topology, maxWaiting int) {
	t.Helper()
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, top.Stream, top.Consumer); err != nil {
		t.Fatal(err)
	}
	old := top.ConsumerConfig(queue.LaneLive)
	old.PriorityPolicy, old.PinnedTTL, old.PriorityGroups = jetstream.PriorityPolicyNone, 0, nil
	if maxWaiting != 0 {
		old.MaxWaiting = maxWaiting
	}
	if _, err := js.CreateConsumer(ctx, top.Stream, old); err != nil {
		t.Fatal(err)
	}
}

// TestEnsureConvertsAConsumerWithoutPriorityPolicy runs on the embedded server, and on every
// nats-server binary listed in KW_NATS_SERVERS (comma-separated paths, e.g. of 2.11 and 2.12
// built with `GOBIN=/tmp/ns211 go install github.com/nats-io/nats-server/v2@v2.11.17`).
func TestEnsureConvertsAConsumerWithoutPriorityPolicy(t *testing.T) {
	t.Parallel()
	type server struct {
		start    func(t *testing.T) string
		refusing bool // the old consumer differs in what no server updates: Ensure must recreate it
	}
	embedded := func(t *testing.T) string { return queuetest.StartServer(t).URL() }
	servers := map[string]server{
		"embedded":                          {start: embedded},
		"embedded, update in place refused": {start: embedded, refusing: true},
	}
	for _, bin := range strings.Split(os.Getenv("KW_NATS_SERVERS"), ",") {
		if bin = strings.TrimSpace(bin); bin != "" {
			servers[bin] = server{start: func(t *testing.T) string { return startBinary(t, bin) }}
		}
	}
	for name, srv := range servers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := srv.start(t)
			_, js := queuetest.Connect(t, url)
			ctx := context.Background()
			top := queue.Topology{PinnedTTL: pinTTL, AckWait: 2 * time.Second}.WithDefaults()
			createOld(t, js, top, map[bool]int{true: 100}[srv.refusing])
			publishN(t, js, top, "old", 10)
			// An old replica holds 4 messages unacknowledged and acknowledged 2.
			old, err := js.Consumer(ctx, top.Stream, top.Consumer)
			if err != nil {
				t.Fatal(err)
			}
			held := fetch(t, old, 6)
			for _, m := range held[:2] {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
			before := old.CachedInfo().Created

			if err := queue.Ensure(ctx, js, top); err != nil {
				t.Fatalf("Ensure on a consumer without priority policy: %v", err)
			}
			cons, err := js.Consumer(ctx, top.Stream, top.Consumer)
			if err != nil {
				t.Fatal(err)
			}
			cfg := cons.CachedInfo().Config
			if cfg.PriorityPolicy != jetstream.PriorityPolicyPinned || cfg.PinnedTTL != pinTTL || len(cfg.PriorityGroups) != 1 || cfg.PriorityGroups[0] != top.PriorityGroup {
				t.Fatalf("after Ensure: policy %v, ttl %s, groups %v", cfg.PriorityPolicy, cfg.PinnedTTL, cfg.PriorityGroups)
			}
			recreated := !cons.CachedInfo().Created.Equal(before)
			if recreated != srv.refusing {
				t.Errorf("recreated = %v, want %v", recreated, srv.refusing)
			}
			t.Logf("converted %s: recreated=%v", map[bool]string{true: "by delete and create", false: "in place"}[recreated], recreated)

			// Nothing is lost: the 8 unacknowledged come to a pinned replica (the 4 held ones
			// after AckWait when converted in place).
			s, _ := js.Stream(ctx, top.Stream)
			p := queue.NewPinned(cons, s, top)
			seen := map[string]bool{}
			testwait.Until(t, "the 8 unacknowledged messages to come again", 20*time.Second, func() bool {
				fctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				b, err := p.Fetch(10, jetstream.FetchContext(fctx))
				if err != nil {
					return false
				}
				for m := range b.Messages() {
					seen[string(m.Data())] = true
					_ = m.DoubleAck(ctx)
				}
				return len(seen) == 8
			})
			if !p.Active() {
				t.Fatal("the replica that received the messages is not active")
			}

			// A rolling upgrade: a replica of the old version pulls without a priority group.
			// The server refuses every such pull on a pinned consumer (400, "Priority Group
			// missing"): the old replica gets nothing while the new ones work.
			stop, oldGot, oldErrs := pullPlain(t, url, top)
			publishN(t, js, top, "upgrade", 20)
			testwait.Until(t, "the pinned replica to receive the 20", 10*time.Second, func() bool {
				fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				b, err := p.Fetch(20, jetstream.FetchContext(fctx))
				if err != nil {
					return false
				}
				for m := range b.Messages() {
					seen[string(m.Data())] = true
					_ = m.DoubleAck(ctx)
				}
				return len(seen) == 28
			})
			if n := len(oldGot); n != 0 {
				t.Fatalf("the old replica received %d messages while a new one held the pin", n)
			}
			if err := p.Unpin(ctx); err != nil {
				t.Fatal(err)
			}
			publishN(t, js, top, "after", 1)
			err = testwait.Recv(t, "the old replica's pull to fail", 5*time.Second, oldErrs)
			if !errors.Is(err, jetstream.ErrBadRequest) {
				t.Errorf("an old replica's pull failed with %v, want jetstream.ErrBadRequest", err)
			}
			stop()
			if n := len(oldGot); n != 0 {
				t.Fatalf("the old replica received %d messages from a pinned consumer", n)
			}

			// A rollback: the old version's Ensure updates the consumer back, in place.
			prev := top.ConsumerConfig(queue.LaneLive)
			prev.PriorityPolicy, prev.PinnedTTL, prev.PriorityGroups = jetstream.PriorityPolicyNone, 0, nil
			back, err := js.CreateOrUpdateConsumer(ctx, top.Stream, prev)
			if err != nil {
				t.Fatalf("rolling back to a consumer without priority policy: %v", err)
			}
			if back.CachedInfo().Config.PriorityPolicy != jetstream.PriorityPolicyNone {
				t.Errorf("after the rollback the policy is %v", back.CachedInfo().Config.PriorityPolicy)
			}
		})
	}
}

// pullPlain pulls as versions before standby did, without a priority group, acknowledging
// what it receives, until the returned stop is called.
func pullPlain(t *testing.T, url string, top queue.Topology) (stop func(), got <-chan jetstream.Msg, errs <-chan error) {
	t.Helper()
	_, js := queuetest.Connect(t, url)
	cons, err := js.Consumer(context.Background(), top.Stream, top.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan jetstream.Msg, 100)
	ech := make(chan error, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			b, err := cons.Fetch(10, jetstream.FetchMaxWait(300*time.Millisecond))
			if err != nil {
				continue
			}
			for m := range b.Messages() {
				_ = m.Ack()
				ch <- m
			}
			if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				select {
				case ech <- err:
				default:
				}
				select { // as the old pool backs off after a failed pull
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	})
	stop = func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop, ch, ech
}

// startBinary runs the nats-server binary bin on a free loopback port with JetStream in a
// temporary store, until the test ends, and returns its URL.
func startBinary(t *testing.T, bin string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(t.TempDir(), "js"))
	out, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		out.Close()
	})
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	testwait.Until(t, bin+" to accept connections", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	v := exec.Command(bin, "--version")
	if b, err := v.Output(); err == nil {
		t.Logf("%s", strings.TrimSpace(string(b)))
	}
	return url
}
