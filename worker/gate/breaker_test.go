package gate

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	t.Parallel()
	newB := func() (*Breaker, *int, *int) {
		opens, closes := new(int), new(int)
		b := NewBreaker(DefaultThreshold, func(string) { *opens++ }, func(time.Duration) { *closes++ })
		return b, opens, closes
	}
	fail := func(t *testing.T, b *Breaker, conv string, seq uint64) bool {
		t.Helper()
		tk := acquire(b.Gate)
		if tk == nil {
			t.Fatalf("the breaker's gate stopped a request before it opened")
		}
		defer tk.Done()
		outage, _ := b.Observe(tk, conv, seq, false, Down, "503")
		return outage
	}
	t.Run("trips after failures in a row across conversations, and refunds their attempts", func(t *testing.T) {
		t.Parallel()
		b, opens, _ := newB()
		if fail(t, b, "a", 1) {
			t.Error("one failure counted as an outage")
		}
		for i, conv := range []string{"b", "c", "d"} {
			if !fail(t, b, conv, uint64(2+i)) {
				t.Errorf("failure %d across conversations not suspected", i+2)
			}
		}
		if closed, _ := b.Gate.Closed(); closed {
			t.Fatal("open before the threshold")
		}
		if !fail(t, b, "e", 5) {
			t.Error("the tripping failure spent an attempt")
		}
		if closed, _ := b.Gate.Closed(); !closed || *opens != 1 {
			t.Fatalf("closed %v, opened %d times; want closed, once", closed, *opens)
		}
		if b.Refund(1) != 1 || b.Refund(1) != 0 {
			t.Error("the first failure's attempt was not refunded exactly once")
		}
		if b.Refund(2) != 0 {
			t.Error("a failure that spent nothing was refunded")
		}
	})
	t.Run("one conversation failing alone never trips it", func(t *testing.T) {
		t.Parallel()
		b, _, _ := newB()
		for i := range 20 {
			if fail(t, b, "a", uint64(i)) {
				t.Fatal("a single conversation's failures counted as an outage")
			}
		}
	})
	t.Run("an answer in between breaks the streak", func(t *testing.T) {
		t.Parallel()
		b, _, _ := newB()
		for i := range 20 {
			fail(t, b, string(rune('a'+i%3)), uint64(i))
			if i%3 == 2 {
				tk := acquire(b.Gate)
				b.Observe(tk, "z", 99, false, Up, "")
				tk.Done()
			}
		}
		if closed, _ := b.Gate.Closed(); closed {
			t.Error("tripped although Kustomer kept answering")
		}
	})
}

func TestBreakerCountsBulkRequests(t *testing.T) {
	t.Parallel()
	b := NewBreaker(DefaultThreshold, func(string) {}, func(time.Duration) {})
	for i := range DefaultThreshold {
		tk := acquire(b.Gate)
		if tk == nil {
			t.Fatal("the breaker's gate stopped a request before it opened")
		}
		b.Observe(tk, string(rune('a'+i%2)), 0, false, Down, "503") // two jobs' submits
		tk.Done()
	}
	if closed, _ := b.Gate.Closed(); !closed {
		t.Fatal("bulk requests failing across jobs did not trip the breaker")
	}
	if b.Refund(0) != 0 {
		t.Error("a bulk request's failure was refunded: it spent no attempt")
	}
}
