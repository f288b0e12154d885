package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows how far a long job is on stderr: a bar with rate and time left on a
// terminal, otherwise a plain line every few seconds.
type progress struct {
	w     io.Writer
	label string
	total int64
	bar   *progressbar.ProgressBar // nil for plain lines
	off   bool
	every time.Duration
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, mode, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, every: 5 * time.Second, start: time.Now()}
	p.last = p.start
	if mode == "auto" {
		mode = "plain"
		if isTerminal(w) {
			mode = "bar"
		}
	}
	switch mode {
	case "none":
		p.off = true
	case "bar":
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("msg"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionFullWidth(),
		)
	}
	return p
}

// update shows done of total, with extra text after the count.
func (p *progress) update(done int64, extra string) {
	switch {
	case p.off:
	case p.bar != nil:
		if extra != "" {
			p.bar.Describe(p.label + " " + extra)
		}
		_ = p.bar.Set64(done)
	default:
		now := time.Now()
		if now.Sub(p.last) < p.every {
			return
		}
		p.last = now
		fmt.Fprintln(p.w, p.line(done, extra, now))
	}
}

func (p *progress) line(done int64, extra string, now time.Time) string {
	secs := now.Sub(p.start).Seconds()
	rate := float64(done) / max(secs, 1e-3)
	s := fmt.Sprintf("%s: %d/%d", p.label, done, p.total)
	if p.total > 0 {
		s += fmt.Sprintf(" (%d%%)", done*100/p.total)
	}
	s += fmt.Sprintf(", %.0f/s", rate)
	if rate > 0 && done < p.total {
		s += fmt.Sprintf(", about %s left", time.Duration(float64(p.total-done)/rate*float64(time.Second)).Round(time.Second))
	}
	if extra != "" {
		s += ", " + extra
	}
	return s
}

// finish shows the final count and ends the bar's line.
func (p *progress) finish(done int64) {
	switch {
	case p.off:
	case p.bar != nil:
		_ = p.bar.Set64(done)
		fmt.Fprintln(p.w)
	}
}

// showProgress updates p from get until the returned stop is called, which returns once the
// updating goroutine has ended.
func showProgress(p *progress, get func() (int64, string)) (stop func()) {
	if p.off {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n, extra := get()
				p.update(n, extra)
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}
