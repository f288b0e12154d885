package kustomertest

import (
	"math/rand/v2"
	"slices"
	"time"
)

// OtherClient is another client of the org, say a helpdesk app, spending from the same
// budget inside the fake, without HTTP: it costs nothing to simulate. [Server.Stats] counts
// its requests and those refused.
type OtherClient struct {
	// Share is the part of each window's budget it spends, from 0 to 1.
	Share float64

	// Pattern is how it spends its share within a window. Default OtherSteady.
	Pattern OtherPattern

	// Start is when it begins, after the fake started. Default 0.
	Start time.Duration

	// Stop is when it ends, after the fake started. Default 0: never.
	Stop time.Duration
}

// OtherPattern is how an [OtherClient] spends its share of a window.
type OtherPattern int

const (
	// OtherSteady spends it evenly, one request every window/(share*budget).
	OtherSteady OtherPattern = iota
	// OtherFrontLoaded spends it all in the first second of each window (the first fifth of
	// a window shorter than 5 s).
	OtherFrontLoaded
	// OtherBursts spends it in three bursts a window, at moments drawn from
	// Config.RandSeed; only the timing is random, not the total.
	OtherBursts
)

// other is the schedule of one OtherClient. Owned by the limiter, under its lock.
type other struct {
	cfg      OtherClient
	every    time.Duration // between two steady requests
	share    int           // requests a window
	until    time.Time     // zero: never
	next     time.Time     // its next request; zero when it has none left
	planned  []time.Time   // the rest of the window planned, earliest first
	lastPlan time.Time
	rng      *rand.Rand
	sent     int
	refused  int
}

func newOther(c OtherClient, budget int, window time.Duration, start time.Time, seed uint64) *other {
	o := &other{cfg: c, share: int(c.Share*float64(budget) + 0.5), rng: rand.New(rand.NewPCG(seed, 0x6f7468657273))}
	if o.share == 0 || budget < 0 {
		return o
	}
	o.every = (window + time.Duration(o.share) - 1) / time.Duration(o.share) // rounded up: no extra request a window
	if c.Stop > 0 {
		o.until = start.Add(c.Stop)
	}
	o.next = start.Add(c.Start)
	if c.Pattern != OtherSteady {
		o.next = time.Time{}
		o.plan(start.Add(c.Start), window)
		o.pop()
	}
	return o
}

// advance moves to the next request, planning the window after end when the planned ones
// are used up.
func (o *other) advance(end time.Time, window time.Duration) {
	if o.cfg.Pattern == OtherSteady {
		o.next = o.next.Add(o.every)
	} else {
		if len(o.planned) == 0 {
			o.plan(end, window)
		}
		o.pop()
	}
	if !o.until.IsZero() && !o.next.Before(o.until) {
		o.next = time.Time{}
	}
}

func (o *other) pop() { o.next, o.planned = o.planned[0], o.planned[1:] }

// plan lays out the requests of the window that begins at start (or, if that has passed,
// after the last one planned).
func (o *other) plan(start time.Time, window time.Duration) {
	if !start.After(o.lastPlan) {
		start = o.lastPlan.Add(window)
	}
	o.lastPlan = start
	switch o.cfg.Pattern {
	case OtherFrontLoaded:
		span := min(time.Second, window/5)
		for i := range o.share {
			o.planned = append(o.planned, start.Add(span*time.Duration(i)/time.Duration(o.share)))
		}
	case OtherBursts:
		for b := range 3 {
			at := start.Add(time.Duration(o.rng.Int64N(int64(window * 4 / 5))))
			for i := b; i < o.share; i += 3 {
				o.planned = append(o.planned, at.Add(time.Duration(i/3)*10*time.Millisecond))
			}
		}
		slices.SortFunc(o.planned, func(a, b time.Time) int { return a.Compare(b) })
	}
}

// OthersStats counts the requests of the org's other clients.
type OthersStats struct {
	Requests int `json:"requests"` // requests they made
	Refused  int `json:"refused"`  // of those, refused with 429: the budget was spent
}
