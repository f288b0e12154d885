package queue

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// connState is what the handlers of one connection learned about its current outage.
type connState struct {
	mu    sync.Mutex
	since time.Time // when the connection was lost; zero while connected
	cause error     // the disconnect's error, then the last failed reconnect's
}

// states holds the connState of every open connection made by Connect or ConnectWait, by
// connection: nats.go's handlers get the connection, not a value of ours.
var states sync.Map // *nats.Conn -> *connState

func stateOf(nc *nats.Conn) *connState {
	s, _ := states.LoadOrStore(nc, &connState{})
	return s.(*connState)
}

// lost records that nc was lost, with the disconnect's error; it returns false if nc was
// already lost.
func (s *connState) lost(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := s.since.IsZero()
	if first {
		s.since = time.Now()
	}
	if err != nil {
		s.cause = err
	}
	return first
}

// failed records why an attempt to reconnect failed.
func (s *connState) failed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() {
		s.since = time.Now()
	}
	s.cause = err
}

// back records the reconnect and returns how long the connection was lost.
func (s *connState) back() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	if !s.since.IsZero() {
		d = time.Since(s.since)
	}
	s.since, s.cause = time.Time{}, nil
	return d
}

// Outage says whether nc, made by Connect or ConnectWait, is lost and reconnecting: since
// when, and the cause (the error of the last failed attempt to reconnect, else the
// disconnect's), classified as a *ConnectError like ConnectWait's; since is zero while nc is
// connected or closed.
func Outage(nc *nats.Conn) (since time.Time, cause error) {
	v, ok := states.Load(nc)
	if !ok || nc.IsConnected() || nc.IsClosed() {
		return time.Time{}, nil
	}
	s := v.(*connState)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() {
		return time.Time{}, nil
	}
	if s.cause != nil {
		cause = classify(nc.Opts.Url, s.cause)
	}
	return s.since, cause
}
