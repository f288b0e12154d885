package bench

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a benchmark leaves a goroutine behind: every pool, baseline,
// client and server it starts must have stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
