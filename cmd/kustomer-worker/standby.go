package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// unpinTimeout bounds the release of the pin at shutdown.
const unpinTimeout = 3 * time.Second

// startStandby runs what makes replicas active and standby: the renewal of both lanes' pins
// (Pinned.Run, Follower.Run), the role's publication in the roles bucket, a log line and the
// kustomer_worker_active gauge at every change of role. The returned stop, called once the
// pool has drained, releases the pins (so that a standby takes over at once) and stops all.
func startStandby(js jetstream.JetStream, top queue.Topology, lanes queue.Consumers, manage bool, bulkLane string, reg prometheus.Registerer, log *slog.Logger, hard context.Context) (stop func()) {
	pin := lanes.Live
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "kustomer_worker", Name: "active",
		Help: "1 while the server hands this replica the messages (active), 0 while it waits as a standby.",
	}, func() float64 {
		if active(pin, lanes.Backfill) {
			return 1
		}
		return 0
	}))

	ctx, cancel := context.WithCancel(context.WithoutCancel(hard))
	var wg sync.WaitGroup
	wg.Go(func() { _ = pin.Run(ctx) })
	wg.Go(func() { _ = lanes.Backfill.Run(ctx) })

	onChange := func(r queue.PinRole) {
		switch {
		case !r.Pinned:
			log.Warn("the consumer has no pinned priority group: every replica takes messages (shared); run once with manage-streams on, or see docs/STANDBY.md",
				"consumer", top.Consumer)
		case r.Active:
			log.Info("role: active", "role", queue.RoleActive, "pin_id", r.PinID)
		case r.Lost != "":
			log.Info("role: standby", "role", queue.RoleStandby, "reason", r.Lost)
		default: // never pinned yet
			switch startPin(ctx, pin) {
			case pinNobody:
				log.Info("role: not pinned yet: the server makes this replica the active one when its first pull brings a message", "role", queue.RoleStandby)
			case pinOther:
				log.Info("role: standby", "role", queue.RoleStandby, "reason", "another replica holds the pin")
			} // pinOwn: "role: active" follows
		}
	}
	// The roles bucket is looked up beside the pool's start, not before it: over a slow link
	// to NATS each read in a row delays the first update by a round trip.
	wg.Go(func() {
		bctx, bcancel := context.WithTimeout(ctx, bindCallTimeout)
		roles, err := queue.BindRoles(bctx, js, top, manage)
		bcancel()
		if err != nil {
			log.Warn("cannot publish this replica's role; status will not list it", "error", err)
			watchRole(ctx, pin, onChange)
			return
		}
		rp := &queue.RolePublisher{Roles: roles, Pin: pin, Backfill: lanes.Backfill, Version: buildVersion(), BulkLane: bulkLane, OnChange: onChange}
		_ = rp.Run(ctx)
	})

	return func() {
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(hard), unpinTimeout)
		for _, p := range []*queue.Pinned{pin, lanes.Backfill.Pinned} {
			if r := p.Role(); r.Active && r.Pinned {
				if err := p.Unpin(uctx); err != nil {
					log.Warn("could not release the pin; a standby takes over after pinned-ttl", "consumer", p.CachedInfo().Name, "error", err)
				} else {
					log.Info("released the pin: a standby takes over", "consumer", p.CachedInfo().Name)
				}
			}
		}
		ucancel()
		cancel()
		wg.Wait()
	}
}

// startPin says who the server pins on pin's consumer, read at start, before this replica
// ever held the pin: nobody yet, another replica (this one is a standby), or this one. The
// server may have pinned this replica's own first pull, whose message has not reached it
// yet: a pin found is taken for another's only if this replica is still not pinned pinSettle
// later. A failed read counts as nobody.
func startPin(ctx context.Context, pin *queue.Pinned) pinHolder {
	ictx, cancel := context.WithTimeout(ctx, bindCallTimeout)
	defer cancel()
	info, err := pin.Info(ictx)
	if err != nil {
		return pinNobody
	}
	held := false
	for _, g := range info.PriorityGroups {
		held = held || g.PinnedClientID != ""
	}
	if !held {
		return pinNobody
	}
	t := time.NewTimer(pinSettle)
	defer t.Stop()
	select {
	case <-pin.Gained():
		return pinOwn
	case <-t.C:
	case <-ctx.Done():
	}
	return pinOther
}

// pinHolder is who holds a consumer's pin, as startPin finds it.
type pinHolder int

const (
	pinNobody pinHolder = iota
	pinOther
	pinOwn
)

// pinSettle is how long a starting replica that finds the consumer pinned waits to learn
// whether the pin is its own.
const pinSettle = time.Second

// watchRole calls onChange at start and at every change of role, until ctx ends.
func watchRole(ctx context.Context, pin *queue.Pinned, onChange func(queue.PinRole)) {
	for {
		r := pin.Role()
		onChange(r)
		next := pin.Gained()
		if r.Active {
			next = pin.Lost()
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
	}
}

// active reports whether this replica takes messages: it holds the live lane's pin (or the
// consumer is shared), or the backfill lane's while no replica holds the live one.
func active(live *queue.Pinned, backfill *queue.Follower) bool {
	return live.Active() || (backfill != nil && backfill.Role().PinID != "")
}

// roleText names the role of the pool's consumers for /readyz.
func roleText(c, backfill worker.Consumer) string {
	pin, ok := c.(*queue.Pinned)
	if !ok {
		return "active"
	}
	bf, _ := backfill.(*queue.Follower)
	switch r := pin.Role(); {
	case !r.Pinned:
		return "active, shared consumer"
	case active(pin, bf):
		return queue.RoleActive
	default:
		return queue.RoleStandby
	}
}
