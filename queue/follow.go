package queue

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultFollowWait is how long Follower.Fetch waits, by default, while this replica may not
// pull the backfill lane: the worker pool's default pull wait.
const DefaultFollowWait = time.Second

// Follower is the backfill lane's consumer, pulled by the active replica only: the one the
// server pinned on the live lane's consumer. So one replica takes both lanes and spends the
// budget, never two replicas each pinned on one lane. It implements worker.Consumer.
//
// The rule, checked at every Fetch (the server's pin at most once per quarter PinnedTTL):
//   - this replica holds the live lane's pin (or the live consumer has no pinned priority
//     group: every replica is active and the lanes are shared): it pulls the backfill lane;
//   - no replica holds the live lane's pin (the server pins only when it delivers a message,
//     so an idle live lane pins nobody): it pulls the backfill lane in the priority group, so
//     the server pins one replica on the backfill lane and the others' pulls wait. That
//     replica is active until a live message pins a replica on the live lane;
//   - another replica holds the live lane's pin: it does not pull. Fetch returns an empty
//     batch once the live pin comes to this replica or after MaxWait, and a backfill pin this
//     replica holds is released (Unpin) and no longer renewed, so that it passes to the
//     active replica.
//
// Messages this replica already holds when it stops pulling are its own until settled or
// handed back, as after the loss of the live pin; the pool hands back what it has not sent
// when the backfill pin is lost (Lost), and per-conversation order across that window rests
// on the pool (worker.Role).
// Only Fetch and Next follow the rule; the other pull methods of the embedded Pinned do not.
type Follower struct {
	*Pinned // the backfill lane's consumer, in the priority group
	live    *Pinned

	// MaxWait is the longest Fetch waits while this replica may not pull, so that the
	// caller's loop comes round (and can stop); set it, before the first Fetch, to the pull
	// wait the caller passes (the pool's FetchWait). Default DefaultFollowWait.
	MaxWait time.Duration

	mu      sync.Mutex // held across a check of the server's pin, so that one check serves all
	checked time.Time  // when the server's live pin was last read. Guarded by mu.
	free    bool       // no replica held the live pin at checked. Guarded by mu.
}

// NewFollower makes backfill, the backfill lane's consumer, follow the pin of live, the live
// lane's. Run backfill's pin renewal with Follower.Run.
func NewFollower(backfill, live *Pinned) *Follower {
	f := &Follower{Pinned: backfill, live: live, MaxWait: DefaultFollowWait}
	backfill.keep = func(ctx context.Context) bool {
		ok, err := f.mayPull(ctx)
		return ok || err != nil // on a failed check keep what is held; the next tick checks again
	}
	return f
}

// Live is the live lane's consumer whose pin this one follows.
func (f *Follower) Live() *Pinned { return f.live }

// Fetch pulls up to batch messages of the backfill lane while this replica may (see
// Follower); otherwise it returns an empty batch without error once it may, or after
// MaxWait. An error reading the live consumer's state (NATS unreachable, the consumer
// deleted) is returned as Fetch's error.
func (f *Follower) Fetch(batch int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	wait := f.MaxWait
	if wait <= 0 {
		wait = DefaultFollowWait
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	ok, err := f.mayPull(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if ok {
		cancel()
		return f.Pinned.Fetch(batch, opts...)
	}
	if f.Pinned.Role().PinID != "" {
		_ = f.Pinned.Unpin(ctx) // hand the backfill pin to the active replica now, not after PinnedTTL
	}
	out := &pinnedBatch{msgs: make(chan jetstream.Msg)}
	gained := f.live.Gained()
	go func() { // owned by the batch: ends within wait
		defer cancel()
		select {
		case <-gained:
		case <-ctx.Done():
		}
		close(out.msgs)
	}()
	return out, nil
}

// Next pulls one message as Fetch does; nats.ErrTimeout when none came.
func (f *Follower) Next(opts ...jetstream.FetchOpt) (jetstream.Msg, error) {
	return next(f.Fetch, opts)
}

// Run keeps the backfill pin while this replica holds it and may pull (see Pinned.Run).
func (f *Follower) Run(ctx context.Context) error { return f.Pinned.Run(ctx) }

// mayPull applies the rule: this replica holds the live pin, or no replica does.
func (f *Follower) mayPull(ctx context.Context) (bool, error) {
	if f.live.Active() {
		return true, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < f.live.renewEvery() {
		return f.free, nil
	}
	info, err := f.live.Info(ctx)
	if err != nil {
		return false, err
	}
	f.free, f.checked = true, time.Now()
	for _, g := range info.PriorityGroups {
		if g.Group == f.live.group && g.PinnedClientID != "" {
			f.free = false
		}
	}
	return f.free, nil
}

var _ jetstream.Consumer = (*Follower)(nil)
