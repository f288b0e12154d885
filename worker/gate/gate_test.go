package gate

import (
	"context"
	"testing"
	"time"
)

func testGate(now *time.Time) (g *Gate, closes, opens *int) {
	closes, opens = new(int), new(int)
	g = New(ProbeMin, ProbeMax, func() { *closes++ }, func() { *opens++ })
	g.now = func() time.Time { return *now }
	return g, closes, opens
}

// acquire takes a ticket if the gate lets the caller through within a moment.
func acquire(g *Gate) *Ticket {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	tk, err := g.Acquire(ctx)
	if err != nil {
		return nil
	}
	return tk
}

func pass(g *Gate, v Verdict) {
	tk := acquire(g)
	tk.Report(v)
	tk.Done()
}

func TestGate(t *testing.T) {
	t.Parallel()
	t.Run("an open gate lets everyone through without probes", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		g, _, _ := testGate(&now)
		for range 3 {
			if tk := acquire(g); tk == nil || tk.probe {
				t.Fatalf("Acquire on an open gate = %+v; want a plain ticket", tk)
			}
		}
	})

	t.Run("a refused key closes it once and lets one probe through after the delay", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		g, closes, _ := testGate(&now)
		a, b := acquire(g), acquire(g) // two requests in flight when the key is refused
		a.Report(Refused)
		a.Done()
		b.Report(Refused)
		b.Done()
		if *closes != 1 {
			t.Errorf("closed %d times; want one log line for the refusal", *closes)
		}
		if acquire(g) != nil {
			t.Fatal("a caller got through before the probe delay")
		}
		now = now.Add(time.Hour)
		probe := acquire(g)
		if probe == nil || !probe.probe {
			t.Fatalf("Acquire after the delay = %+v; want the probe", probe)
		}
		if acquire(g) != nil {
			t.Error("a second caller got through while the probe was out")
		}
	})

	t.Run("a probe that learned nothing is given back, so the gate never freezes", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		g, _, _ := testGate(&now)
		pass(g, Refused)
		now = now.Add(time.Hour)
		probe := acquire(g)
		probe.Done() // e.g. the message turned out invalid, or shutdown: no verdict
		if tk := acquire(g); tk == nil || !tk.probe {
			t.Fatalf("after a probe without verdict, Acquire = %+v; want the next probe", tk)
		}
	})

	t.Run("a failed probe doubles the wait, up to the cap", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		g, _, _ := testGate(&now)
		pass(g, Refused)
		want := ProbeMin
		for range 8 {
			now = now.Add(want - time.Millisecond)
			if acquire(g) != nil {
				t.Fatalf("probe allowed before %s", want)
			}
			now = now.Add(time.Millisecond)
			pass(g, NoAnswer)
			want = min(2*want, ProbeMax)
		}
		if closed, _ := g.Closed(); !closed {
			t.Error("gate opened after probes without an answer")
		}
	})

	t.Run("a working answer opens it, once", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		g, _, opens := testGate(&now)
		late := acquire(g) // sent before the refusal, answered after it
		pass(g, Refused)
		late.Report(Works)
		late.Done()
		if closed, _ := g.Closed(); closed || *opens != 1 {
			t.Fatalf("closed %v after a working answer, opened %d times; want open, once", closed, *opens)
		}
		pass(g, Works)
		if *opens != 1 {
			t.Errorf("opened %d times; want 1", *opens)
		}
	})
}
