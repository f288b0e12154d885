// Package logflood keeps a log readable under a flood of lines of one kind (20,000 malformed
// messages, each dead-lettered with a WARN): a slog.Handler that writes the first few lines
// of each kind in an interval in full and counts the rest, and a summary line per interval
// with the counts by kind. Nothing an operator needs is lost: the summary says how many lines
// of each kind were held back, and the records themselves (dead letters, metrics) live
// elsewhere.
package logflood

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of Options.
const (
	DefaultBurst    = 5
	DefaultInterval = 10 * time.Second
)

// Options tune a Handler. The zero value of every field means its default.
type Options struct {
	// Burst is how many lines of one kind are written in full in each interval. Default
	// DefaultBurst (5).
	Burst int
	// Interval is the period over which lines are counted and after which a summary is due.
	// Default DefaultInterval (10s).
	Interval time.Duration
	// KindAttrs are the attributes that, with the level and the message, make a line's kind
	// (unless zero or empty); lines that differ only in other attributes (a conversation id)
	// are of one kind.
	// Default: "class" and "status".
	KindAttrs []string
	// Suppressed, when set, is called for every line held back, with its kind: for metrics.
	Suppressed func(kind string)
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Handler wraps another slog.Handler. Handlers derived with WithAttrs and WithGroup share
// their counts with the one they came from. It is safe for concurrent use.
type Handler struct {
	next  slog.Handler
	base  slog.Handler // next without attributes or groups added: for the summary
	state *state
}

type state struct {
	opts Options
	mu   sync.Mutex
	// Guarded by mu.
	start      time.Time      // of the current interval
	written    map[string]int // lines of each kind written in full in this interval
	suppressed map[string]int // lines of each kind held back in this interval
}

// New returns a Handler that writes to next.
func New(next slog.Handler, opts Options) *Handler {
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.KindAttrs == nil {
		opts.KindAttrs = []string{"class", "status"}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	st := &state{opts: opts, start: opts.Now(), written: map[string]int{}, suppressed: map[string]int{}}
	return &Handler{next: next, base: next, state: st}
}

// Enabled reports whether next handles level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle writes r in full if its kind has had fewer than Burst lines in this interval, and
// otherwise counts it. A record that starts a new interval first writes the last one's
// summary.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	kind := h.kind(r)
	st := h.state
	st.mu.Lock()
	summary, ok := st.rollLocked(r.Time)
	write := st.written[kind] < st.opts.Burst
	if write {
		st.written[kind]++
	} else {
		st.suppressed[kind]++
	}
	st.mu.Unlock()
	if ok {
		if err := h.base.Handle(ctx, summary); err != nil {
			return err
		}
	}
	if !write {
		if st.opts.Suppressed != nil {
			st.opts.Suppressed(kind)
		}
		return nil
	}
	return h.next.Handle(ctx, r)
}

// Flush writes the summary of the current interval if it is over and held lines back; call
// it every Interval so that a flood that stops is still summarized. With force, it ends the
// interval now (at exit).
func (h *Handler) Flush(ctx context.Context, force bool) error {
	st := h.state
	now := st.opts.Now()
	st.mu.Lock()
	if force {
		st.start = now.Add(-st.opts.Interval)
	}
	summary, ok := st.rollLocked(now)
	st.mu.Unlock()
	if !ok {
		return nil
	}
	return h.base.Handle(ctx, summary)
}

// rollLocked ends the interval if at is past it, returning its summary record when lines were
// held back in it.
func (st *state) rollLocked(at time.Time) (slog.Record, bool) {
	if at.IsZero() {
		at = st.opts.Now()
	}
	if at.Sub(st.start) < st.opts.Interval {
		return slog.Record{}, false
	}
	held := st.suppressed
	period := at.Sub(st.start)
	st.start, st.written, st.suppressed = at, map[string]int{}, map[string]int{}
	if len(held) == 0 {
		return slog.Record{}, false
	}
	kinds := make([]string, 0, len(held))
	total := 0
	for k, n := range held {
		kinds = append(kinds, k)
		total += n
	}
	slices.SortFunc(kinds, func(a, b string) int { return cmp.Or(cmp.Compare(held[b], held[a]), cmp.Compare(a, b)) })
	r := slog.NewRecord(at, slog.LevelWarn, fmt.Sprintf("repeated log lines held back: %d in the last %s", total, period.Round(time.Second)), 0)
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d × %s", held[k], k))
	}
	r.AddAttrs(slog.String("held_back", strings.Join(parts, "; ")))
	return r, true
}

// kind is the level, message and kind attributes of r, such as
// `WARN dead-lettered class=invalid`.
func (h *Handler) kind(r slog.Record) string {
	var b strings.Builder
	b.WriteString(r.Level.String())
	b.WriteByte(' ')
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		if v := a.Value.Resolve(); slices.Contains(h.state.opts.KindAttrs, a.Key) && !v.Equal(slog.IntValue(0)) && v.String() != "" {
			fmt.Fprintf(&b, " %s=%s", a.Key, v.String())
		}
		return true
	})
	return b.String()
}

// WithAttrs returns a Handler that adds attrs to every line and shares h's counts.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(attrs), base: h.base, state: h.state}
}

// WithGroup returns a Handler that puts every line's attributes in group name and shares h's
// counts.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), base: h.base, state: h.state}
}
