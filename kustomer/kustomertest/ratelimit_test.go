package kustomertest

import (
	"testing"
	"time"
)

// start is a quarter past a whole second, so that window ends fall between whole seconds.
var start = time.Date(2026, 12, 7, 12, 0, 0, 250_000_000, time.UTC)

func newTestLimiter(t *testing.T, cfg Config) *limiter {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.RandSeed = 7
	return newLimiter(cfg.withDefaults(), start)
}

func TestWindowsBegin(t *testing.T) {
	after := func(d time.Duration) time.Time { return start.Add(d) }
	for _, tc := range []struct {
		name   string
		cfg    Config
		first  time.Duration // when the first request comes, after the start
		wantAt time.Duration // where its window ends, after the start
	}{
		{"with the first request after the last ended", Config{Window: 5 * time.Second}, 1300 * time.Millisecond, 6300 * time.Millisecond},
		{"at the fake's start, whatever the requests", Config{Window: 5 * time.Second, WindowStart: WindowFromStart}, 7300 * time.Millisecond, 10 * time.Second},
		{"at the fake's start shifted by the offset", Config{Window: 5 * time.Second, WindowStart: WindowFromStart, WindowOffset: 600 * time.Millisecond}, 300 * time.Millisecond, 600 * time.Millisecond},
		{"on whole multiples of the window since the epoch", Config{Window: 5 * time.Second, WindowStart: WindowOnClock}, 7300 * time.Millisecond, 9750 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newTestLimiter(t, tc.cfg)
			st := l.take("", after(tc.first))
			if !st.reset.Equal(after(tc.wantAt)) {
				t.Errorf("window ends at %v after the start; want %v", st.reset.Sub(start), tc.wantAt)
			}
			if st := l.take("", after(tc.wantAt)); st.remaining != l.budget-1 {
				t.Errorf("remaining %d at the window's end; want a new window, %d", st.remaining, l.budget-1)
			}
		})
	}
}

// othersOver runs a limiter with the given other clients for n windows of 5 s of 200, with
// no request of its own, and returns what they sent in each window.
func othersOver(t *testing.T, n int, others ...OtherClient) (perWindow []int, l *limiter) {
	t.Helper()
	l = newTestLimiter(t, Config{Budget: 200, Window: 5 * time.Second, WindowStart: WindowFromStart, Others: others})
	sent := 0
	for w := 1; w <= n; w++ {
		st := l.othersStats(start.Add(time.Duration(w)*5*time.Second - time.Nanosecond))
		perWindow = append(perWindow, st.Requests-sent)
		sent = st.Requests
	}
	return perWindow, l
}

func TestOtherClients(t *testing.T) {
	t.Run("each spends its share of every window, whatever its pattern", func(t *testing.T) {
		for _, p := range []OtherPattern{OtherSteady, OtherFrontLoaded, OtherBursts} {
			got, _ := othersOver(t, 4, OtherClient{Share: 0.3, Pattern: p})
			for w, n := range got {
				if n < 59 || n > 61 {
					t.Errorf("pattern %d, window %d: %d requests; want 60, 30 %% of 200", p, w+1, n)
				}
			}
		}
	})

	t.Run("front-loaded, all of it in the window's first second", func(t *testing.T) {
		l := newTestLimiter(t, Config{Budget: 200, Window: 5 * time.Second, WindowStart: WindowFromStart,
			Others: []OtherClient{{Share: 0.3, Pattern: OtherFrontLoaded}}})
		if st := l.othersStats(start.Add(5*time.Second + time.Second)); st.Requests != 120 {
			t.Errorf("%d requests a second into the second window; want 120", st.Requests)
		}
	})

	t.Run("one starting and one stopping mid-run", func(t *testing.T) {
		got, _ := othersOver(t, 4, OtherClient{Share: 0.1, Start: 10 * time.Second}, OtherClient{Share: 0.2, Stop: 10 * time.Second})
		want := []int{40, 40, 20, 20}
		for w := range want {
			if got[w] < want[w]-1 || got[w] > want[w]+1 {
				t.Errorf("window %d: %d requests; want %d", w+1, got[w], want[w])
			}
		}
	})

	t.Run("their requests are refused once the budget is spent, and counted", func(t *testing.T) {
		l := newTestLimiter(t, Config{Budget: 200, Window: 5 * time.Second, WindowStart: WindowFromStart,
			Others: []OtherClient{{Share: 0.3}}})
		for range 190 {
			l.take("", start.Add(time.Millisecond))
		}
		st := l.othersStats(start.Add(5*time.Second - time.Nanosecond))
		if st.Requests != 60 || st.Refused != 50 {
			t.Errorf("others %+v; want 60 requests, 50 refused: the 10 left went to their first ones", st)
		}
		if st := l.take("", start.Add(2*time.Second)); st.verdict != orgLimited {
			t.Errorf("a request after they spent the rest: %v; want refused", st.verdict)
		}
	})
}
