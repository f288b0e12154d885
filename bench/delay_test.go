package bench

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

var (
	delayUpdatesFlag = flag.Int("bench.delay-updates", 3000, "updates per repetition of BenchmarkNATSDelay (-short: 200)")
	delayFlag        = flag.Duration("bench.nats-delay", 100*time.Millisecond, "BenchmarkNATSDelay: delay added each way to the pool's NATS connection")
	kustomerRTTFlag  = flag.Duration("bench.kustomer-latency", 100*time.Millisecond, "BenchmarkNATSDelay: the fake's latency on every answer")
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
// or better).
func BenchmarkNATSDelay(b *testing.B) {
	n := pick("bench.delay-updates", delayUpdatesFlag, 200)
	const c = 32
	for _, perConv := range []int{1, 4} {
		b.Run(fmt.Sprintf("per-conversation=%d/concurrency=%d", perConv, c), func(b *testing.B) {
			r := newRig(b, kustomertest.Config{Budget: -1, DisableLog: true, Latency: *kustomerRTTFlag}, c)
			if perConv > 1 {
				r.convs = max(n/perConv, 1)
			}
			proxy := startDelayProxy(b, r.url, *delayFlag)
			_, direct := r.countedConn(&roundTrips{byKind: make(map[string]int)})
			_, delayed := r.connect(proxy)
			var directRuns, delayedRuns, ratio []float64
			for i := range repetitions(b) {
				var dd, ds drain
				for k := range 2 {
					if (k+i)%2 == 0 {
						dd = r.drainWith(n, nil, func() func() { return r.startDaemon(direct, 0, nil) })
					} else {
						ds = r.drainWith(n, nil, func() func() { return r.startDaemon(delayed, 0, nil) })
					}
				}
				b.Logf("repetition %d: direct %.0f updates/s, NATS delayed %s each way %.0f updates/s (%.2f)",
					i+1, dd.perSecond(), *delayFlag, ds.perSecond(), ds.perSecond()/dd.perSecond())
				directRuns = append(directRuns, dd.perSecond())
				delayedRuns = append(delayedRuns, ds.perSecond())
				ratio = append(ratio, ds.perSecond()/dd.perSecond())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(directRuns), "direct_updates/s")
			b.ReportMetric(median(delayedRuns), "delayed_updates/s")
			b.ReportMetric(median(ratio), "ratio_delayed_vs_direct")
		})
	}
}

// connect opens a connection of its own to the NATS server at u.
func (r *rig) connect(u string) (*nats.Conn, jetstream.JetStream) {
	r.tb.Helper()
	nc, err := nats.Connect(u, nats.MaxReconnects(-1))
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
