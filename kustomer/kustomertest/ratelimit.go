package kustomertest

import (
	"slices"
	"sync"
	"time"
)

type verdict int

const (
	allowed verdict = iota
	orgLimited
	conversationLimited
)

// rateState is the outcome of a rate check and what the rate-limit headers of its answer say.
type rateState struct {
	unlimited bool      // no org budget: send no rate-limit headers
	limit     int       // x-ratelimit-limit
	remaining int       // x-ratelimit-remaining
	reset     time.Time // end of the org window, for x-ratelimit-reset
	verdict   verdict
	retryAt   time.Time // for 429s: when a retry can succeed
}

// Window is one org window of the budget as the fake counted it: where the rate-limit
// budget's requests and the other clients' went. [Server.Windows] lists them.
type Window struct {
	Start time.Time `json:"start"` // when it began: its first request, or its fixed start
	End   time.Time `json:"end"`   // when it ends (or ended)

	Units   int `json:"units"`   // units spent by requests over HTTP
	Refused int `json:"refused"` // requests over HTTP refused because the budget was spent

	Others        int `json:"others"`        // units spent by the org's other clients (Config.Others)
	OthersRefused int `json:"othersRefused"` // their requests refused
}

type convWindow struct {
	end time.Time
	n   int
}

// limiter holds the org budget and the per-conversation limits. Its lock is held only for
// a few map and counter operations, never while waiting.
type limiter struct {
	budget     int // < 0: unlimited
	window     time.Duration
	start      WindowStart
	origin     time.Time // where fixed windows are counted from
	convLimit  int       // 0: off
	convWindow time.Duration

	mu      sync.Mutex
	end     time.Time // end of the current org window; zero before the first request
	used    int
	windows []Window // every org window begun, the current one last
	others  []*other
	convs   map[string]convWindow
	pruneAt int
}

const minPrune = 1024

// newLimiter is the budget of cfg for a fake started at start.
func newLimiter(cfg Config, start time.Time) *limiter {
	l := &limiter{
		budget:     cfg.Budget,
		window:     cfg.Window,
		start:      cfg.WindowStart,
		origin:     start.Add(cfg.WindowOffset),
		convLimit:  cfg.ConversationLimit,
		convWindow: cfg.ConversationWindow,
		convs:      make(map[string]convWindow),
		pruneAt:    minPrune,
	}
	if cfg.WindowStart == WindowOnClock {
		l.origin = time.Unix(0, 0).Add(cfg.WindowOffset)
	}
	for i, c := range cfg.Others {
		l.others = append(l.others, newOther(c, cfg.Budget, cfg.Window, start, uint64(cfg.RandSeed)+uint64(i)))
	}
	return l
}

// turn begins a new window if the current one has ended by t; l.mu is held.
func (l *limiter) turn(t time.Time) {
	if l.end.IsZero() || !t.Before(l.end) {
		l.used, l.end = 0, l.endAfter(t)
		start := t
		if l.start != WindowFromFirstRequest {
			start = l.end.Add(-l.window)
		}
		l.windows = append(l.windows, Window{Start: start, End: l.end})
	}
}

// endAfter is the end of a window that a request at t would begin.
func (l *limiter) endAfter(t time.Time) time.Time {
	switch {
	case l.start == WindowFromFirstRequest:
		return t.Add(l.window)
	case t.Before(l.origin):
		return l.origin.Add(-(l.origin.Sub(t) / l.window) * l.window)
	}
	return l.origin.Add((t.Sub(l.origin)/l.window + 1) * l.window)
}

// catchUp spends, in the order they come, the requests the org's other clients made until
// now; l.mu is held.
func (l *limiter) catchUp(now time.Time) {
	for {
		var first *other
		for _, o := range l.others {
			if !o.next.IsZero() && !o.next.After(now) && (first == nil || o.next.Before(first.next)) {
				first = o
			}
		}
		if first == nil {
			return
		}
		l.turn(first.next)
		first.sent++
		w := &l.windows[len(l.windows)-1]
		if l.used < l.budget {
			l.used++
			w.Others++
		} else {
			first.refused++
			w.OthersRefused++
		}
		first.advance(l.end, l.window)
	}
}

// othersStats counts the requests of the org's other clients until now.
func (l *limiter) othersStats(now time.Time) OthersStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.catchUp(now)
	var st OthersStats
	for _, o := range l.others {
		st.Requests += o.sent
		st.Refused += o.refused
	}
	return st
}

// peek reports the budget without consuming any, for answers that cost nothing (401, 403,
// unmatched routes). It does not start a window.
func (l *limiter) peek(now time.Time) rateState {
	if l.budget < 0 {
		return rateState{unlimited: true}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.catchUp(now)
	if l.end.IsZero() || !now.Before(l.end) {
		return rateState{limit: l.budget, remaining: l.budget, reset: l.endAfter(now)}
	}
	return rateState{limit: l.budget, remaining: l.budget - l.used, reset: l.end}
}

// take checks the org budget, then the conversation's limit (none for id ""), and consumes one
// unit of each when both allow the request. A refused request consumes nothing.
func (l *limiter) take(id string, now time.Time) rateState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := rateState{unlimited: l.budget < 0}
	if !st.unlimited {
		l.catchUp(now)
		l.turn(now)
		st.limit, st.reset = l.budget, l.end
		if l.used >= l.budget {
			l.windows[len(l.windows)-1].Refused++
			st.verdict, st.retryAt = orgLimited, l.end
			return st
		}
	}
	if l.convLimit > 0 && id != "" {
		cw, ok := l.convs[id]
		if !ok || !now.Before(cw.end) {
			cw = convWindow{end: now.Add(l.convWindow)}
		}
		if cw.n >= l.convLimit {
			if !st.unlimited {
				st.remaining = l.budget - l.used // > 0: the org budget was checked above
			}
			st.verdict, st.retryAt = conversationLimited, cw.end
			return st
		}
		cw.n++
		l.convs[id] = cw
		if !ok {
			l.prune(now)
		}
	}
	if !st.unlimited {
		l.used++
		l.windows[len(l.windows)-1].Units++
		st.remaining = l.budget - l.used
	}
	return st
}

// windowLog is a copy of every org window begun until now.
func (l *limiter) windowLog(now time.Time) []Window {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.catchUp(now)
	return slices.Clone(l.windows)
}

// prune forgets conversation windows that have ended, once the map has doubled since the
// last pruning, so memory follows the conversations of recent windows.
func (l *limiter) prune(now time.Time) {
	if len(l.convs) < l.pruneAt {
		return
	}
	for id, cw := range l.convs {
		if !now.Before(cw.end) {
			delete(l.convs, id)
		}
	}
	l.pruneAt = max(minPrune, 2*len(l.convs))
}

// ceilSeconds is d in whole seconds, rounded up; never negative.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// floorSeconds is d in whole seconds, rounded down; never negative.
func floorSeconds(d time.Duration) int64 { return int64(max(d, 0) / time.Second) }

// floorUnix is t as Unix seconds, rounded down.
func floorUnix(t time.Time) int64 { return t.Unix() }

// ceilUnix is t as Unix seconds, rounded up.
func ceilUnix(t time.Time) int64 {
	ns := t.UnixNano()
	s := ns / 1e9
	if ns%1e9 > 0 {
		s++
	}
	return s
}
