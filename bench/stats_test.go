package bench

import (
	"math"
	"testing"
)

// The reported medians and percentiles come from percentile: it must pick the nearest rank.
func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100 down to 1: percentile sorts
	}
	for _, tc := range []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"p99 of 1..100 is 99", hundred, 99, 99},
		{"p50 of 1..100 is 50", hundred, 50, 50},
		{"p100 is the largest", hundred, 100, 100},
		{"p0 is the smallest", hundred, 0, 1},
		{"the median of three is the middle one", []float64{3, 1, 2}, 50, 2},
		{"the median of two is the lower one", []float64{4, 2}, 50, 2},
		{"p99 of twenty is the largest", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, 99, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(append([]float64(nil), tc.xs...), tc.p); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v; want %v", tc.xs, tc.p, got, tc.want)
			}
		})
	}
	t.Run("nothing has no median", func(t *testing.T) {
		if got := median(nil); !math.IsNaN(got) {
			t.Errorf("median(nil) = %v; want NaN", got)
		}
	})
}
