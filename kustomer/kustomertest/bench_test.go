package kustomertest_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// BenchmarkUpdate measures the fake's throughput over loopback with many clients, as in a
// load test of the worker: go test -bench Update -run '^$' ./kustomer/kustomertest/
func BenchmarkUpdate(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  kustomertest.Config
	}{
		{"log", kustomertest.Config{Budget: -1, DiscardBodies: true}},
		{"nolog+limits", kustomertest.Config{Budget: 1 << 30, ConversationLimit: 1 << 30, DisableLog: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := setup(b, bc.cfg)
			var n atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if a := f.put(id(int(n.Add(1)%10000)), `{"priority":3,"tags":["a","b"]}`); a.status != http.StatusOK {
						b.Errorf("HTTP %d %v", a.status, a.err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
