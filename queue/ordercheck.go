package queue

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// OrderCheck finds the older messages of one conversation that are still pending in a lane,
// so that a worker holding a newer message of that conversation from the other lane can
// apply them first: two updates of a conversation must be applied in stream order whatever
// their lanes. On the work-queue stream an acknowledged message is removed, so every message
// still in the stream is pending: not yet applied, or in progress.
//
// It asks the stream's leader (never a direct get from a replica, which may lag behind and
// show a message already acknowledged, or miss one just stored). Messages on <lane
// subject>.<id> are found by their subject: one request, plus one per message found.
// Messages on a lane's bare subject carry their conversation only in their body: the check
// reads each of them once, remembering its conversation (see OlderPending for the cost).
//
// An OrderCheck is safe for concurrent use.
type OrderCheck struct {
	top    Topology
	stream jetstream.Stream
	bare   map[Lane]*bareIndex // one per lane; the map is never written after NewOrderCheck
	clear  map[Lane]*laneMark  // one per lane; the map is never written after NewOrderCheck
}

// NewOrderCheck looks up the work stream of t.
func NewOrderCheck(ctx context.Context, js jetstream.JetStream, t Topology) (*OrderCheck, error) {
	s, err := FindStream(ctx, js, t.Stream)
	if err != nil {
		return nil, err
	}
	return NewOrderCheckOn(s, t)
}

// NewOrderCheckOn is NewOrderCheck on the work stream s of t, already looked up (as
// Consumers.Stream): it reads nothing.
func NewOrderCheckOn(s jetstream.Stream, t Topology) (*OrderCheck, error) {
	if s.CachedInfo().Config.AllowDirect {
		// GetMsg would use direct gets, answered by any replica: see the type's doc.
		return nil, fmt.Errorf("stream %s allows direct gets: the order check needs answers from its leader; turn allow_direct off", t.Stream)
	}
	c := &OrderCheck{top: t, stream: s, bare: make(map[Lane]*bareIndex), clear: make(map[Lane]*laneMark)}
	for _, l := range Lanes() {
		c.bare[l] = &bareIndex{next: 1, byID: make(map[string][]uint64), pruneAt: bareFirstPrune}
		c.clear[l] = &laneMark{below: 1}
	}
	return c, nil
}

// OlderPending returns the messages of conversation id in lane whose stream sequence is
// below before, oldest first: the updates that must be applied before the message with
// sequence before. Both the lane's subjects count: <lane subject>.<id>, and the bare lane
// subject, whose messages name their conversation in their body's "id".
//
// Cost, in requests to the stream's leader: none while the lane holds no message below
// before (see clearBelow: three requests find that out for every message stored so far, so
// a backlog drained while the other lane is empty costs a few requests in all). Otherwise:
// one for <lane subject>.<id>, plus one per message found there; and for the bare subject, one per bare message stored since the last
// check of the lane (zero when before is below the last one read, one when none was
// stored), plus one per bare message of the conversation remembered as pending. Each bare
// message is read once: a backfill published on the bare subject costs one extra read per
// message, spread over the checks (up to bareReaders at a time), and memory for the
// conversation of each one not yet known to be gone.
//
// Each message returned is a *DirectMsg read from the stream, marked with whether the lane's
// consumer had delivered it (to this process or another) when the check read the consumer,
// after the message: one more request, made only when messages are found. One not delivered
// is delivered in its turn unless it is removed first (DirectMsg.Ack). One delivered is in
// the hands of whoever the consumer gave it to, who may be applying it; a worker that holds
// that delivery already should use it instead.
func (c *OrderCheck) OlderPending(ctx context.Context, lane Lane, id string, before uint64) ([]*DirectMsg, error) {
	if c.clearBelow(ctx, lane, before) {
		return nil, nil
	}
	out, err := c.older(ctx, c.top.ConversationSubject(lane, id), before)
	if err != nil {
		return out, err
	}
	bare, err := c.olderBare(ctx, lane, id, before)
	if err != nil {
		return nil, err
	}
	if len(bare) > 0 {
		out = append(out, bare...)
		slices.SortFunc(out, func(a, b *DirectMsg) int { return cmp.Compare(a.raw.Sequence, b.raw.Sequence) })
	}
	if len(out) == 0 {
		return nil, nil
	}
	cons, err := readLeader(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
		return c.stream.Consumer(ctx, c.top.LaneConsumer(lane))
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", c.top.LaneConsumer(lane), err)
	}
	last := cons.CachedInfo().Delivered.Stream // as the lookup just read it, after the messages
	for _, m := range out {
		m.delivered = m.raw.Sequence <= last
	}
	return out, nil
}

// laneMark is a sequence below which a lane holds no message in the stream. It only grows:
// a message stored later has a higher sequence than any stored before. Guarded by mu, which
// is never held across a request: one refresh at a time (refresh), which the checks that come
// meanwhile wait for and share.
type laneMark struct {
	mu      sync.Mutex
	below   uint64
	refresh *markRefresh // the refresh in progress; nil when none
}

// markRefresh is one refresh of a laneMark: ok is written before done is closed.
type markRefresh struct {
	done chan struct{}
	ok   bool
}

// clearBelow reports whether lane holds no message below before: then no check is needed.
// When before is above the mark, it reads the stream's last sequence, and then the lane's
// oldest message on each of its subjects: every message up to that last sequence was stored
// before these reads, so none of the lane's is older than the oldest found, and if none was
// found the lane holds nothing up to the last sequence. Three requests in two round trips (the
// subjects are read at once), for every message stored so far; on a failure (its own
// refresh's, or the one it waited for) it reports false, and the check proper runs.
func (c *OrderCheck) clearBelow(ctx context.Context, lane Lane, before uint64) bool {
	m := c.clear[lane]
	for {
		m.mu.Lock()
		if before <= m.below {
			m.mu.Unlock()
			return true
		}
		if r := m.refresh; r != nil {
			m.mu.Unlock()
			select {
			case <-r.done:
				if !r.ok {
					return false
				}
				continue
			case <-ctx.Done():
				return false
			}
		}
		c.refreshMark(ctx, lane) // unlocks m.mu
		m.mu.Lock()
		clear := before <= m.below
		m.mu.Unlock()
		return clear
	}
}

// refreshMark reads lane's mark anew as the refresh in progress (see clearBelow). It is
// called with the lane's laneMark.mu held and no refresh in progress, and returns with mu
// released.
func (c *OrderCheck) refreshMark(ctx context.Context, lane Lane) {
	m := c.clear[lane]
	r := &markRefresh{done: make(chan struct{})}
	m.refresh = r
	from := m.below
	m.mu.Unlock()
	below, ok := c.readMark(ctx, lane, from)
	m.mu.Lock()
	if ok {
		m.below = max(m.below, below)
	}
	m.refresh = nil
	m.mu.Unlock()
	r.ok = ok
	close(r.done)
}

// readMark reads a new mark for lane (see clearBelow), its oldest messages looked for from
// from; ok is false when a read failed.
func (c *OrderCheck) readMark(ctx context.Context, lane Lane, from uint64) (below uint64, ok bool) {
	info, err := readLeader(ctx, func(ctx context.Context) (*jetstream.StreamInfo, error) { return c.stream.Info(ctx) })
	if err != nil {
		return 0, false
	}
	below = info.State.LastSeq + 1
	// The subjects are read at once, after the stream's last sequence (which they rely on).
	subjects := c.top.LaneSubjects(lane)
	firsts := make([]*jetstream.RawStreamMsg, len(subjects))
	errs := make([]error, len(subjects))
	var wg sync.WaitGroup
	for i, subject := range subjects {
		wg.Go(func() { firsts[i], errs[i] = c.next(ctx, subject, from) })
	}
	wg.Wait()
	for i, first := range firsts {
		if errs[i] != nil {
			return 0, false
		}
		if first != nil {
			below = min(below, first.Sequence)
		}
	}
	return below, true
}

// Warm reads each lane's mark (see clearBelow) at once, so that the first checks after a
// start find it read, or being read, instead of reading it one lane after the other over a
// round trip each. A check that comes while it reads waits for it. Failures are left to the
// checks, which read again.
func (c *OrderCheck) Warm(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range Lanes() {
		wg.Go(func() {
			m := c.clear[l]
			m.mu.Lock()
			if m.refresh != nil { // being read already
				m.mu.Unlock()
				return
			}
			c.refreshMark(ctx, l) // unlocks m.mu
		})
	}
	wg.Wait()
}

// older reads the messages on subject below before.
func (c *OrderCheck) older(ctx context.Context, subject string, before uint64) ([]*DirectMsg, error) {
	var out []*DirectMsg
	for from := uint64(1); from < before; {
		m, err := c.next(ctx, subject, from)
		if err != nil {
			return out, err
		}
		if m == nil || m.Sequence >= before {
			break
		}
		out = append(out, c.direct(m))
		from = m.Sequence + 1
	}
	return out, nil
}

func (c *OrderCheck) direct(m *jetstream.RawStreamMsg) *DirectMsg {
	return &DirectMsg{raw: m, stream: c.stream, streamName: c.top.Stream}
}

// Tuned values of the index of bare-subject messages: how many are read at once when the
// index is behind by many, and how many it remembers before it first forgets the gone ones.
const (
	bareReaders    = 8
	bareFirstPrune = 1024
)

// bareIndex remembers the conversation of every message read on one lane's bare subject
// that is not known to be gone. Its fields are guarded by mu, which is never held across a
// request to the stream: the reads that extend the index are made by one check at a time
// (reading), which the other checks of the lane wait for and then use, and so is a prune
// (pruning).
type bareIndex struct {
	mu      sync.Mutex
	next    uint64              // every bare message below next was read (or gone when reached)
	seqs    []uint64            // sequences remembered, ascending
	byID    map[string][]uint64 // sequences remembered by conversation, ascending
	pruneAt int                 // prune when len(seqs) reaches it
	reading chan struct{}       // closed when the extension in progress ends; nil when none
	pruning bool                // a prune is in progress
}

// olderBare returns the messages on lane's bare subject of conversation id below before.
func (c *OrderCheck) olderBare(ctx context.Context, lane Lane, id string, before uint64) ([]*DirectMsg, error) {
	ix := c.bare[lane]
	subject := c.top.LaneSubject(lane)
	fresh, err := c.extend(ctx, ix, subject, id, before)
	if err != nil {
		return nil, err
	}
	ix.mu.Lock()
	var mine []uint64
	for _, seq := range ix.byID[id] {
		if seq >= before {
			break
		}
		mine = append(mine, seq)
	}
	ix.mu.Unlock()
	var out []*DirectMsg
	var gone []uint64
	for _, seq := range mine {
		m := fresh[seq]
		if m == nil { // read in an earlier check: is it still pending?
			var gerr error
			m, gerr = getMsg(ctx, c.stream, seq)
			if errors.Is(gerr, jetstream.ErrMsgNotFound) {
				gone = append(gone, seq)
				continue
			}
			if gerr != nil {
				err = fmt.Errorf("stream %s: reading message %d: %w", c.top.Stream, seq, gerr)
				break
			}
		}
		out = append(out, c.direct(m))
	}
	ix.mu.Lock()
	for _, seq := range gone {
		ix.forget(id, seq)
	}
	prune := err == nil && len(ix.seqs) >= ix.pruneAt && !ix.pruning
	if prune {
		ix.pruning = true
	}
	ix.mu.Unlock()
	if prune {
		return out, c.prune(ctx, ix, subject)
	}
	return out, err
}

// extend reads the bare messages from ix.next up to before, remembering their
// conversations, and returns those of conversation id, by sequence. One request when there
// is none; a long way behind, it reads bareReaders ranges at once. While another check
// extends the index, it waits for that one and then reads on from where it ended.
func (c *OrderCheck) extend(ctx context.Context, ix *bareIndex, subject, id string, before uint64) (map[uint64]*jetstream.RawStreamMsg, error) {
	for {
		ix.mu.Lock()
		if ix.next >= before {
			ix.mu.Unlock()
			return nil, nil
		}
		if wait := ix.reading; wait != nil {
			ix.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		ix.reading = done
		from := ix.next
		ix.mu.Unlock()
		fresh, reads, err := c.readBareRange(ctx, subject, id, from, before)
		ix.mu.Lock()
		for _, r := range reads {
			ix.remember(r)
		}
		ix.reading = nil
		ix.mu.Unlock()
		close(done)
		return fresh, err
	}
}

// bareStep is what one read of extend adds to the index: a message read (conv set, or ""
// for one that is not an update), or only how far the index has read (seq 0).
type bareStep struct {
	read bareRead
	next uint64 // every bare message below it was read
}

// remember adds r to the index; ix.mu is held.
func (ix *bareIndex) remember(r bareStep) {
	if r.read.seq != 0 && r.read.conv != "" {
		ix.seqs = append(ix.seqs, r.read.seq)
		ix.byID[r.read.conv] = append(ix.byID[r.read.conv], r.read.seq)
	}
	ix.next = max(ix.next, r.next)
}

// readBareRange reads the bare messages from from up to before (and the first one at or
// past before, when none lies between), without the index's lock, and returns the steps to
// add to the index in order, and the messages of conversation id by sequence.
func (c *OrderCheck) readBareRange(ctx context.Context, subject, id string, from, before uint64) (map[uint64]*jetstream.RawStreamMsg, []bareStep, error) {
	first, err := c.next(ctx, subject, from)
	if err != nil {
		return nil, nil, err
	}
	if first == nil {
		// before's own message is stored: nothing below it can be stored later.
		return nil, []bareStep{{next: before}}, nil
	}
	fresh := make(map[uint64]*jetstream.RawStreamMsg)
	var steps []bareStep
	add := func(r bareRead) {
		steps = append(steps, bareStep{read: r, next: r.seq + 1})
		if r.msg != nil {
			fresh[r.seq] = r.msg
		}
	}
	add(readBare(first, id)) // even past before: read once, and nothing lies between
	if first.Sequence >= before {
		return fresh, steps, nil
	}
	// Ranges [bounds[i], bounds[i+1]) after first, each read by one reader.
	from = first.Sequence + 1
	n := bareReaders
	if before-from < 4*bareReaders {
		n = 1
	}
	bounds := make([]uint64, n+1)
	for i := range bounds {
		bounds[i] = from + (before-from)*uint64(i)/uint64(n)
	}
	ranges := make([][]bareRead, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for seq := bounds[i]; seq < bounds[i+1]; {
				m, err := c.next(ctx, subject, seq)
				if err != nil || m == nil || m.Sequence >= bounds[i+1] {
					errs[i] = err
					return
				}
				ranges[i] = append(ranges[i], readBare(m, id))
				seq = m.Sequence + 1
			}
		})
	}
	wg.Wait()
	for i, reads := range ranges {
		for _, r := range reads {
			add(r)
		}
		if errs[i] != nil {
			return fresh, steps, errs[i] // the next check reads on from where this range failed
		}
		steps = append(steps, bareStep{next: bounds[i+1]})
	}
	return fresh, steps, nil
}

// bareRead is what the index keeps of a bare message it read: its conversation, and the
// message itself only if it is of the conversation being checked.
type bareRead struct {
	seq  uint64
	conv string
	msg  *jetstream.RawStreamMsg
}

func readBare(m *jetstream.RawStreamMsg, id string) bareRead {
	r := bareRead{seq: m.Sequence, conv: conversationOf(m.Data)}
	if r.conv == id {
		r.msg = m
	}
	return r
}

// forget drops seq of conversation id: it is gone from the stream.
func (ix *bareIndex) forget(id string, seq uint64) {
	s := ix.byID[id]
	if i, ok := slices.BinarySearch(s, seq); ok {
		s = slices.Delete(s, i, i+1)
	}
	if len(s) == 0 {
		delete(ix.byID, id)
		return
	}
	ix.byID[id] = s
}

// prune forgets the remembered sequences that are gone from the stream. It walks the
// messages still on the bare subject below the index's read mark, oldest first (one request
// per message still there: a work-queue stream keeps only those pending), so that one
// message held for long does not keep the index from forgetting the many applied after it.
// The walk is bounded by twice the index's size; past it, only the sequences below the
// oldest message are forgotten. The next prune comes when the index has doubled. It is made
// without the index's lock (ix.pruning was set by the caller, which this clears).
func (c *OrderCheck) prune(ctx context.Context, ix *bareIndex, subject string) error {
	ix.mu.Lock()
	upto, budget := ix.next, 2*len(ix.seqs)+16
	ix.mu.Unlock()
	var present []uint64 // bare messages still in the stream below upto, ascending
	complete := false
	var err error
	for from := uint64(1); ; {
		if len(present) >= budget {
			break
		}
		var m *jetstream.RawStreamMsg
		if m, err = c.next(ctx, subject, from); err != nil {
			break
		}
		if m == nil || m.Sequence >= upto {
			complete = true
			break
		}
		present = append(present, m.Sequence)
		from = m.Sequence + 1
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.pruning = false
	if err != nil && len(present) == 0 {
		return err
	}
	keep := func(seq uint64) bool {
		if seq >= upto {
			return true
		}
		if !complete && seq > present[len(present)-1] {
			return true // beyond what the walk reached: unknown
		}
		_, ok := slices.BinarySearch(present, seq)
		return ok
	}
	ix.seqs = slices.DeleteFunc(ix.seqs, func(seq uint64) bool { return !keep(seq) })
	for id, s := range ix.byID {
		s = slices.DeleteFunc(s, func(seq uint64) bool { return !keep(seq) })
		if len(s) == 0 {
			delete(ix.byID, id)
		} else {
			ix.byID[id] = s
		}
	}
	ix.pruneAt = max(bareFirstPrune, 2*len(ix.seqs))
	return err
}

// conversationOf is the conversation an update message names in its "id"; empty when the
// message is not a JSON object with a string id (the worker dead-letters such a message).
func conversationOf(data []byte) string {
	var u struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &u) != nil {
		return ""
	}
	return u.ID
}

// next returns the first message on subject at or after sequence from, or nil when there is
// none.
func (c *OrderCheck) next(ctx context.Context, subject string, from uint64) (*jetstream.RawStreamMsg, error) {
	m, err := getMsg(ctx, c.stream, from, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: reading %s from %d: %w", c.top.Stream, subject, from, err)
	}
	return m, nil
}

// DirectMsg is a work-stream message read by sequence rather than delivered by a consumer,
// for a worker to apply ahead of its turn (see OrderCheck). It is a jetstream.Msg, so a
// worker handles it like a delivered one, but settling it means something else:
//
//   - Ack, DoubleAck, Term and TermWithReason remove it from the stream (confirmed by the
//     stream's leader), so the lane's consumer never delivers it; if it is gone already
//     (acknowledged through the consumer meanwhile) they succeed.
//   - Nak, NakWithDelay and InProgress do nothing: the message stays in the stream and the
//     lane's consumer delivers it in its turn.
//
// If the lane's consumer delivered the same sequence meanwhile, that delivery stays pending
// until it is acknowledged or its AckWait ends; acknowledging it after the removal is
// harmless.
type DirectMsg struct {
	raw        *jetstream.RawStreamMsg
	stream     jetstream.Stream
	streamName string
	delivered  bool // the lane's consumer had delivered it when OlderPending read the consumer
}

// Delivered reports whether the lane's consumer had delivered the message (to any process,
// this one included) when OrderCheck.OlderPending found it: it is then in the hands of the
// process the consumer gave it to, or waits for its redelivery.
func (m *DirectMsg) Delivered() bool { return m.delivered }

// directAckTimeout bounds the removal behind Ack and Term, which take no context.
const directAckTimeout = 10 * time.Second

// Metadata gives the stream sequence and time; NumDelivered is 1 and the consumer parts
// are zero.
func (m *DirectMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{
		Sequence:     jetstream.SequencePair{Stream: m.raw.Sequence},
		NumDelivered: 1,
		Timestamp:    m.raw.Time,
		Stream:       m.streamName,
	}, nil
}

// Data is the message's body.
func (m *DirectMsg) Data() []byte { return m.raw.Data }

// Headers are the message's headers.
func (m *DirectMsg) Headers() nats.Header { return m.raw.Header }

// Subject is the subject the message was published to.
func (m *DirectMsg) Subject() string { return m.raw.Subject }

// Reply is empty: there is no consumer to answer.
func (m *DirectMsg) Reply() string { return "" }

// Ack removes the message from the stream.
func (m *DirectMsg) Ack() error {
	ctx, cancel := context.WithTimeout(context.Background(), directAckTimeout)
	defer cancel()
	return m.remove(ctx)
}

// DoubleAck removes the message from the stream; it returns once the leader confirmed.
func (m *DirectMsg) DoubleAck(ctx context.Context) error { return m.remove(ctx) }

// Nak leaves the message to its lane's consumer.
func (m *DirectMsg) Nak() error { return nil }

// NakWithDelay leaves the message to its lane's consumer.
func (m *DirectMsg) NakWithDelay(time.Duration) error { return nil }

// InProgress does nothing: no AckWait runs on a message read by sequence.
func (m *DirectMsg) InProgress() error { return nil }

// Term removes the message from the stream.
func (m *DirectMsg) Term() error { return m.Ack() }

// TermWithReason removes the message from the stream.
func (m *DirectMsg) TermWithReason(string) error { return m.Ack() }

// remove deletes the message from the stream; a message already gone is no error.
func (m *DirectMsg) remove(ctx context.Context) error {
	err := m.stream.DeleteMsg(ctx, m.raw.Sequence)
	if err == nil {
		return nil
	}
	// The server's reasons for a missing sequence vary (not found, store EOF): ask.
	if _, gerr := m.stream.GetMsg(ctx, m.raw.Sequence); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return fmt.Errorf("stream %s: removing message %d: %w", m.streamName, m.raw.Sequence, err)
}

var _ jetstream.Msg = (*DirectMsg)(nil)
