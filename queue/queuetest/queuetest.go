// Package queuetest runs NATS with JetStream inside a test, for tests of code built on package
// queue: an embedded server on loopback with a store of its own, and connections to it made
// the way the worker makes them. Everything it starts stops through tb.Cleanup.
//
//	srv := queuetest.StartServer(t)
//	nc, js := queuetest.Connect(t, srv.URL())
//	// declare streams with queue.Ensure(ctx, js, top), publish, run the code under test ...
//	srv.Restart(t) // the broker goes away and comes back with its messages; nc reconnects
package queuetest

import (
	"context"
	"log/slog"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// Option changes where StartServer listens or stores.
type Option func(*Server)

// WithPort makes the server listen on port instead of a free one.
func WithPort(port int) Option { return func(s *Server) { s.port = port } }

// WithStoreDir makes the server keep its JetStream store in dir instead of tb.TempDir().
func WithStoreDir(dir string) Option { return func(s *Server) { s.dir = dir } }

// Server is an embedded NATS server with JetStream on a file store, listening on 127.0.0.1.
// Its port and store stay the same across Restart, so clients reconnect to the same messages.
type Server struct {
	emb  *queue.Embedded
	port int
	dir  string
}

// StartServer starts a server on 127.0.0.1 with JetStream on and waits until it accepts
// connections; it fails tb if the server does not start or JetStream is not enabled. By
// default the port is a free one and the store is tb.TempDir(). The server shuts down when tb
// ends, after the connections made with Connect afterwards have closed.
func StartServer(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{port: -1}
	for _, o := range opts {
		o(s)
	}
	if s.dir == "" {
		s.dir = tb.TempDir()
	}
	s.start(tb)
	tb.Cleanup(func() { s.emb.Shutdown() })
	u, err := url.Parse(s.URL())
	if err != nil {
		tb.Fatal(err)
	}
	if s.port, err = strconv.Atoi(u.Port()); err != nil {
		tb.Fatalf("port of %s: %v", s.URL(), err)
	}
	return s
}

// start runs the server on s.port and s.dir; queue.StartEmbedded fails unless JetStream is on.
func (s *Server) start(tb testing.TB) {
	tb.Helper()
	emb, err := queue.StartEmbedded(queue.EmbeddedConfig{Host: "127.0.0.1", Port: s.port, DataDir: s.dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	s.emb = emb
}

// Embedded is the running server; after Restart, the new one.
func (s *Server) Embedded() *queue.Embedded { return s.emb }

// URL is the address clients connect to, such as nats://127.0.0.1:43127.
func (s *Server) URL() string { return s.emb.ClientURL() }

// Port is the client port the server listens on, the same across restarts.
func (s *Server) Port() int { return s.port }

// DataDir is the directory of the JetStream store, the same across restarts.
func (s *Server) DataDir() string { return s.dir }

// Restart shuts the server down, waits until it has stopped, and starts it again on the same
// port with the same store, as a broker restart does: stored messages and consumers survive,
// and connections made with Connect reconnect by themselves. It fails tb if the server does
// not come back, for instance because another process took the port meanwhile.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.RestartAfter(tb, 0)
}

// RestartAfter is Restart with the server down for d in between, as in a rolling upgrade.
func (s *Server) RestartAfter(tb testing.TB, d time.Duration) {
	tb.Helper()
	s.emb.Shutdown()
	time.Sleep(d)
	s.start(tb)
}

// Connect connects to url with queue.Connect, as the worker does (reconnecting forever), and
// waits up to 30s until the connection is up. The connection closes when tb ends.
func Connect(tb testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := queue.Connect(queue.ConnConfig{URL: url}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.WaitConnected(ctx, nc); err != nil {
		tb.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}

// StreamMsgs is how many messages the stream called name holds now; it fails tb if the stream
// cannot be read within 10s.
func StreamMsgs(tb testing.TB, js jetstream.JetStream, name string) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		tb.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().State.Msgs
}
