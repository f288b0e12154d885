package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublisherConfig tunes a Publisher. The zero value of every field means its default.
type PublisherConfig struct {
	// Window is how many publishes may wait for their acknowledgement at once. Default 4096.
	Window int
	// AckTimeout is how long one publish may wait for its acknowledgement before it is sent
	// again. Default 10s.
	AckTimeout time.Duration
	// MaxRetries is how many times a publish that failed or timed out is sent again before
	// the Publisher gives up. A message JetStream refuses (wrong stream, limits reached) is
	// not sent again. Default 5.
	MaxRetries int
	// Stream, when set, is the stream every message must land in: an acknowledgement from
	// another stream fails the Publisher (the message is stored there, though). It is checked
	// on the acknowledgement rather than sent as Nats-Expected-Stream, since that header
	// would stay on the message and refuse its dead letter. Default none.
	Stream string
}

// WithDefaults returns c with every zero field set to its default.
func (c PublisherConfig) WithDefaults() PublisherConfig {
	if c.Window == 0 {
		c.Window = 4096
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 5
	}
	return c
}

// PublishStats counts what a Publisher has done so far.
type PublishStats struct {
	Published  int64 // stored by JetStream
	Duplicates int64 // refused as duplicates of a Nats-Msg-Id seen within the dedup window
	Pending    int64 // sent or about to be resent, not yet acknowledged
	Retried    int64 // publishes sent again after a failure or a timeout
	Failed     int64 // given up on after MaxRetries
}

// Confirmed is how many publishes JetStream has acknowledged, as stored or as duplicates.
func (s PublishStats) Confirmed() int64 { return s.Published + s.Duplicates }

// Publisher publishes messages to JetStream asynchronously with a bounded window of
// outstanding acknowledgements, for bulk loads. Every message must carry a Nats-Msg-Id, so a
// publish sent again after a lost acknowledgement is stored once.
//
// A publish that fails (disconnect, timeout, no stream answering) is sent again, up to
// MaxRetries times, once every publish in flight has been answered, in the order the
// messages were first given. Messages are stored in the order given except around such a
// retry, when a retried message may land after later ones that were already in flight.
//
// Publish and Wait are for one goroutine at a time; Stats may be called from any.
type Publisher struct {
	js  jetstream.JetStream
	cfg PublisherConfig

	mu       sync.Mutex
	inflight map[*nats.Msg]pubState
	retries  []retry
	err      error // the first publish given up on; sticky
	next     uint64

	nRetries   atomic.Int64 // len(retries), readable without the lock
	published  atomic.Int64
	duplicates atomic.Int64
	retried    atomic.Int64
	failed     atomic.Int64
	pending    atomic.Int64

	changed chan struct{} // a publish was answered; capacity 1
}

// pubState is what the Publisher knows of one message in flight.
type pubState struct {
	order    uint64 // position in the order of Publish calls
	attempts int32  // failed sends so far
}

type retry struct {
	msg   *nats.Msg
	state pubState
	err   error
}

// NewPublisher returns a Publisher on its own JetStream context of nc. Close it when done.
func NewPublisher(nc *nats.Conn, cfg PublisherConfig) (*Publisher, error) {
	cfg = cfg.WithDefaults()
	if cfg.Window < 1 || cfg.MaxRetries < 0 || cfg.AckTimeout < 0 {
		return nil, fmt.Errorf("publisher: window %d, retries %d and ack timeout %s must not be negative", cfg.Window, cfg.MaxRetries, cfg.AckTimeout)
	}
	p := &Publisher{
		cfg:      cfg,
		inflight: make(map[*nats.Msg]pubState, cfg.Window),
		changed:  make(chan struct{}, 1),
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.Window),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
		jetstream.WithPublishAsyncAckHandler(p.onAck),
		jetstream.WithPublishAsyncErrHandler(p.onErr),
	)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	p.js = js
	return p, nil
}

// MsgID is the Nats-Msg-Id of a message: 32 hex characters of the SHA-256 of runID, position
// and data. The same message at the same position of the same input (a file enqueued twice)
// gets the same id, so JetStream stores it once within its dedup window; the same message at
// another position, or under another runID, is a new message.
func MsgID(runID string, position int64, data []byte) string {
	h := sha256.New()
	var buf [32]byte
	h.Write([]byte(runID))
	h.Write([]byte{'\n'})
	h.Write(strconv.AppendInt(buf[:0], position, 10))
	h.Write([]byte{'\n'})
	h.Write(data)
	sum := h.Sum(buf[:0])
	return hex.EncodeToString(sum[:16])
}

// Publish sends data to subject with the given Nats-Msg-Id. It returns once the message is
// sent, waiting while the window is full; its acknowledgement comes later (see Wait). The
// Publisher keeps data until then: the caller must not change it. Publish returns the error
// of an earlier publish the Publisher gave up on, and sends nothing after one.
func (p *Publisher) Publish(ctx context.Context, subject string, data []byte, msgID string) error {
	if msgID == "" {
		return errors.New("publish: empty Nats-Msg-Id")
	}
	h := nats.Header{jetstream.MsgIDHeader: []string{msgID}}
	return p.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
}

// PublishMsg is Publish for a message with headers of its own, which must include
// Nats-Msg-Id. The Publisher owns m from then on.
func (p *Publisher) PublishMsg(ctx context.Context, m *nats.Msg) error {
	if m.Header.Get(jetstream.MsgIDHeader) == "" {
		return errors.New("publish: message without Nats-Msg-Id")
	}
	if p.nRetries.Load() > 0 {
		if err := p.resend(ctx); err != nil {
			return err
		}
	}
	p.mu.Lock()
	err := p.err
	order := p.next
	p.next++
	p.mu.Unlock()
	if err != nil {
		return err
	}
	return p.send(ctx, m, pubState{order: order})
}

// send hands m to the JetStream client, waiting while the window is full.
func (p *Publisher) send(ctx context.Context, m *nats.Msg, st pubState) error {
	for {
		p.mu.Lock()
		p.inflight[m] = st
		p.pending.Add(1)
		p.mu.Unlock()
		_, err := p.js.PublishMsgAsync(m)
		if err == nil {
			return nil
		}
		p.mu.Lock()
		if _, ok := p.inflight[m]; ok {
			delete(p.inflight, m)
			p.pending.Add(-1)
		}
		p.mu.Unlock()
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return p.fail(fmt.Errorf("publish to %s: %w", m.Subject, err))
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
}

// fail records err as the reason the Publisher stopped, unless one is recorded already.
func (p *Publisher) fail(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
	return p.err
}

func (p *Publisher) onAck(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	// The counts change under the lock that removes m from inflight, so that Wait, which
	// returns once inflight is empty, never returns before the counts say so.
	p.mu.Lock()
	st, ok := p.inflight[m]
	if !ok {
		p.mu.Unlock()
		return
	}
	delete(p.inflight, m)
	p.pending.Add(-1)
	switch {
	case p.cfg.Stream != "" && ack.Stream != p.cfg.Stream:
		p.failed.Add(1)
		if p.err == nil {
			p.err = fmt.Errorf("publish to %s: stored in stream %s, not %s: subjects overlap", m.Subject, ack.Stream, p.cfg.Stream)
		}
	case ack.Duplicate && st.attempts == 0:
		p.duplicates.Add(1)
	default:
		// Stored; or a retried message refused as a duplicate, most likely stored by its own
		// first send, whose acknowledgement was lost: it counts as published.
		p.published.Add(1)
	}
	p.mu.Unlock()
	p.signal()
}

func (p *Publisher) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	p.mu.Lock()
	st, ok := p.inflight[m]
	delete(p.inflight, m)
	if ok {
		st.attempts++
		if int(st.attempts) > p.cfg.MaxRetries || permanent(err) {
			p.failed.Add(1)
			p.pending.Add(-1)
			if p.err == nil {
				p.err = fmt.Errorf("publish to %s: %w", m.Subject, err)
				if !permanent(err) {
					p.err = fmt.Errorf("publish to %s: gave up after %d attempts: %w", m.Subject, st.attempts, err)
				}
			}
		} else {
			p.retries = append(p.retries, retry{msg: m, state: st, err: err})
			p.nRetries.Store(int64(len(p.retries)))
		}
	}
	p.mu.Unlock()
	if ok {
		p.signal()
	}
}

// permanent reports errors that sending again cannot fix: JetStream refused the message
// (wrong expected stream, limits reached) rather than being unavailable.
func permanent(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code != 503
}

func (p *Publisher) signal() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// resend waits until every publish in flight is answered, then sends the failed ones again
// in their original order, after a backoff that grows with their attempts.
func (p *Publisher) resend(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, err := len(p.inflight), p.err
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if err := p.wait(ctx, time.Second); err != nil {
			return err
		}
	}
	p.mu.Lock()
	batch := p.retries
	p.retries = nil
	p.nRetries.Store(0)
	p.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	slices.SortFunc(batch, func(a, b retry) int { return compareUint(a.state.order, b.state.order) })
	attempts := int32(0)
	for _, r := range batch {
		attempts = max(attempts, r.state.attempts)
	}
	t := time.NewTimer(nthDelay(publishRetryInitial, publishRetryMax, int(attempts)))
	select {
	case <-ctx.Done():
		t.Stop()
		p.mu.Lock()
		p.retries = append(batch, p.retries...)
		p.nRetries.Store(int64(len(p.retries)))
		p.mu.Unlock()
		return context.Cause(ctx)
	case <-t.C:
	}
	for i, r := range batch {
		p.pending.Add(-1) // send counts it again
		p.retried.Add(1)
		if err := p.send(ctx, r.msg, r.state); err != nil {
			p.mu.Lock()
			p.retries = append(batch[i:], p.retries...)
			p.nRetries.Store(int64(len(p.retries)))
			p.mu.Unlock()
			p.pending.Add(1)
			return err
		}
	}
	return nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// wait blocks until a publish is answered, d passes, or ctx ends.
func (p *Publisher) wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-p.changed:
	case <-t.C:
	}
	return nil
}

// Wait returns once every message given to Publish was acknowledged by JetStream (stored or
// refused as a duplicate), sending failed ones again as needed. It returns an error if a
// message could not be published after MaxRetries, or when ctx ends first.
func (p *Publisher) Wait(ctx context.Context) error {
	for {
		if p.nRetries.Load() > 0 {
			if err := p.resend(ctx); err != nil {
				return err
			}
			continue
		}
		p.mu.Lock()
		n, err := len(p.inflight)+len(p.retries), p.err
		p.mu.Unlock()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := p.wait(ctx, time.Second); err != nil {
			return err
		}
	}
}

// Stats returns the counts so far.
func (p *Publisher) Stats() PublishStats {
	return PublishStats{
		Published:  p.published.Load(),
		Duplicates: p.duplicates.Load(),
		Pending:    p.pending.Load(),
		Retried:    p.retried.Load(),
		Failed:     p.failed.Load(),
	}
}

// Close stops the Publisher's acknowledgement handling. Publishes not yet acknowledged are
// abandoned: call Wait first.
func (p *Publisher) Close() { p.js.CleanupPublisher() }
