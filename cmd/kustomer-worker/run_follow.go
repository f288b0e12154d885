package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// runView shows one run (enqueue --wait, status --run): it reads the run's status from
// JetStream (queue.RunReader) and shows it as a bar on a terminal, a line per reading
// otherwise, or a JSON object per reading. Everything it shows is read again from JetStream
// each time, so a follower started again (after a crash, on another machine) shows the same.
type runView struct {
	w         io.Writer
	mode      string // bar, plain, json or text (one reading, for reading)
	perMinute int    // the org budget, for the ETA from the budget; 0 if unknown
	bar       *progressbar.ProgressBar
	lastLine  time.Time
	lineEvery time.Duration
}

// runJSON is a reading of a run as --json writes it.
type runJSON struct {
	queue.RunStatus
	// ETASeconds is the time left at the run's rate over the last minute; omitted with no rate.
	ETASeconds *float64 `json:"etaSeconds,omitempty"`
	// BudgetETASeconds is the time left if the rest costs what each settled line cost so far
	// (or one request a line before any), at --rate-per-minute.
	BudgetETASeconds *float64 `json:"budgetEtaSeconds,omitempty"`
}

// eta is the time left at the recent rate; false without one.
func eta(st queue.RunStatus) (time.Duration, bool) {
	if st.Pending == 0 {
		return 0, true
	}
	if st.RecentRate <= 0 {
		return 0, false
	}
	return time.Duration(float64(st.Pending) / st.RecentRate * float64(time.Second)), true
}

// budgetETA is the time left if the pending lines cost what each settled one did, at the
// budget of perMinute requests a minute.
func budgetETA(st queue.RunStatus, perMinute int) (time.Duration, bool) {
	if perMinute <= 0 {
		return 0, false
	}
	perLine := 1.0
	if s := st.Settled(); s > 0 && st.Units > 0 {
		perLine = float64(st.Units) / float64(s)
	}
	mins := float64(st.Pending) * perLine / float64(perMinute)
	return time.Duration(mins * float64(time.Minute)), true
}

func secs(d time.Duration, ok bool) *float64 {
	if !ok {
		return nil
	}
	s := d.Seconds()
	return &s
}

// runClasses formats a run's dead letters by class: "rejected 3, exhausted 1".
func runClasses(m map[queue.DeadLetterClass]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// line is one reading on one line.
func (v *runView) line(st queue.RunStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s: %s, applied %d of %d, dead-lettered %d", st.ID, st.State, st.Applied, st.Lines, st.Dead)
	if st.Dead > 0 {
		fmt.Fprintf(&b, " (%s)", runClasses(st.DeadLettered))
	}
	fmt.Fprintf(&b, ", pending %d", st.Pending)
	if st.InBulk > 0 {
		fmt.Fprintf(&b, " (%d in bulk jobs)", st.InBulk)
	}
	if st.BulkApplied > 0 {
		fmt.Fprintf(&b, ", %d applied by %d bulk jobs", st.BulkApplied, st.BulkJobs)
	}
	fmt.Fprintf(&b, ", units %d, %.1f/s", st.Units, st.RecentRate)
	if d, ok := eta(st); ok && st.Pending > 0 {
		fmt.Fprintf(&b, ", about %s left", d.Round(time.Second))
	} else if d, ok := budgetETA(st, v.perMinute); ok && st.Pending > 0 {
		fmt.Fprintf(&b, ", about %s left at the budget", d.Round(time.Second))
	}
	return b.String()
}

// text is one reading for reading.
func (v *runView) text(st queue.RunStatus) []string {
	lines := []string{
		fmt.Sprintf("run            %s (%s lane, from %s)", st.ID, st.Lane, orDash(st.Input)),
		fmt.Sprintf("state          %s", st.State),
		fmt.Sprintf("started        %s", st.Started.UTC().Format(time.RFC3339)),
		fmt.Sprintf("lines          %10d", st.Lines),
		fmt.Sprintf("applied        %10d", st.Applied),
		fmt.Sprintf("dead-lettered  %10d  %s", st.Dead, runClasses(st.DeadLettered)),
		fmt.Sprintf("pending        %10d  %d of them in bulk jobs", st.Pending, st.InBulk),
		fmt.Sprintf("bulk           %10d  applied in %d bulk jobs (%.0f%% of applied)", st.BulkApplied, st.BulkJobs, 100*st.BulkShare),
		fmt.Sprintf("units          %10d  requests: single PUTs and one submit per bulk job", st.Units),
		fmt.Sprintf("rate           %10.1f  lines/s over the last minute", st.RecentRate),
	}
	if st.Invalid > 0 {
		lines = append(lines, fmt.Sprintf("invalid        %10d  refused by enqueue, not published", st.Invalid))
	}
	if st.Finished() {
		lines = append(lines, fmt.Sprintf("duration       %10s", (time.Duration(st.Duration*float64(time.Second))).Round(time.Second)))
	} else if d, ok := eta(st); ok {
		lines = append(lines, fmt.Sprintf("left           %10s  at the rate of the last minute", d.Round(time.Second)))
	} else if d, ok := budgetETA(st, v.perMinute); ok {
		lines = append(lines, fmt.Sprintf("left           %10s  at %d requests a minute", d.Round(time.Second), v.perMinute))
	}
	return lines
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// show writes one reading.
func (v *runView) show(st queue.RunStatus) error {
	switch v.mode {
	case "json":
		return writeJSON(v.w, runJSON{RunStatus: st, ETASeconds: secs(eta(st)), BudgetETASeconds: secs(budgetETA(st, v.perMinute))})
	case "bar":
		if v.bar == nil {
			v.bar = progressbar.NewOptions64(max(st.Lines, 1),
				progressbar.OptionSetWriter(v.w),
				progressbar.OptionShowCount(),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionSetRenderBlankState(true),
				progressbar.OptionFullWidth(),
			)
		}
		v.bar.ChangeMax64(max(st.Lines, 1))
		v.bar.Describe(fmt.Sprintf("run %s: applied %d, dead-lettered %d, pending %d", st.ID, st.Applied, st.Dead, st.Pending))
		return v.bar.Set64(st.Settled())
	case "plain":
		now := time.Now()
		if !st.Finished() && now.Sub(v.lastLine) < v.lineEvery {
			return nil
		}
		v.lastLine = now
		_, err := fmt.Fprintln(v.w, v.line(st))
		return err
	}
	_, err := fmt.Fprintln(v.w, strings.Join(v.text(st), "\n"))
	return err
}

// finish writes the run's summary once it ended (after a bar or lines) and returns what the
// run's end means for the exit status: nil when every line was applied, an exitError of 3
// naming the dead letters otherwise.
func (v *runView) finish(st queue.RunStatus) error {
	if v.bar != nil {
		_ = v.bar.Finish()
		fmt.Fprintln(v.w)
	}
	if v.mode == "bar" || v.mode == "plain" {
		fmt.Fprintln(v.w, strings.Join(v.text(st), "\n"))
	}
	return runResult(st)
}

// runResult maps a finished run to the exit status: 0 all applied, 3 some dead-lettered.
func runResult(st queue.RunStatus) error {
	if st.Dead > 0 {
		return &exitError{code: 3, err: fmt.Errorf("run %s: %d applied, %d dead-lettered (%s): list them with `kustomer-worker dlq list --run %s`, export them with `kustomer-worker dlq export --run %s > failed.jsonl`",
			st.ID, st.Applied, st.Dead, runClasses(st.DeadLettered), st.ID, st.ID)}
	}
	return nil
}

// follow reads run id's status every interval and shows it until the run ends or ctx does;
// it returns the last reading. A reading that fails is tried again at the next interval, up
// to a minute of failures in a row (a broker restart, a failover).
func follow(ctx context.Context, js jetstream.JetStream, top queue.Topology, id string, v *runView, interval time.Duration) (queue.RunStatus, error) {
	r := &queue.RunReader{Log: &queue.RunLog{JS: js, Topology: top}, ID: id}
	var (
		last    queue.RunStatus
		failing time.Time
	)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
		st, err := r.Read(rctx)
		cancel()
		switch {
		case err == nil:
			failing, last = time.Time{}, st
			if err := v.show(st); err != nil {
				return st, err
			}
			if st.Finished() {
				return st, nil
			}
		case errors.Is(err, queue.ErrNoRun):
			return st, err
		case ctx.Err() != nil:
			return last, context.Cause(ctx)
		default:
			if failing.IsZero() {
				failing = time.Now()
			}
			if time.Since(failing) > time.Minute {
				return last, err
			}
		}
		select {
		case <-ctx.Done():
			return last, context.Cause(ctx)
		case <-t.C:
		}
	}
}

// runMode is how a run is shown on w: json, bar on a terminal, plain lines otherwise.
func runMode(w io.Writer, json bool, progress string) string {
	switch {
	case json:
		return "json"
	case progress == "bar" || progress == "plain":
		return progress
	case isTerminal(w):
		return "bar"
	}
	return "plain"
}
