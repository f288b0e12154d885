package pacer

import (
	"fmt"
	"testing"
	"time"
)

// TestPacerAboveTheBudget runs a pacer whose ceiling (--rate-per-minute) is above what the
// org's budget allows, as when an operator gives the plan's figure and the org has less or
// shares it, alone on a small budget: 40 a 10 s window, a turn every 250 ms at its pace. At
// every reading of the reset and every kind of window it must keep to the budget the
// headers report: at most 0.5 % of its requests refused, and all of each window used but
// the one unit it keeps for the requests in flight. Before the pacer kept its turns a
// learnGap apart around a learned end, it lost that end at every other window, spent the
// next by the earliest end its reset allows, and every probe after that met a 429: 2.7-17.8
// % of its requests refused.
func TestPacerAboveTheBudget(t *testing.T) {
	for _, times := range []float64{1.25, 2.5, 10} {
		for _, reset := range []resetReading{epochUp, epochDown, deltaUp, deltaDown} {
			for _, kind := range []string{"wall-clock windows", "windows from a fixed instant", "windows from the first request"} {
				name := fmt.Sprintf("ceiling %.2f times the budget, %s, %s", times, reset, kind)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					c := simConfig{org: orgWindow{budget: 40, length: 10 * time.Second, reset: reset},
						perMinute: int(times * 40 * 6), callers: 16, latency: 20 * time.Millisecond, jitter: 40 * time.Millisecond, windows: 10}
					switch kind {
					case "wall-clock windows":
						c.wallClock = true
					case "windows from a fixed instant":
						c.originLead = 3300 * time.Millisecond
					}
					got := figures(simulate(t, t0, c), c)
					if got.refusedMine > 0.005 {
						t.Errorf("%.2f %% of the pacer's requests refused; want at most 0.5 %%", 100*got.refusedMine)
					}
					if want := float64(c.org.budget-1) / float64(c.org.budget); got.minUse < want {
						t.Errorf("window %d used %.1f %% of the budget; want at least %.1f %%", got.worst+1, 100*got.minUse, 100*want)
					}
				})
			}
		}
	}
}
