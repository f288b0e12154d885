package kustomertest

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Server is a fake Kustomer API. All its methods are safe for concurrent use, including
// while it serves requests.
type Server struct {
	// URL is the base URL of the fake, like "http://127.0.0.1:41234", to use in place of
	// https://api.kustomerapp.com.
	URL string

	cfg            Config
	key            atomic.Pointer[string]
	forbidden      atomic.Bool
	down           atomic.Int64 // while not 0, the status every API request answers (an outage)
	writesDown     atomic.Int64 // while not 0, the status every update and bulk submit answers
	readsDown      atomic.Int64 // while not 0, the status every read of a conversation answers
	readForbidden  atomic.Bool
	bulkReadDenied atomic.Bool
	limiter        *limiter
	store          *store
	log            *requestLog
	bulk           *bulkJobs
	handler        http.Handler

	anyMu     sync.Mutex
	anyScript []Answer

	rngMu sync.Mutex
	rng   *rand.Rand

	done      chan struct{} // closed by Close: wakes every held-back answer
	closeOnce sync.Once
	srv       *http.Server
	served    chan struct{} // closed when srv.Serve has returned
}

// NewServer starts a fake on a loopback port, like httptest.NewServer, and closes it when
// the test ends. An invalid cfg fails the test.
func NewServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := newServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("kustomertest: listen on loopback: %v", err)
	}
	s.serve(ln)
	tb.Cleanup(s.Close)
	return s
}

// Start runs a fake on addr ("127.0.0.1:0" for any free loopback port, ":8080" for every
// interface) until Close. It is for the mock command, demos and benchmarks; tests use
// NewServer.
func Start(addr string, cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kustomertest: listen: %w", err)
	}
	s.serve(ln)
	return s, nil
}

func newServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:     cfg,
		limiter: newLimiter(cfg, time.Now()),
		store:   newStore(cfg.MergeNested),
		log:     newRequestLog(cfg),
		bulk:    newBulkJobs(),
		rng:     rand.New(rand.NewPCG(uint64(cfg.RandSeed), 0x6b7573746f6d6572)),
		done:    make(chan struct{}),
	}
	key := cfg.APIKey
	s.key.Store(&key)
	s.bulkReadDenied.Store(cfg.BulkReadDenied)
	s.readForbidden.Store(cfg.ReadForbidden)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_mock/stats", s.serveStats)
	mux.HandleFunc("GET /_mock/requests", s.serveRequests)
	mux.HandleFunc("GET /_mock/conversations/{id}", s.serveConversation)
	mux.HandleFunc("GET /_mock/bulk", s.serveBulkJobs)
	mux.HandleFunc("GET /_mock/bulk/{id}", s.serveBulkJob)
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) >= len(mockPrefix) && r.URL.Path[:len(mockPrefix)] == mockPrefix {
			mux.ServeHTTP(w, r)
			return
		}
		s.serveAPI(w, r)
	})
	return s, nil
}

const mockPrefix = "/_mock/"

func (s *Server) serve(ln net.Listener) {
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	s.URL = "http://" + net.JoinHostPort(host, port)
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
}

// Close stops the fake: held-back answers are abandoned, connections are closed, and Close
// returns once no request is being served. Calling it again does nothing.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.closeBulk()
		if s.srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(ctx) // waits for active requests, which end at once now
		_ = s.srv.Close()
		<-s.served
	})
}

// Handler serves the fake's API and its /_mock endpoints, for mounting in another server.
// Requests it serves are recorded like any other.
func (s *Server) Handler() http.Handler { return s.handler }

// SetAPIKey makes key the only key accepted from now on; "" accepts none.
func (s *Server) SetAPIKey(key string) { s.key.Store(&key) }

// SetForbidden makes every authenticated request answer 403, as when the key loses the
// role org.permission.conversation.update, until it is called with false.
func (s *Server) SetForbidden(on bool) { s.forbidden.Store(on) }

// SetDown makes every API request answer status (a 5xx) before any other check, as during an
// outage of Kustomer, spending no budget; SetDown(0) ends it. Requests are still recorded.
func (s *Server) SetDown(status int) { s.down.Store(int64(status)) }

// SetWritesDown makes every update and bulk submit answer status (a 5xx) once the key is
// checked, spending no budget, while reads of conversations are answered as usual: Kustomer up
// but refusing writes. SetWritesDown(0) ends it. SetDown takes precedence.
func (s *Server) SetWritesDown(status int) { s.writesDown.Store(int64(status)) }

// SetReadsDown makes every read of a conversation (GET /v1/conversations/{id}) answer status
// once the key is checked, spending no budget, while updates are answered as usual.
// SetReadsDown(0) ends it.
func (s *Server) SetReadsDown(status int) { s.readsDown.Store(int64(status)) }

// SetReadForbidden makes every read of a conversation answer 403, as for a key without the
// read role (most likely org.permission.conversation.read), while updates go on; false ends it.
func (s *Server) SetReadForbidden(on bool) { s.readForbidden.Store(on) }

// Seed creates the conversation id, or resets it, with attrs as its attributes. A "rev" in
// attrs sets its rev (default 0). Ids other than 24 lowercase hex characters can be seeded
// but never reached, since the API answers them 400. Seed panics if attrs cannot be encoded
// as JSON.
func (s *Server) Seed(id string, attrs map[string]any) { s.store.seedConversation(id, attrs) }

// Script queues answers for the next requests for id, in order; after them id gets normal
// behaviour again. Requests refused by authentication or a rate limit do not use up an
// answer. Calls add to the queue. A scripted 429 says Retry-After: 1 when
// Config.RetryAfter is on, and its x-ratelimit-remaining is what the org budget has left.
func (s *Server) Script(id string, answers ...Answer) { s.store.script(id, answers) }

// ScriptAny queues answers for the next requests for any id that has no per-id script
// answer left. Calls add to the queue.
func (s *Server) ScriptAny(answers ...Answer) {
	s.anyMu.Lock()
	s.anyScript = append(s.anyScript, answers...)
	s.anyMu.Unlock()
}

// Reject makes every update of id answer status with a Kustomer-shaped error body (once
// Script and ScriptAny answers are used up), as a deleted conversation (404) or one Kustomer
// refuses to change (400) would; with Config.RejectReads, reads of id too. Status 0 lifts the
// rejection.
func (s *Server) Reject(id string, status int) { s.store.reject(id, status) }

// Requests returns a copy of the log of finished requests in arrival order. Requests still
// being answered appear once answered. Empty with Config.DisableLog.
func (s *Server) Requests() []Request { return s.log.requests(nil) }

// RequestsFor returns the finished requests whose path named conversation id, and the bulk
// submits with an item for id.
func (s *Server) RequestsFor(id string) []Request {
	return s.log.requests(func(r *Request) bool { return r.ID == id || slices.Contains(r.IDs, id) })
}

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	st := s.log.stats()
	st.Others = s.limiter.othersStats(time.Now())
	return st
}

// Windows returns every org window begun so far, in order, with what was spent in each by
// requests over HTTP and by the org's other clients. Empty without a budget.
func (s *Server) Windows() []Window { return s.limiter.windowLog(time.Now()) }

// Conversation is the fake's state of one conversation: what Kustomer would now hold.
type Conversation struct {
	ID         string         `json:"id"`
	Rev        int64          `json:"rev"`        // applied updates since it was seeded or first updated
	Attributes map[string]any `json:"attributes"` // values as decoded from JSON (float64, []any, map[string]any); "customer" after a move
}

// Conversation returns a copy of the conversation id, and false if it was neither seeded
// nor updated.
func (s *Server) Conversation(id string) (Conversation, bool) {
	rev, attrs, ok := s.store.get(id)
	if !ok {
		return Conversation{}, false
	}
	return Conversation{ID: id, Rev: rev, Attributes: deepCopy(attrs).(map[string]any)}, true
}

// Conversations returns how many conversations exist: seeded or updated.
func (s *Server) Conversations() int { return s.store.count() }

// nextAny pops the next ScriptAny answer.
func (s *Server) nextAny() (Answer, bool) {
	s.anyMu.Lock()
	defer s.anyMu.Unlock()
	if len(s.anyScript) == 0 {
		return Answer{}, false
	}
	a := s.anyScript[0]
	s.anyScript = s.anyScript[1:]
	if len(s.anyScript) == 0 {
		s.anyScript = nil
	}
	return a, true
}

// fault draws the random fault for one request, if any.
func (s *Server) fault() (Answer, bool) {
	c := &s.cfg
	if c.DropRate == 0 && c.FaultRate == 0 && c.SlowRate == 0 {
		return Answer{}, false
	}
	s.rngMu.Lock()
	x := s.rng.Float64()
	pick := s.rng.IntN(len(c.FaultStatuses))
	s.rngMu.Unlock()
	switch {
	case x < c.DropRate:
		return Drop(), true
	case x < c.DropRate+c.FaultRate:
		return Status(c.FaultStatuses[pick]), true
	case x < c.DropRate+c.FaultRate+c.SlowRate:
		return Slow(c.SlowDelay), true
	}
	return Answer{}, false
}

// latency is the delay added to one answer.
func (s *Server) latency() time.Duration {
	d := s.cfg.Latency
	if j := s.cfg.LatencyJitter; j > 0 {
		d += time.Duration(rand.Int64N(int64(j)))
	}
	return d
}

// hold waits d, and reports false if the client went away or the server closed first.
func (s *Server) hold(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
}
