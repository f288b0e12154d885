package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderPinID is the header the server puts on every message of a pinned consumer: the pin id
// of the pull request it answers.
const HeaderPinID = "Nats-Pin-Id"

// Pinned pulls from a consumer with a pinned-client priority group (Topology.ConsumerConfig):
// of all the replicas that pull in the group, the server hands messages to one, the active,
// and keeps the others waiting as standbys. Pinned implements worker.Consumer and says which
// of the two this replica is.
//
// What it promises, and what it cannot:
//   - Active turns true when a message arrives with a pin id (the server pinned this replica),
//     and false when the server refuses any pull request's pin id (ErrPinIDMismatch: nats.go
//     then forgets the pin it carries, even a newer one; see refused), when no pull carrying
//     the pin was sent for a whole PinnedTTL (so the server may have given the pin away), when
//     Run finds the server pinning another replica or none, or when Unpin released it. The
//     Lost channel closes at that moment.
//   - The server keeps the pin only while pull requests carrying it arrive, at least one per
//     PinnedTTL. Fetch and Run send them; an active replica that stops fetching (paused, all
//     slots full) keeps its pin only while Run runs.
//   - The pin is not replicated in a cluster: when the consumer's leader changes, the new
//     leader may pin another replica before this one hears of it (it hears at its next pull,
//     or when a message is waiting). Two replicas may then hold messages of the same consumer
//     at once; per-conversation order across that window rests on the pool, not on the pin
//     (worker.Role: Lost and Gained are what the pool follows).
//   - On a consumer without a priority policy (created elsewhere, --no-manage-streams, not yet
//     converted) every replica is active and messages are shared as before; Pinned switches to
//     pinned mode as soon as a message carries a pin id, and back when one carries none.
//
// Pinned is a jetstream.Consumer too: FetchBytes, Next, Consume and Messages pull in the
// group (only Fetch and Next follow the pin), FetchNoWait is refused. Fetch may be called from
// one goroutine at a time; the other methods from any.
type Pinned struct {
	jetstream.Consumer // the consumer wrapped; its pull methods are overridden below
	cons               jetstream.Consumer
	stream             jetstream.Stream // for UnpinConsumer
	consumer           string
	group              string
	ttl                time.Duration
	now                func() time.Time
	// keep, when set, says whether Run may renew the pin held now; a pin not renewed passes
	// to another replica after PinnedTTL. Set by NewFollower before Run starts.
	keep func(ctx context.Context) bool

	mu       sync.Mutex
	pinned   bool          // the consumer has a pinned priority policy (or a message said so). Guarded by mu.
	pin      string        // the pin id this replica holds; "" as a standby. Guarded by mu.
	since    time.Time     // when pin (or standby) began. Guarded by mu.
	renewed  time.Time     // when the last pull request carrying pin was sent. Guarded by mu.
	lost     chan struct{} // closed while pin == "". Guarded by mu.
	gained   chan struct{} // closed while pin != "". Guarded by mu.
	expiry   *time.Timer   // fires a PinnedTTL after renewed. Guarded by mu.
	changes  uint64        // role changes so far. Guarded by mu.
	lastLoss string        // why the last pin was lost. Guarded by mu.
}

// NewPinned wraps cons, a consumer of t (either lane's, as BindLanes returns them), on stream.
func NewPinned(cons jetstream.Consumer, stream jetstream.Stream, t Topology) *Pinned {
	t = t.WithDefaults()
	p := &Pinned{
		Consumer: cons, cons: cons, stream: stream, consumer: t.Consumer, group: t.PriorityGroup, ttl: t.PinnedTTL, now: time.Now,
		lost: make(chan struct{}), gained: make(chan struct{}),
	}
	if info := cons.CachedInfo(); info != nil {
		if info.Name != "" {
			p.consumer = info.Name
		}
		p.pinned = info.Config.PriorityPolicy == jetstream.PriorityPolicyPinned
		if p.pinned && info.Config.PinnedTTL > 0 {
			p.ttl = info.Config.PinnedTTL // the server's, which may differ from ours during an upgrade
		}
	}
	p.since = p.now()
	if p.pinned {
		close(p.lost)
	} else {
		close(p.gained)
	}
	return p
}

// Fetch pulls up to batch messages in the priority group. Every message that arrives carries
// the pin id; the first of a new pin makes this replica active. The batch's Error is
// jetstream.ErrPinIDMismatch when the server refused this replica's pin: it is a standby now.
func (p *Pinned) Fetch(batch int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	sent := p.sending()
	inner, err := p.cons.Fetch(batch, append(opts, jetstream.FetchPriorityGroup(p.group))...)
	if err != nil {
		return nil, err
	}
	out := &pinnedBatch{msgs: make(chan jetstream.Msg, batch)}
	go func() { // owned by the batch: ends when the inner batch ends, which always happens
		for m := range inner.Messages() {
			p.received(m, sent)
			out.msgs <- m
		}
		out.err = inner.Error()
		if errors.Is(out.err, jetstream.ErrPinIDMismatch) {
			p.refused(sent.pin)
		}
		close(out.msgs)
	}()
	return out, nil
}

// FetchBytes pulls in the group up to maxBytes of messages; it does not follow the pin.
func (p *Pinned) FetchBytes(maxBytes int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	return p.cons.FetchBytes(maxBytes, append(opts, jetstream.FetchPriorityGroup(p.group))...)
}

// ErrNoWaitInGroup is FetchNoWait's answer: nats.go has no way to send it in a priority group.
var ErrNoWaitInGroup = fmt.Errorf("%w: FetchNoWait cannot pull in a priority group; use Fetch with FetchMaxWait", jetstream.ErrInvalidOption)

// FetchNoWait is refused with ErrNoWaitInGroup.
func (p *Pinned) FetchNoWait(int) (jetstream.MessageBatch, error) { return nil, ErrNoWaitInGroup }

// Next pulls one message in the group, following the pin as Fetch does.
func (p *Pinned) Next(opts ...jetstream.FetchOpt) (jetstream.Msg, error) {
	return next(p.Fetch, opts)
}

// next pulls one message with fetch; nats.ErrTimeout when none came.
func next(fetch func(int, ...jetstream.FetchOpt) (jetstream.MessageBatch, error), opts []jetstream.FetchOpt) (jetstream.Msg, error) {
	b, err := fetch(1, opts...)
	if err != nil {
		return nil, err
	}
	if m, ok := <-b.Messages(); ok {
		return m, nil
	}
	if err := b.Error(); err != nil {
		return nil, err
	}
	return nil, nats.ErrTimeout
}

// Consume consumes in the group; it does not follow the pin.
func (p *Pinned) Consume(h jetstream.MessageHandler, opts ...jetstream.PullConsumeOpt) (jetstream.ConsumeContext, error) {
	return p.cons.Consume(h, append(opts, jetstream.PullPriorityGroup(p.group))...)
}

// Messages iterates in the group; it does not follow the pin.
func (p *Pinned) Messages(opts ...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) {
	return p.cons.Messages(append(opts, jetstream.PullPriorityGroup(p.group))...)
}

// CachedInfo is the consumer's configuration and state as last read.
func (p *Pinned) CachedInfo() *jetstream.ConsumerInfo { return p.cons.CachedInfo() }

// Info reads the consumer's configuration and state afresh.
func (p *Pinned) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) { return p.cons.Info(ctx) }

// PinRole is this replica's role at one moment.
type PinRole struct {
	Active bool      // the server hands this replica the messages
	Pinned bool      // the consumer has a pinned priority group; false: messages are shared by every replica
	PinID  string    // the pin id held; "" as a standby or when not pinned
	Since  time.Time // when this role began
	Lost   string    // why the last pin was lost; "" if never
}

// Role says what this replica is now.
func (p *Pinned) Role() PinRole {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PinRole{Active: p.pin != "" || !p.pinned, Pinned: p.pinned, PinID: p.pin, Since: p.since, Lost: p.lastLoss}
}

// Active reports whether the server hands this replica the messages now (always true on a
// consumer without a pinned priority group).
func (p *Pinned) Active() bool { return p.Role().Active }

// Lost returns a channel that is closed once this replica is not active: closed already if it
// is a standby now, else closed when the pin it holds now is lost. Take it again after each
// Gained.
func (p *Pinned) Lost() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lost
}

// Gained returns a channel that is closed once this replica is active: closed already if it
// is active now, else closed when the server pins it.
func (p *Pinned) Gained() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gained
}

// Changes counts the role changes so far; a reader that saw n changes can tell it missed one.
func (p *Pinned) Changes() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changes
}

// renewEvery is how often Run renews the pin: four times per PinnedTTL, so that one lost or
// slow pull request costs nothing.
func (p *Pinned) renewEvery() time.Duration { return max(p.ttl/4, 50*time.Millisecond) }

// Run keeps the pin while this replica holds it, by sending a pull request that renews the
// pin and can never take a message (its byte limit is below any message's size). It returns
// when ctx ends, so run it for as long as the pin should be kept: through the pool's drain,
// then call Unpin.
func (p *Pinned) Run(ctx context.Context) error {
	t := time.NewTicker(p.renewEvery())
	defer t.Stop()
	var checked time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if p.Role().PinID == "" || (p.keep != nil && !p.keep(ctx)) {
			continue
		}
		if err := p.renew(ctx); err != nil && ctx.Err() == nil {
			// The next tick tries again; the expiry timer turns this into a loss if it lasts.
			continue
		}
		if time.Since(checked) >= p.ttl/2 {
			checked = time.Now()
			p.check(ctx)
		}
	}
}

// check reads the server's pin and loses the pin held if the server's is another (or none):
// the pin was received before the read, and the server never gives a pin id back, so it is
// gone. Pull requests cannot tell this replica in every case: nats.go and Pinned learn of a
// pin and of a refusal in goroutines of their own, and when Pinned hears of a refusal before
// a message whose pin nats.go stored before the refusal cleared it, Pinned holds a pin that
// no pull request carries; the server drops it after PinnedTTL, and check notices.
func (p *Pinned) check(ctx context.Context) {
	pin := p.Role().PinID
	if pin == "" {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	info, err := p.cons.Info(cctx)
	if err != nil {
		return // the next check tries again
	}
	for _, g := range info.PriorityGroups {
		if g.Group == p.group && g.PinnedClientID != pin {
			p.lose(pin, "the server pins another replica, or none")
		}
	}
}

// renew sends one pull request carrying the pin that takes no message, and waits for its end.
func (p *Pinned) renew(ctx context.Context) error {
	sent := p.sending()
	if sent.pin == "" {
		return nil
	}
	wait := min(p.renewEvery(), time.Second)
	fctx, cancel := context.WithTimeout(ctx, wait+time.Second)
	defer cancel()
	b, err := p.cons.Fetch(1, jetstream.FetchPriorityGroup(p.group), jetstream.FetchMaxBytes(1), jetstream.FetchContext(fctx))
	if err != nil {
		return err
	}
	for m := range b.Messages() {
		// Cannot happen (no message fits in one byte); never keep a message nobody works on.
		_ = m.Nak()
	}
	err = b.Error()
	if errors.Is(err, jetstream.ErrPinIDMismatch) {
		p.refused(sent.pin)
	}
	return err
}

// refused follows the server's refusal (ErrPinIDMismatch) of a pull request sent when this
// replica held pin sentPin. nats.go keeps one pin id per consumer, not one per request: it
// puts it on every pull request, sets it from every message's header and clears it on every
// refusal. So a refusal of a request that carried an older pin (one sent before the newer
// pin's message came, or while nats.go still carried the pin Pinned had lost) clears the
// newer pin too: from then on no pull request carries it, none is refused, and the pin held
// would look renewed for ever while the server lets it expire or, when a message put it back
// in nats.go meanwhile, keeps it for a replica that acts as a standby. Whatever pin is held
// is therefore lost on any refusal; one that is not the pin refused is released at the
// server too (if the server still pins it), so that the server, nats.go and Pinned agree
// again at once: no replica holds it and the next message pins a replica afresh.
func (p *Pinned) refused(sentPin string) {
	p.mu.Lock()
	held := p.pin
	if held == "" {
		p.mu.Unlock()
		return
	}
	stale := held != sentPin
	if stale {
		p.loseLocked("a pull request carrying an older pin was refused, which made the client forget the pin held")
	} else {
		p.loseLocked("the server refused the pin (another replica is active)")
	}
	p.mu.Unlock()
	if stale {
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		defer cancel()
		_ = p.release(ctx, held) // on failure the pin expires at the server after PinnedTTL
	}
}

// releaseTimeout bounds refused's release of a pin at the server.
const releaseTimeout = 2 * time.Second

// release unpins pin at the server if the server still pins it. The server's unpin names no
// pin id: the window between the check and the unpin is a few milliseconds, and an unpin
// that lands on a newer active costs it one pull, not its messages.
func (p *Pinned) release(ctx context.Context, pin string) error {
	info, err := p.cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("unpin: %w", err)
	}
	for _, g := range info.PriorityGroups {
		if g.Group == p.group && g.PinnedClientID == pin {
			if err := p.stream.UnpinConsumer(ctx, p.consumer, p.group); err != nil {
				return fmt.Errorf("unpin: %w", err)
			}
		}
	}
	return nil
}

// Unpin releases the pin this replica holds, so that a standby takes over at once instead of
// after PinnedTTL. Call it after the pool handed back everything it held. The server's unpin
// names no pin id, so Unpin first checks that the server's pin is still this replica's; the
// window between the check and the unpin is a few milliseconds, and an unpin that lands on a
// newer active costs it one pull, not its messages.
func (p *Pinned) Unpin(ctx context.Context) error {
	pin := p.Role().PinID
	if pin == "" {
		return nil
	}
	if err := p.release(ctx, pin); err != nil {
		return err
	}
	p.lose(pin, "released (Unpin)")
	return nil
}

// sent is what a pull request carried.
type sent struct {
	pin string
	at  time.Time
}

// sending notes that a pull request carrying the current pin is about to go out, which
// renews the pin at the server for another PinnedTTL from its arrival, so from now at the
// earliest.
func (p *Pinned) sending() sent {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := sent{pin: p.pin, at: p.now()}
	if p.pin != "" {
		p.renewed = s.at
		p.armLocked()
	}
	return s
}

// received looks at the pin id of a message delivered to a pull request sent at s.
func (p *Pinned) received(m jetstream.Msg, s sent) {
	id := m.Headers().Get(HeaderPinID)
	p.mu.Lock()
	defer p.mu.Unlock()
	if id == "" {
		if p.pinned {
			// The consumer lost its priority policy while this replica ran (a rollback):
			// every replica takes messages, so every one is active.
			p.pinned, p.pin, p.since = false, "", p.now()
			if p.expiry != nil {
				p.expiry.Stop()
			}
			select {
			case <-p.gained:
			default:
				p.lost = make(chan struct{})
				close(p.gained)
			}
			p.changes++
		}
		return
	}
	if !p.pinned {
		// The consumer was converted while this replica ran: from shared to pinned.
		p.pinned = true
		p.gained = make(chan struct{})
		close(p.lost)
	}
	if id == p.pin {
		return
	}
	if p.pin != "" {
		p.loseLocked("the server pinned this replica again under a new pin id")
	}
	// The server pinned the request sent at s.at: its timer started after that.
	p.pin, p.since, p.renewed = id, p.now(), s.at
	p.lost = make(chan struct{})
	close(p.gained)
	p.changes++
	p.armLocked()
}

// lose drops pin if it is still the one held.
func (p *Pinned) lose(pin, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pin != "" && p.pin == pin {
		p.loseLocked(why)
	}
}

func (p *Pinned) loseLocked(why string) {
	p.pin, p.since, p.lastLoss = "", p.now(), why
	p.gained = make(chan struct{})
	close(p.lost)
	p.changes++
	if p.expiry != nil {
		p.expiry.Stop()
	}
}

// armLocked (re)starts the expiry timer: a PinnedTTL after the last renewal sent, the server
// may have given the pin away.
func (p *Pinned) armLocked() {
	d := p.ttl - p.now().Sub(p.renewed)
	pin := p.pin
	if p.expiry != nil {
		p.expiry.Stop()
	}
	p.expiry = time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.pin == pin && p.now().Sub(p.renewed) >= p.ttl {
			p.loseLocked(fmt.Sprintf("no pull request carried the pin for %s (PinnedTTL)", p.ttl))
		}
	})
}

// pinnedBatch relays a batch, looking at each message's pin id on the way.
type pinnedBatch struct {
	msgs chan jetstream.Msg
	err  error // written before msgs is closed
}

func (b *pinnedBatch) Messages() <-chan jetstream.Msg { return b.msgs }
func (b *pinnedBatch) Error() error                   { return b.err }

var _ jetstream.Consumer = (*Pinned)(nil)
