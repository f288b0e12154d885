package bench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

var (
	delayUpdatesFlag = flag.Int("bench.delay-updates", 3000, "updates per repetition of BenchmarkNATSDelay (-short: 200)")
	delayFlag        = flag.Duration("bench.nats-delay", 100*time.Millisecond, "BenchmarkNATSDelay: delay added each way to the pool's NATS connection")
	kustomerRTTFlag  = flag.Duration("bench.kustomer-latency", 100*time.Millisecond, "BenchmarkNATSDelay: the fake's latency on every answer")
	windowMultFlag   = flag.Float64("bench.consumer-window", 1, "BenchmarkNATSDelay: the consumers' MaxAckPending as a multiple of the pool's (1: as run sets it)")
	delayHeldFlag    = flag.Int("bench.delay-max-ack-pending", 0, "BenchmarkNATSDelay: --max-ack-pending (0: its default, 8 × concurrency, at least 128)")
)

// BenchmarkNATSDelay measures what a slow network to NATS costs the daemon's pool (built by
// worker.NewPool, as `kustomer-worker run` builds it) at --concurrency 32: each repetition drains
// the same backlog once over a direct connection and once through a TCP proxy that delays every
// byte by -bench.nats-delay (100 ms) each way, so that every NATS round trip takes 200 ms more,
// in alternating order. The fake Kustomer answers every request after -bench.kustomer-latency
// (100 ms), a realistic API latency, so that the pool has requests to overlap with its NATS
// round trips. Cells: 1 or 4 updates per conversation (4: each conversation's next update waits
// for the previous one's acknowledgement to be seen, through the acknowledgement floor).
// Reported, medians: updates/s direct and delayed, and the ratio delayed/direct (target: 0.8
// or better), timed from the first tenth applied (steady) and from the pool's start
// (with_startup: the start-up's reads of NATS, each a slow round trip, count too).
// -bench.consumer-window sets the consumers' MaxAckPending apart from the pool's (run sets
// both to --max-ack-pending), to show what the server's window costs over a slow link.
func BenchmarkNATSDelay(b *testing.B) {
	n := pick("bench.delay-updates", delayUpdatesFlag, 200)
	const c = 32
	for _, perConv := range []int{1, 4} {
		b.Run(fmt.Sprintf("per-conversation=%d/concurrency=%d", perConv, c), func(b *testing.B) {
			r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true, Latency: *kustomerRTTFlag}, c)
			if *delayHeldFlag > 0 {
				r.wc.MaxAckPending = *delayHeldFlag
			}
			r.top.MaxAckPending = int(*windowMultFlag * float64(r.wc.MaxAckPending))
			if perConv > 1 {
				r.convs = max(n/perConv, 1)
			}
			proxy := startDelayProxy(b, r.url, *delayFlag)
			_, direct := r.countedConn(&roundTrips{byKind: make(map[string]int)})
			rt := &roundTrips{byKind: make(map[string]int)}
			_, delayed := r.connect(proxy, rt)
			var directRuns, delayedRuns, ratio, directAll, delayedAll, ratioAll []float64
			for i := range repetitions(b) {
				var dd, ds steadyDrain
				for k := range 2 {
					if (k+i)%2 == 0 {
						dd = r.drainSteady(n, nil, func() func() { return r.startDaemon(direct, 0, nil) })
					} else {
						ds = r.drainSteady(n, rt, func() func() { return r.startDaemon(delayed, 0, nil) })
					}
				}
				b.Logf("repetition %d: direct %.0f updates/s (%.0f with start-up), NATS delayed %s each way %.0f updates/s (%.0f with start-up; start-up %s): %.2f; delayed round trips per update %.3f (%s)",
					i+1, dd.steady(), dd.perSecond(), *delayFlag, ds.steady(), ds.perSecond(), ds.startup.Round(time.Millisecond),
					ds.steady()/dd.steady(), ds.roundTripsPerUpdate(), perUpdate(ds.trips, ds.n))
				directRuns = append(directRuns, dd.steady())
				delayedRuns = append(delayedRuns, ds.steady())
				ratio = append(ratio, ds.steady()/dd.steady())
				directAll = append(directAll, dd.perSecond())
				delayedAll = append(delayedAll, ds.perSecond())
				ratioAll = append(ratioAll, ds.perSecond()/dd.perSecond())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(directRuns), "direct_updates/s")
			b.ReportMetric(median(delayedRuns), "delayed_updates/s")
			b.ReportMetric(median(ratio), "ratio_delayed_vs_direct")
			b.ReportMetric(median(directAll), "direct_with_startup_updates/s")
			b.ReportMetric(median(delayedAll), "delayed_with_startup_updates/s")
			b.ReportMetric(median(ratioAll), "ratio_with_startup")
		})
	}
}

// steadyDrain is a drain timed also from the first tenth of the updates applied, once the
// pool has started (its start-up reads NATS a few times, each a round trip).
type steadyDrain struct {
	drain
	startup time.Duration // from the start to the first update applied
	rest    time.Duration // from the first tenth applied to the end
	restN   int           // updates applied in rest
}

func (d steadyDrain) steady() float64 { return float64(d.restN) / d.rest.Seconds() }

// drainSteady is drainWith, also timing the start-up and the drain after its first tenth.
func (r *rig) drainSteady(n int, rt *roundTrips, start func() (stop func())) steadyDrain {
	r.tb.Helper()
	var sd steadyDrain
	var t0, t1 time.Time
	sd.drain = r.drainWith(n, rt, func() func() {
		base := r.fake.Stats().Applied
		t0 = time.Now()
		stop := start()
		if !testwait.WithinEvery(10*time.Minute, time.Millisecond, func() bool { return r.fake.Stats().Applied > base }) {
			r.tb.Fatal("no update applied within 10 minutes")
		}
		sd.startup = time.Since(t0)
		tenth := max(n/10, 1)
		if !testwait.WithinEvery(10*time.Minute, time.Millisecond, func() bool { return r.fake.Stats().Applied >= base+tenth }) {
			r.tb.Fatal("a tenth of the updates not applied within 10 minutes")
		}
		t1 = time.Now()
		sd.restN = n - tenth
		return stop
	})
	sd.rest = sd.elapsed - t1.Sub(t0) // drainWith's clock starts just before start
	return sd
}

// connect opens a connection of its own to the NATS server at u, whose requests rt counts.
func (r *rig) connect(u string, rt *roundTrips) (*nats.Conn, jetstream.JetStream) {
	r.tb.Helper()
	nc, err := nats.Connect(u, nats.MaxReconnects(-1), nats.SetCustomDialer(rt))
	if err != nil {
		r.tb.Fatal(err)
	}
	r.tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		r.tb.Fatal(err)
	}
	return nc, js
}

// startDelayProxy listens on loopback and forwards every connection to the NATS server at
// target, delaying every byte by delay in each direction (bytes keep their order, and a
// connection's throughput is not limited: only its latency grows). It returns the proxy's
// URL; everything stops when tb ends.
func startDelayProxy(tb testing.TB, target string, delay time.Duration) string {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", u.Host)
			if err != nil {
				in.Close()
				continue
			}
			track(in)
			track(out)
			wg.Go(func() { delayedCopy(out, in, delay) })
			wg.Go(func() { delayedCopy(in, out, delay) })
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "nats://" + ln.Addr().String()
}

// delayedCopy copies src to dst, each chunk written delay after it was read, until src ends;
// then it closes dst.
func delayedCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	chunks := make(chan chunk, 4096)
	var w sync.WaitGroup
	w.Go(func() {
		defer dst.Close()
		t := time.NewTimer(0)
		defer t.Stop()
		for c := range chunks {
			if d := time.Until(c.at); d > 0 {
				t.Reset(d)
				<-t.C
			}
			if _, err := dst.Write(c.b); err != nil {
				for range chunks { // drain: the reader ends when src is closed
				}
				return
			}
		}
	})
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			chunks <- chunk{b: buf[:n], at: time.Now().Add(delay)}
		}
		if err != nil {
			break
		}
	}
	close(chunks)
	w.Wait()
}

// BenchmarkNATSDelaySetUp measures what `kustomer-worker run` does with NATS before its pool
// starts and BenchmarkNATSDelay leaves out: queue.Ensure (manage-streams, the default) and
// queue.BindLanes, on streams that exist already (a restart), over the same proxy as
// BenchmarkNATSDelay (-bench.nats-delay each way) and over a direct connection, alternating.
// Reported, medians of -bench.reps: milliseconds of each, and the round trips the delay adds
// ((delayed - direct) / (2 × delay)).
func BenchmarkNATSDelaySetUp(b *testing.B) {
	r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true}, 32)
	proxy := startDelayProxy(b, r.url, *delayFlag)
	_, direct := r.connect(r.url, &roundTrips{byKind: make(map[string]int)})
	_, delayed := r.connect(proxy, &roundTrips{byKind: make(map[string]int)})
	setUp := func(js jetstream.JetStream) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		t0 := time.Now()
		if err := queue.Ensure(ctx, js, r.top); err != nil {
			b.Fatal(err)
		}
		if _, _, err := queue.BindLanes(ctx, js, r.top); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var directMs, delayedMs []float64
	for i := range repetitions(b) {
		var dd, ds time.Duration
		for k := range 2 {
			if (k+i)%2 == 0 {
				dd = setUp(direct)
			} else {
				ds = setUp(delayed)
			}
		}
		b.Logf("repetition %d: Ensure and BindLanes direct %s, NATS delayed %s each way %s", i+1,
			dd.Round(time.Millisecond), *delayFlag, ds.Round(time.Millisecond))
		directMs = append(directMs, float64(dd.Microseconds())/1000)
		delayedMs = append(delayedMs, float64(ds.Microseconds())/1000)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(directMs), "direct_ms")
	b.ReportMetric(median(delayedMs), "delayed_ms")
	b.ReportMetric((median(delayedMs)-median(directMs))/float64(2*delayFlag.Milliseconds()), "round_trips_added")
}
