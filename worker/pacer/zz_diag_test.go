package pacer

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestZZDiagDeployments(t *testing.T) {
	for _, reset := range []resetReading{epochUp, epochDown, deltaUp, deltaDown} {
		for _, fixed := range []bool{false, true} {
			for _, other := range []float64{0, 12} {
				c := simConfig{
					org:       orgWindow{budget: 200, length: 5 * time.Second, reset: reset},
					perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
					other: other, otherLead: 3 * time.Second, windows: 10,
				}
				if fixed {
					c.originLead = 2370 * time.Millisecond
				}
				run := simulateSides(t, t0, c, 2)
				var b strings.Builder
				worstU, worstR, worstO := 2.0, 0.0, 0.0
				for w := 1; w < len(run.mine)-1; w++ {
					got := run.theirs[w] - run.refusedTheirs[w]
					used := float64(run.mine[w]-run.refusedMine[w]) / float64(200-got)
					rm := float64(run.refusedMine[w]) / float64(max(run.mine[w], 1))
					ro := float64(run.refusedTheirs[w]) / float64(max(run.theirs[w], 1))
					fmt.Fprintf(&b, " w%d:%.0f/%.1f/%.1f(%d,%d)", w+1, 100*used, 100*rm, 100*ro, run.sides[0][w], run.sides[1][w])
					worstU = min(worstU, used)
					worstR = max(worstR, rm)
					worstO = max(worstO, ro)
				}
				t.Logf("%-32v fixed=%-5v other=%-2v worst %.1f/%.1f/%.1f |%s", reset, fixed, other, 100*worstU, 100*worstR, 100*worstO, b.String())
			}
		}
	}
}

func TestZZTrace(t *testing.T) {
	c := simConfig{
		org:       orgWindow{budget: 200, length: 5 * time.Second, reset: epochDown},
		perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
		other: 0, otherLead: 3 * time.Second, windows: 5, originLead: 2370 * time.Millisecond,
	}
	start := t0
	org := c.org
	org.origin = start.Add(-c.originLead)
	s := &simulation{cfg: c, org: &org, other: newOther(start, c), run: simRun{otherStarted: -1, otherStopped: -1}}
	for k := range 2 {
		s.sides = append(s.sides, &side{r: newPacerRig(t, c.perMinute, start.Add(time.Duration(k)*1370*time.Millisecond))})
	}
	end := start.Add(time.Duration(c.windows) * org.length)
	for now := start; now.Before(end); now = now.Add(time.Millisecond) {
		s.step(now)
		if now.Sub(start)%(100*time.Millisecond) == 0 {
			var b strings.Builder
			for i, sd := range s.sides {
				p := sd.r.p
				p.mu.Lock()
				fmt.Fprintf(&b, " |%d rate=%.1f low=%d lrn=%v end=%v probe=%v pause=%v for=%.1f tk=%v tl=%.0f wth=%.0f sent=%d", i, float64(p.lim.Limit()), p.win.lowest, p.learned,
					p.end().Sub(start).Seconds(), p.probing, p.pausedUntil.Sub(start).Seconds(), p.foreign, p.theirsKnown, p.theirsLast, p.win.theirs, len(sd.r.got))
				p.mu.Unlock()
			}
			t.Logf("t=%.1f w=%d used=%d%s", now.Sub(start).Seconds(), org.begun, org.used, b.String())
		}
	}
}

func TestZZCell(t *testing.T) {
	sizes := make([]int, len(matrixDimensions))
	for d, dim := range matrixDimensions {
		sizes[d] = len(dim.values)
	}
	want := os.Getenv("ZZCELL")
	for _, idx := range pairwise(sizes) {
		name, c := matrixCell(idx)
		if !strings.Contains(name, want) {
			continue
		}
		run := simulate(t, t0, c)
		var b strings.Builder
		for w := range run.mine {
			got := run.theirs[w] - run.refusedTheirs[w]
			fmt.Fprintf(&b, " w%d:%.1f%%(%d,%d/%d,%d/%d)", w+1, 100*float64(run.mine[w]-run.refusedMine[w])/float64(c.org.budget-got), run.mine[w], run.refusedMine[w], run.theirs[w], run.refusedTheirs[w], run.otherStarted)
		}
		t.Logf("%s:%s", name, b.String())
	}
}

func TestZZCellTrace(t *testing.T) {
	sizes := make([]int, len(matrixDimensions))
	for d, dim := range matrixDimensions {
		sizes[d] = len(dim.values)
	}
	want := os.Getenv("ZZCELL")
	from, _ := time.ParseDuration(os.Getenv("ZZFROM"))
	to, _ := time.ParseDuration(os.Getenv("ZZTO"))
	cells := pairwise(sizes)
	if want == "NB" {
		cells = [][]int{nil}
	}
	for _, idx := range cells {
		var name string
		var c simConfig
		if idx == nil {
			c = simConfig{org: orgWindow{budget: 200, length: 5 * time.Second, reset: deltaUp, retryAfter: true},
				perMinute: 2400, callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond,
				other: 12, otherLead: 3 * time.Second, originLead: 2370 * time.Millisecond, windows: 10}
		} else {
			name, c = matrixCell(idx)
		}
		if !strings.Contains(name, want) && want != "NB" {
			continue
		}
		start := t0
		org := c.org
		switch {
		case c.wallClock:
			org.origin = start.Truncate(org.length)
		case c.originLead > 0:
			org.origin = start.Add(-c.originLead)
		}
		s := &simulation{cfg: c, org: &org, other: newOther(start, c), run: simRun{otherStarted: -1, otherStopped: -1}}
		s.sides = append(s.sides, &side{r: newPacerRig(t, c.perMinute, start)})
		for now := start; now.Before(start.Add(to)); now = now.Add(time.Millisecond) {
			s.step(now)
			if now.Sub(start) >= from && now.Sub(start)%(100*time.Millisecond) == 0 {
				p := s.sides[0].r.p
				p.mu.Lock()
				left := p.lastEnd().Sub(now)
				fmt.Fprintf(os.Stderr, "t=%.1f w=%d used=%d | rate=%.1f low=%d lrn=%v end=%.2f lastEnd=%.2f probe=%v pause=%.2f for=%.1f tk=%v tg=%v tl=%.0f wth=%.0f res=%.1f sent=%d\n", now.Sub(start).Seconds(), org.begun, org.used, float64(p.lim.Limit()), p.win.lowest, p.learned,
					p.end().Sub(start).Seconds(), p.lastEnd().Sub(start).Seconds(), p.probing, p.pausedUntil.Sub(start).Seconds(), p.foreign, p.theirsKnown, p.theirsGuessed, p.theirsLast, p.win.theirs, p.reserve(left), len(s.sides[0].r.got))
				p.mu.Unlock()
			}
		}
		return
	}
}
