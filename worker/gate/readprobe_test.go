package gate

import (
	"slices"
	"testing"
	"time"
)

// events records a read-probed breaker's announcements.
type events struct {
	down, writes, up []string
	alone            [][]string
}

func readProbed(t *testing.T, spread int) (*Breaker, *events) {
	t.Helper()
	e := &events{}
	b := NewReadProbed(DefaultThreshold, spread, Events{
		Down:       func(cause string) { e.down = append(e.down, cause) },
		WritesDown: func(cause string) { e.writes = append(e.writes, cause) },
		Alone:      func(convs []string, _ string) { e.alone = append(e.alone, convs) },
		Up:         func(was Phase, _ time.Duration) { e.up = append(e.up, was.String()) },
	})
	return b, e
}

// update sends an update of conv through b and reports h; it returns what Observe said.
func update(t *testing.T, b *Breaker, conv string, seq uint64, last bool, h Health) (bool, time.Duration) {
	t.Helper()
	tk := acquire(b.Gate)
	if tk == nil {
		t.Fatalf("the gate stopped the update of %s", conv)
	}
	defer tk.Done()
	return b.Observe(tk, conv, seq, last, h, "503")
}

// probe takes the closed gate's probe at once (its clock moved past the wait) and says
// whether it is to be a read.
func probe(t *testing.T, b *Breaker) (*Ticket, bool) {
	t.Helper()
	b.Gate.mu.Lock()
	prev := b.Gate.now
	b.Gate.now = func() time.Time { return prev().Add(time.Hour) } // each probe an hour later
	b.Gate.mu.Unlock()
	tk := acquire(b.Gate)
	if tk == nil || !tk.Probe() {
		t.Fatal("no probe ticket from the closed gate")
	}
	return tk, b.ProbeByRead()
}

// trip fails updates of conversations a, b, c, ... until the breaker trips.
func trip(t *testing.T, b *Breaker, convs ...string) {
	t.Helper()
	for i := 0; ; i++ {
		if closed, _ := b.Gate.Closed(); closed {
			return
		}
		if i > 100 {
			t.Fatal("the breaker never tripped")
		}
		update(t, b, convs[i%len(convs)], uint64(100+i), false, Down)
	}
}

func TestReadProbedBreaker(t *testing.T) {
	t.Parallel()
	t.Run("a trip is only suspected, and a read with no answer makes it an outage", func(t *testing.T) {
		t.Parallel()
		b, e := readProbed(t, 20)
		trip(t, b, "a", "b", "c")
		if p, _ := b.Phase(); p != Suspect || len(e.down) != 0 {
			t.Fatalf("phase %v, %d outages announced; want suspect, none yet", p, len(e.down))
		}
		tk, read := probe(t, b)
		if !read {
			t.Fatal("the probe is not a read")
		}
		b.ObserveRead(tk, Down, "503")
		tk.Done()
		if p, _ := b.Phase(); p != Outage || len(e.down) != 1 {
			t.Fatalf("phase %v, %d outages announced; want outage, once", p, len(e.down))
		}
		if closed, _ := b.Gate.Closed(); !closed {
			t.Fatal("the gate opened after a read got no answer")
		}
		tk, _ = probe(t, b)
		b.ObserveRead(tk, Up, "200")
		tk.Done()
		if p, _ := b.Phase(); p != Flowing || !slices.Equal(e.up, []string{"outage"}) || len(e.alone) != 0 {
			t.Fatalf("phase %v, ups %v, alone %v; want flowing, one up after the outage, nobody alone (the outage's failures say nothing)", p, e.up, e.alone)
		}
	})
	t.Run("a read that answers makes the failing conversations alone: they spend attempts and trip nothing", func(t *testing.T) {
		t.Parallel()
		b, e := readProbed(t, 20)
		trip(t, b, "a", "b", "c")
		tk, _ := probe(t, b)
		b.ObserveRead(tk, Up, "403") // a key without the read role: Kustomer is up all the same
		tk.Done()
		if closed, _ := b.Gate.Closed(); closed || len(e.alone) != 1 || !slices.Equal(e.alone[0], []string{"a", "b", "c"}) {
			t.Fatalf("closed %v, alone %v; want open, a b c alone", closed, e.alone)
		}
		if len(e.down) != 0 || len(e.up) != 0 {
			t.Errorf("outage announced %v, up %v; want neither", e.down, e.up)
		}
		for i := range 30 {
			if outage, _ := update(t, b, []string{"a", "b", "c"}[i%3], uint64(i+1), false, Down); outage {
				t.Fatal("the failure of a conversation failing alone spent no attempt")
			}
		}
		if closed, _ := b.Gate.Closed(); closed {
			t.Fatal("conversations failing alone tripped the breaker")
		}
	})
	t.Run("a last attempt waits until no other conversation started failing for Quiet", func(t *testing.T) {
		t.Parallel()
		b, _ := readProbed(t, 20)
		trip(t, b, "a", "b", "c")
		tk, _ := probe(t, b)
		b.ObserveRead(tk, Up, "200")
		tk.Done()
		outage, hold := update(t, b, "a", 1, true, Down)
		if !outage || hold <= 0 || hold > Quiet {
			t.Fatalf("last attempt right after the read: outage %v, hold %v; want held up to %v", outage, hold, Quiet)
		}
		b.mu.Lock()
		b.grewAt = time.Now().Add(-Quiet)
		b.mu.Unlock()
		if outage, _ := update(t, b, "a", 1, true, Down); outage {
			t.Fatal("the last attempt was still held after Quiet")
		}
	})
	t.Run("a read that answers while more conversations than the spread fail: writes down", func(t *testing.T) {
		t.Parallel()
		b, e := readProbed(t, 4)
		trip(t, b, "a", "b", "c", "d", "e", "f")
		tk, _ := probe(t, b)
		b.ObserveRead(tk, Up, "200")
		tk.Done()
		if p, _ := b.Phase(); p != WritesDown || len(e.writes) != 1 {
			t.Fatalf("phase %v, writes down announced %d; want writes down, once", p, len(e.writes))
		}
		tk, read := probe(t, b)
		if !read {
			t.Fatal("writes down's first probe is not a read")
		}
		b.ObserveRead(tk, Up, "200") // reads still answer: nothing changes
		tk.Done()
		if p, _ := b.Phase(); p != WritesDown {
			t.Fatalf("phase %v after a read answered; want writes down", p)
		}
		tk, read = probe(t, b)
		if read {
			t.Fatal("writes down probes only with reads; want an update every other probe")
		}
		if outage, _ := b.Observe(tk, "g", 50, true, Down, "503"); !outage {
			t.Error("a failed update probe spent an attempt")
		}
		tk.Done()
		tk, _ = probe(t, b) // a read
		tk.Done()           // that learned nothing
		tk, _ = probe(t, b)
		b.Observe(tk, "g", 50, false, Up, "")
		tk.Done()
		if p, _ := b.Phase(); p != Flowing || !slices.Equal(e.up, []string{"writes down"}) {
			t.Fatalf("phase %v, ups %v; want flowing after an accepted update", p, e.up)
		}
		if closed, _ := b.Gate.Closed(); closed {
			t.Fatal("the gate stayed closed after an accepted update")
		}
	})
	t.Run("writes down gives back the attempts spent since the last accepted update", func(t *testing.T) {
		t.Parallel()
		b, _ := readProbed(t, 2)
		trip(t, b, "a", "b")
		tk, _ := probe(t, b)
		b.ObserveRead(tk, Up, "200")
		tk.Done()
		// a and b fail alone, spending attempts; then c and d join: the spread is out.
		update(t, b, "a", 1, false, Down)
		update(t, b, "b", 2, false, Down)
		update(t, b, "c", 3, false, Down)
		if closed, _ := b.Gate.Closed(); !closed {
			t.Fatal("the spread going over the limit did not trip the breaker")
		}
		tk, _ = probe(t, b)
		b.ObserveRead(tk, Up, "200")
		tk.Done()
		if p, _ := b.Phase(); p != WritesDown {
			t.Fatalf("phase %v; want writes down", p)
		}
		if b.Refund(1) != 1 || b.Refund(2) != 1 {
			t.Error("the attempts a and b spent were not given back")
		}
	})
}

// A trip whose close lands just after an answer to an earlier request set the phase back:
// the gate is closed while the phase says flowing. The probe then reads, as when suspect,
// instead of leaving the gate closed with nobody to open it.
func TestTripLandingAfterAnAnswer(t *testing.T) {
	t.Parallel()
	b, e := readProbed(t, 20)
	early := acquire(b.Gate) // sent before the trip, answered after it
	for i, conv := range []string{"a", "b", "c", "d"} {
		update(t, b, conv, uint64(i+1), false, Down)
	}
	last := acquire(b.Gate)
	b.Observe(last, "e", 5, false, Down, "503") // trips: reported, not done yet
	b.Observe(early, "z", 9, false, Up, "")
	early.Done()
	last.Done()
	if closed, _ := b.Gate.Closed(); !closed {
		t.Skip("the gate opened: no race to test")
	}
	tk, read := probe(t, b)
	if !read {
		t.Fatal("the probe of a gate closed while flowing is not a read")
	}
	b.ObserveRead(tk, Down, "503")
	tk.Done()
	if p, _ := b.Phase(); p != Outage || len(e.down) != 1 {
		t.Fatalf("phase %v, outages announced %d; want outage, once", p, len(e.down))
	}
}

// Writes down, then reads stop answering too: it is an outage, and the log says so.
func TestWritesDownTurnsOutage(t *testing.T) {
	t.Parallel()
	b, e := readProbed(t, 2)
	trip(t, b, "a", "b", "c", "d")
	tk, _ := probe(t, b)
	b.ObserveRead(tk, Up, "200")
	tk.Done()
	if p, _ := b.Phase(); p != WritesDown {
		t.Fatalf("phase %v; want writes down", p)
	}
	tk, read := probe(t, b)
	if !read {
		t.Fatal("no read probe in writes down")
	}
	b.ObserveRead(tk, Down, "503")
	tk.Done()
	if p, _ := b.Phase(); p != Outage || len(e.down) != 1 {
		t.Fatalf("phase %v, outages announced %d; want outage, once", p, len(e.down))
	}
}
