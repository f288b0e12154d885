// Package leaktest holds the goroutine-leak checks the test suites share, with the one
// goroutine of a dependency that is known to outlive its owner.
package leaktest

import (
	"testing"

	"go.uber.org/goleak"
)

// natsPublisherRace is the goroutine nats.go's jetstream starts at the first asynchronous
// publish to watch for reconnects. Closing the publisher (CleanupPublisher) sets the field the
// goroutine reads to nil; when that happens before the goroutine has read it, the goroutine
// waits on a nil channel for ever (nats.go v1.55.0, jetstream/publish.go). It holds nothing
// but its stack, one per closed publisher, so tests ignore it rather than fail at random.
const natsPublisherRace = "github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"

// Options are the goleak options every suite uses, plus extra.
func Options(extra ...goleak.Option) []goleak.Option {
	return append([]goleak.Option{goleak.IgnoreTopFunction(natsPublisherRace)}, extra...)
}

// VerifyTestMain runs the package's tests and fails the run if any goroutine is left behind.
func VerifyTestMain(m *testing.M, extra ...goleak.Option) {
	goleak.VerifyTestMain(m, Options(extra...)...)
}

// Find reports the goroutines left behind, as goleak.Find does, with Options applied.
func Find(extra ...goleak.Option) error { return goleak.Find(Options(extra...)...) }

// VerifyNone fails t if goroutines are left behind when it is called.
func VerifyNone(t testing.TB, extra ...goleak.Option) {
	t.Helper()
	goleak.VerifyNone(t, Options(extra...)...)
}
