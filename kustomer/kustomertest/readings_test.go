package kustomertest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// onClock is the end of the window that holds t: windows of 60 s on the wall clock, shifted
// by half a second so that the end falls between whole seconds.
func onClock(t time.Time) time.Time {
	return t.Add(-500 * time.Millisecond).Truncate(time.Minute).Add(time.Minute + 500*time.Millisecond)
}

func TestRateHeaderReadings(t *testing.T) {
	t.Parallel()
	clock := kustomertest.Config{Budget: 5, WindowStart: kustomertest.WindowOnClock, WindowOffset: 500 * time.Millisecond}
	// One request; its reset must be want(end, answered) for the window end as of just
	// before or just after it (a minute may turn in between).
	check := func(t *testing.T, cfg kustomertest.Config, want func(end, now time.Time) int64) {
		t.Helper()
		f := setup(t, cfg)
		before := time.Now()
		a := f.put(id(1), `{}`)
		after := time.Now()
		mustStatus(t, a, http.StatusOK)
		got := int64(a.int(t, "X-Ratelimit-Reset"))
		if got != want(onClock(before), before) && got != want(onClock(after), after) && got != want(onClock(before), after) {
			t.Errorf("x-ratelimit-reset %d; want %d (window end %v)", got, want(onClock(after), after), onClock(after))
		}
	}
	t.Run("epoch seconds rounded up by default", func(t *testing.T) {
		t.Parallel()
		check(t, clock, func(end, _ time.Time) int64 { return end.Unix() + 1 })
	})
	t.Run("epoch seconds rounded down", func(t *testing.T) {
		t.Parallel()
		cfg := clock
		cfg.ResetRoundDown = true
		check(t, cfg, func(end, _ time.Time) int64 { return end.Unix() })
	})
	t.Run("seconds from now rounded down", func(t *testing.T) {
		t.Parallel()
		cfg := clock
		cfg.ResetDelta, cfg.ResetRoundDown = true, true
		check(t, cfg, func(end, now time.Time) int64 { return int64(end.Sub(now) / time.Second) })
	})

	t.Run("the reset left out, the limit and what is left sent", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 5, ResetAbsent: true})
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusOK)
		if a.header.Get("X-Ratelimit-Reset") != "" || a.int(t, "X-Ratelimit-Limit") != 5 || a.int(t, "X-Ratelimit-Remaining") != 4 {
			t.Errorf("headers %v; want limit 5 and remaining 4, no reset", a.header)
		}
	})

	t.Run("no rate-limit headers, and the budget still holds", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 1, RateHeadersAbsent: true, RetryAfter: true})
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusTooManyRequests)
		for _, h := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
			if a.header.Get(h) != "" {
				t.Errorf("%s sent: %q", h, a.header.Get(h))
			}
		}
		if a.header.Get("Retry-After") == "" {
			t.Error("no Retry-After on a 429 with Config.RetryAfter")
		}
	})
}

func TestOtherClientsSpendTheBudget(t *testing.T) {
	t.Parallel()
	// A client spending 80 % evenly from the start: by the time the first request of the
	// test comes, it has spent at least one unit.
	f := setup(t, kustomertest.Config{Budget: 1000, Window: time.Second, Others: []kustomertest.OtherClient{{Share: 0.8}}})
	eventually(t, "the other client spends", func() bool { return f.srv.Stats().Others.Requests > 0 })
	a := f.put(id(1), `{}`)
	mustStatus(t, a, http.StatusOK)
	st := f.srv.Stats()
	if rem := a.int(t, "X-Ratelimit-Remaining"); rem > 998 {
		t.Errorf("remaining %d after the other client's requests and one of ours; want at most 998", rem)
	}
	if st.Others.Requests == 0 || st.Requests != 1 || st.Units != 1 {
		t.Errorf("stats %+v; want the other client's requests apart from the one request of ours", st)
	}
}

func TestBudgetConfigValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		cfg   kustomertest.Config
		field string
	}{
		{"an offset as long as the window", kustomertest.Config{Window: time.Second, WindowOffset: time.Second}, "WindowOffset"},
		{"an unknown window start", kustomertest.Config{WindowStart: 7}, "WindowStart"},
		{"a share above 1", kustomertest.Config{Others: []kustomertest.OtherClient{{Share: 1.5}}}, "Others[0].Share"},
		{"a stop before the start", kustomertest.Config{Others: []kustomertest.OtherClient{{Share: 0.1, Start: 2 * time.Second, Stop: time.Second}}}, "Others[0].Stop"},
		{"an unknown pattern", kustomertest.Config{Others: []kustomertest.OtherClient{{Share: 0.1, Pattern: 9}}}, "Others[0].Pattern"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "Config."+tc.field+":") {
			t.Errorf("%s: Validate() = %v; want an error naming Config.%s", tc.name, err, tc.field)
		}
	}
}

func TestNestedObjectReadings(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		merge bool
		want  map[string]any
	}{
		{"an object replaces the one stored by default", false, map[string]any{"b": float64(2)}},
		{"MergeNested merges it key by key", true, map[string]any{"a": float64(1), "b": float64(2)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, kustomertest.Config{MergeNested: c.merge})
			mustStatus(t, f.put(id(1), `{"custom":{"a":1},"tags":["x","y"]}`), http.StatusOK)
			mustStatus(t, f.put(id(1), `{"custom":{"b":2},"tags":["z"]}`), http.StatusOK)
			conv, _ := f.srv.Conversation(id(1))
			got, _ := conv.Attributes["custom"].(map[string]any)
			if len(got) != len(c.want) || got["a"] != c.want["a"] || got["b"] != c.want["b"] {
				t.Errorf("custom = %v; want %v", got, c.want)
			}
			if tags, _ := conv.Attributes["tags"].([]any); len(tags) != 1 || tags[0] != "z" {
				t.Errorf("tags = %v; want [z]: arrays are replaced whole under either reading", conv.Attributes["tags"])
			}
		})
	}
}

func TestWindowsCountWhereTheBudgetWent(t *testing.T) {
	t.Parallel()
	// Windows of 200 ms fixed to the fake's start; a client spending 50 % from the start.
	f := setup(t, kustomertest.Config{Budget: 4, Window: 200 * time.Millisecond, WindowStart: kustomertest.WindowFromStart,
		Others: []kustomertest.OtherClient{{Share: 0.5}}})
	eventually(t, "the other client spends", func() bool { return f.srv.Stats().Others.Requests > 0 })
	codes := make([]int, 4)
	for i := range codes {
		codes[i] = f.put(id(i+1), `{}`).status
	}
	before := f.srv.Stats().Others.Requests
	ws := f.srv.Windows()
	after := f.srv.Stats().Others.Requests // the other client goes on meanwhile
	if len(ws) == 0 {
		t.Fatal("no window logged")
	}
	var units, refused, others int
	for i, w := range ws {
		if w.End.Sub(w.Start) != 200*time.Millisecond || (i > 0 && w.Start.Before(ws[i-1].End)) {
			t.Errorf("window %d: %v to %v; want 200 ms, after the one before", i, w.Start, w.End)
		}
		units, refused, others = units+w.Units, refused+w.Refused, others+w.Others+w.OthersRefused
	}
	var ok, tooMany int
	for _, c := range codes {
		switch c {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			tooMany++
		}
	}
	if units != ok || refused != tooMany || others < before || others > after {
		t.Errorf("windows count %d units, %d refused, %d of the other client's; want %d, %d, %d to %d", units, refused, others, ok, tooMany, before, after)
	}
}
