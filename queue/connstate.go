package queue

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// connState is what the handlers of one connection learned about its current outage.
type connState struct {
	url string // the configured URL(s), for the cause's *ConnectError

	mu    sync.Mutex
	since time.Time // when the connection was lost (or first tried); zero while connected
	cause error     // the disconnect's error, then the last failed reconnect's
}

// states holds the connState of every open connection made by Connect or ConnectWait, by
// connection: nats.go's handlers get the connection, not a value of ours.
var states sync.Map // *nats.Conn -> *connState

func stateOf(nc *nats.Conn, url string) *connState {
	if s, ok := states.Load(nc); ok {
		return s.(*connState)
	}
	s, _ := states.LoadOrStore(nc, &connState{url: url})
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

// OutageCause is why nc, made by Connect or ConnectWait, is not connected while it
// reconnects: the error of its last failed attempt, else the disconnect's, classified as a
// *ConnectError like ConnectWait's; nil while nc is connected or closed, or nothing is known.
func OutageCause(nc *nats.Conn) error {
	v, ok := states.Load(nc)
	if !ok || nc.IsConnected() || nc.IsClosed() {
		return nil
	}
	s := v.(*connState)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() || s.cause == nil {
		return nil
	}
	return classify(s.url, s.cause)
}
