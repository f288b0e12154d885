package pacer

import (
	"testing"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"
)

func TestMain(m *testing.M) {
	leaktest.VerifyTestMain(m)
}
