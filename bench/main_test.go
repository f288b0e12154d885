package bench

import (
	"testing"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"
)

// TestMain fails the run if a benchmark leaves a goroutine behind: every pool, baseline,
// client and server it starts must have stopped.
func TestMain(m *testing.M) {
	leaktest.VerifyTestMain(m)
}
