package kustomer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testKey = "sk-test-DO-NOT-LEAK-9f8e7d6c5b4a"
	testID  = "5f0c1b2a3d4e5f6a7b8c9d0e"
)

// received is one request as the fake server saw it.
type received struct {
	Method   string
	Path     string // escaped
	RawQuery string
	Header   http.Header
	Body     []byte
}

// fixture is a loopback server that records every request and answers with handler, and a
// Client pointed at it.
type fixture struct {
	srv    *httptest.Server
	client *Client

	mu  sync.Mutex
	got []received
}

func (f *fixture) requests() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.got...)
}

func (f *fixture) record(r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, received{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Clone(), body})
}

// setup starts a server answering with handler and a Client for it; opts adjust the Options.
func setup(tb testing.TB, handler http.HandlerFunc, opts ...func(*Options)) *fixture {
	tb.Helper()
	f := &fixture{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		handler(w, r)
	}))
	tb.Cleanup(f.srv.Close)
	f.client = newClient(tb, f.srv.URL, opts...)
	return f
}

// newClient returns a Client for baseURL with the test key.
func newClient(tb testing.TB, baseURL string, opts ...func(*Options)) *Client {
	tb.Helper()
	o := Options{BaseURL: baseURL, Key: StaticKey(testKey)}
	for _, opt := range opts {
		opt(&o)
	}
	c, err := New(o)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(c.CloseIdleConnections)
	return c
}

// answer is a handler that replies with status, headers and body.
func answer(status int, headers map[string]string, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for k, v := range headers {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// conversationJSON is a 200 answer body carrying rev.
func conversationJSON(rev int) string {
	return fmt.Sprintf(`{"data":{"type":"conversation","id":%q,"attributes":{"name":"x","rev":%d,"tags":["a","b"]}}}`, testID, rev)
}

// asAPIError fails the test unless err is an *APIError.
func asAPIError(tb testing.TB, err error) *APIError {
	tb.Helper()
	apiErr, ok := errors.AsType[*APIError](err)
	if !ok {
		tb.Fatalf("error %v (%T) is not an *APIError", err, err)
	}
	return apiErr
}

func TestUpdateConversationSendsTheScriptsRequest(t *testing.T) {
	body := `{"priority": 3, "tags":["vip"]}` // sent as is, spaces included
	tests := []struct {
		name      string
		basePath  string
		replace   bool
		userAgent string
		wantPath  string
		wantQuery string
		wantUA    string
	}{
		{name: "partial update has no query", wantPath: "/v1/conversations/" + testID, wantUA: "kustomer-worker/dev"},
		{name: "replace adds replace=true", replace: true, wantPath: "/v1/conversations/" + testID, wantQuery: "replace=true", wantUA: "kustomer-worker/dev"},
		{name: "base URL path prefix is kept", basePath: "/proxy/kustomer", wantPath: "/proxy/kustomer/v1/conversations/" + testID, wantUA: "kustomer-worker/dev"},
		{name: "base URL trailing slash is joined cleanly", basePath: "/proxy/", replace: true, wantPath: "/proxy/v1/conversations/" + testID, wantQuery: "replace=true", wantUA: "kustomer-worker/dev"},
		{name: "custom user agent is sent", userAgent: "acme-sync/1.2", wantPath: "/v1/conversations/" + testID, wantUA: "acme-sync/1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fixture{}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				f.record(r)
				answer(200, nil, conversationJSON(4))(w, r)
			}))
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL+tt.basePath, func(o *Options) { o.UserAgent = tt.userAgent })

			res, err := c.UpdateConversation(t.Context(), Update{ID: testID, Replace: tt.replace, Body: []byte(body)})
			if err != nil {
				t.Fatalf("UpdateConversation: %v", err)
			}
			if res.Status != 200 || res.Rev != 4 {
				t.Errorf("result = %+v, want status 200 rev 4", res)
			}
			got := f.requests()
			if len(got) != 1 {
				t.Fatalf("server got %d requests, want 1", len(got))
			}
			r := got[0]
			if r.Method != http.MethodPut || r.Path != tt.wantPath || r.RawQuery != tt.wantQuery {
				t.Errorf("request = %s %s?%s, want PUT %s?%s", r.Method, r.Path, r.RawQuery, tt.wantPath, tt.wantQuery)
			}
			for name, want := range map[string]string{
				"Authorization": "Bearer " + testKey,
				"Content-Type":  "application/json",
				"Accept":        "application/json",
				"User-Agent":    tt.wantUA,
			} {
				if v := r.Header.Get(name); v != want {
					t.Errorf("header %s = %q, want %q", name, v, want)
				}
			}
			if string(r.Body) != body {
				t.Errorf("body = %q, want %q unchanged", r.Body, body)
			}
		})
	}
}

func TestUpdateConversationRefusesInvalidIDsWithoutARequest(t *testing.T) {
	f := setup(t, answer(200, nil, conversationJSON(1)))
	for _, id := range []string{
		"",
		"5f0c1b2a3d4e5f6a7b8c9d0",   // 23
		"5f0c1b2a3d4e5f6a7b8c9d0e0", // 25
		"5f0c1b2a3d4e5f6a7b8c9d0g",  // not hex
		"../../v1/users/5f0c1b2a3d", // path traversal
		"5f0c1b2a3d4e5f6a7b8c9d/e",
		"5f0c1b2a3d4e5f6a7b8c9d?e",
		"5f0c1b2a3d4e5f6a7b8c%2Fe",
		"5f0c1b2a3d4e5f6a7b8c 9de",
	} {
		t.Run(strconv.Quote(id), func(t *testing.T) {
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: id, Body: []byte(`{}`)})
			verr, ok := errors.AsType[*ValidationError](err)
			if !ok {
				t.Fatalf("error = %v, want *ValidationError", err)
			}
			if !errors.Is(err, ErrInvalid) || len(verr.Problems) != 1 || verr.Problems[0].Field != "id" {
				t.Errorf("error = %#v, want one problem for field id matching ErrInvalid", verr)
			}
		})
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server got %d requests for invalid ids, want 0", n)
	}
}

func TestUpdateConversationSucceedsOnAny2xx(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantRev int64
	}{
		{"200 with rev", 200, conversationJSON(42), 42},
		{"201 with rev", 201, conversationJSON(7), 7},
		{"200 without rev", 200, `{"data":{"attributes":{}}}`, 0},
		{"200 with unparseable body", 200, `<html>ok</html>`, 0},
		{"200 with rev of the wrong type", 200, `{"data":{"attributes":{"rev":"7"}}}`, 0},
		{"204 without body", 204, ``, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(tt.status, map[string]string{"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "998"}, tt.body))
			res, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{"status":"done"}`)})
			if err != nil {
				t.Fatalf("UpdateConversation: %v", err)
			}
			if res.Status != tt.status || res.Rev != tt.wantRev {
				t.Errorf("result = %+v, want status %d rev %d", res, tt.status, tt.wantRev)
			}
			if res.RateLimit.Limit != 1000 || res.RateLimit.Remaining != 998 {
				t.Errorf("rate limit = %+v, want limit 1000 remaining 998", res.RateLimit)
			}
		})
	}
}

func TestUpdateConversationClassifiesEveryStatus(t *testing.T) {
	tests := []struct {
		status    int
		headers   map[string]string
		wantClass Class
		wantScope Scope
		sentinel  error
	}{
		{400, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{404, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{409, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{413, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{422, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{418, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{401, nil, ClassAuth, ScopeNone, ErrAuth},
		{403, nil, ClassAuth, ScopeNone, ErrAuth},
		{429, map[string]string{"X-RateLimit-Remaining": "0"}, ClassThrottled, ScopeOrg, ErrThrottled},
		{429, nil, ClassThrottled, ScopeOrg, ErrThrottled},
		{429, map[string]string{"X-RateLimit-Remaining": "812"}, ClassThrottled, ScopeConversation, ErrThrottled},
		{500, nil, ClassTransient, ScopeNone, ErrTransient},
		{502, nil, ClassTransient, ScopeNone, ErrTransient},
		{503, nil, ClassTransient, ScopeNone, ErrTransient},
		{504, nil, ClassTransient, ScopeNone, ErrTransient},
		{302, map[string]string{"Location": "/elsewhere"}, ClassPermanent, ScopeNone, ErrPermanent},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %v is %s scope %s", tt.status, tt.headers, tt.wantClass, tt.wantScope), func(t *testing.T) {
			f := setup(t, answer(tt.status, tt.headers, `{"errors":[{"code":"x","message":"y"}]}`))
			res, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			if res != nil {
				t.Errorf("result = %+v, want nil on error", res)
			}
			apiErr := asAPIError(t, err)
			if apiErr.Status != tt.status || apiErr.Class != tt.wantClass || apiErr.Scope != tt.wantScope {
				t.Errorf("got status %d class %s scope %s, want %d %s %s", apiErr.Status, apiErr.Class, apiErr.Scope, tt.status, tt.wantClass, tt.wantScope)
			}
			for _, s := range []error{ErrPermanent, ErrAuth, ErrThrottled, ErrTransient} {
				if errors.Is(err, s) != (s == tt.sentinel) {
					t.Errorf("errors.Is(err, %v) = %t", s, !(s == tt.sentinel))
				}
			}
			if n := len(f.requests()); n != 1 {
				t.Errorf("server got %d requests, want exactly 1 (no redirects, no retries)", n)
			}
		})
	}
}

func TestUpdateConversationComputesWait(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	epoch := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	tests := []struct {
		name    string
		status  int
		headers map[string]string
		want    time.Duration
	}{
		{"429 Retry-After seconds", 429, map[string]string{"Retry-After": "5"}, 5 * time.Second},
		{"429 Retry-After HTTP date", 429, map[string]string{"Retry-After": now.Add(10 * time.Second).Format(http.TimeFormat)}, 10 * time.Second},
		{"429 Retry-After wins over reset", 429, map[string]string{"Retry-After": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": epoch(40 * time.Second)}, 3 * time.Second},
		{"429 org reset as epoch seconds", 429, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": epoch(20 * time.Second)}, 20 * time.Second},
		{"429 org reset as seconds from now", 429, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "12.5"}, 12500 * time.Millisecond},
		{"429 org reset far away is capped", 429, map[string]string{"X-RateLimit-Reset": "600"}, MaxWait},
		{"429 org reset in the past is zero", 429, map[string]string{"X-RateLimit-Reset": epoch(-5 * time.Second)}, 0},
		{"429 Retry-After over a minute is capped", 429, map[string]string{"Retry-After": "3600"}, MaxWait},
		{"429 Retry-After date over a minute is capped", 429, map[string]string{"Retry-After": now.Add(time.Hour).Format(http.TimeFormat)}, MaxWait},
		{"429 malformed Retry-After falls back to reset", 429, map[string]string{"Retry-After": "soon", "X-RateLimit-Reset": "15"}, 15 * time.Second},
		{"429 conversation scope ignores the org reset", 429, map[string]string{"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "30"}, 0},
		{"429 conversation scope honours Retry-After", 429, map[string]string{"X-RateLimit-Remaining": "3", "Retry-After": "2"}, 2 * time.Second},
		{"429 without any header", 429, nil, 0},
		{"503 with Retry-After", 503, map[string]string{"Retry-After": "7"}, 7 * time.Second},
		{"500 without Retry-After ignores reset", 500, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(tt.status, tt.headers, ""))
			f.client.now = func() time.Time { return now }
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if apiErr.Wait != tt.want {
				t.Errorf("Wait = %v, want %v (rate limit %+v)", apiErr.Wait, tt.want, apiErr.RateLimit)
			}
		})
	}
}

func TestUpdateConversationExtractsTheReason(t *testing.T) {
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name string
		body string
		want string
	}{
		{
			name: "Kustomer error shape",
			body: `{"errors":[{"code":"bad_request","message":"priority must be between 1 and 5","meta":{}}]}`,
			want: "bad_request: priority must be between 1 and 5",
		},
		{
			name: "JSON:API error shape",
			body: `{"errors":[{"status":"400","code":"invalid_attribute","title":"Invalid Attribute","detail":"must be 1 to 5","source":{"pointer":"/priority"}}]}`,
			want: "invalid_attribute: Invalid Attribute: must be 1 to 5 (at /priority)",
		},
		{
			name: "several errors are joined",
			body: `{"errors":[{"code":"bad_request","message":"a"},{"status":422,"title":"b","detail":"c"}]}`,
			want: "bad_request: a; b: c",
		},
		{
			name: "top-level message",
			body: `{"message":"Conversation not found"}`,
			want: "Conversation not found",
		},
		{
			name: "plain text falls back to the body",
			body: "upstream connect error\n  or disconnect",
			want: "upstream connect error or disconnect",
		},
		{
			name: "JSON without a reason falls back to the body",
			body: `{"ok":false}`,
			want: `{"ok":false}`,
		},
		{
			name: "empty body has no reason",
			body: "",
			want: "",
		},
		{
			name: "long reason is capped",
			body: `{"errors":[{"code":"c","message":"` + long + `"}]}`,
			want: ("c: " + long)[:maxReason],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(400, map[string]string{"Content-Type": "application/json"}, tt.body))
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if apiErr.Reason != tt.want {
				t.Errorf("Reason = %q\nwant %q", apiErr.Reason, tt.want)
			}
			if tt.want != "" && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Error() = %q, want it to contain the reason", err)
			}
		})
	}
}

func TestUpdateConversationKeepsAtMost1KBOfTheBody(t *testing.T) {
	for _, size := range []int{10, MaxErrorBody, MaxErrorBody + 1, 300 << 10} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			body := strings.Repeat("é", size/2+1)[:size] // may cut a character at the end
			f := setup(t, answer(500, nil, body))
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if len(apiErr.Body) > MaxErrorBody || !strings.HasPrefix(body, apiErr.Body) {
				t.Errorf("Body has %d bytes, want a prefix of the answer of at most %d", len(apiErr.Body), MaxErrorBody)
			}
			if want := min(size, MaxErrorBody) - 1; len(apiErr.Body) < want {
				t.Errorf("Body has %d bytes, want at least %d", len(apiErr.Body), want)
			}
		})
	}
}

// hijack is a handler that takes the connection and lets drop end it.
func hijack(drop func(net.Conn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		drop(conn)
	}
}

func TestUpdateConversationTransportFailuresAreTransient(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"connection closed before an answer", hijack(func(c net.Conn) { _ = c.Close() })},
		{"connection closed mid status line", hijack(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 20")
			_ = c.Close()
		})},
		{"connection reset", hijack(func(c net.Conn) {
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, tt.handler)
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if apiErr.Class != ClassTransient || apiErr.Status != 0 || apiErr.Err == nil || !errors.Is(err, ErrTransient) {
				t.Errorf("got %#v, want ClassTransient with status 0 and Err set", apiErr)
			}
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		c := newClient(t, "http://"+addr)
		_, err = c.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
		apiErr := asAPIError(t, err)
		if apiErr.Class != ClassTransient || apiErr.Status != 0 || apiErr.Err == nil {
			t.Errorf("got %#v, want ClassTransient with status 0 and Err set", apiErr)
		}
	})
}

// stall is a handler that answers only once the client gives up or the test ends; arrived, when
// not nil, is closed when the first request comes in.
func stall(tb testing.TB, arrived chan struct{}) http.HandlerFunc {
	tb.Helper()
	release := make(chan struct{})
	var once sync.Once
	tb.Cleanup(func() { close(release) })
	return func(w http.ResponseWriter, r *http.Request) {
		if arrived != nil {
			once.Do(func() { close(arrived) })
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
}

func TestUpdateConversationTimeoutIsTransientNotCancellation(t *testing.T) {
	f := setup(t, stall(t, nil))
	for _, tc := range []struct {
		name   string
		client *Client
	}{
		{"own HTTP client", newClient(t, f.srv.URL, func(o *Options) { o.Timeout = 50 * time.Millisecond })},
		{"caller's HTTP client", newClient(t, f.srv.URL, func(o *Options) {
			o.Timeout = 50 * time.Millisecond
			o.HTTPClient = &http.Client{Transport: &http.Transport{}}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if apiErr.Class != ClassTransient || apiErr.Status != 0 || apiErr.Err == nil {
				t.Errorf("got %#v, want ClassTransient with status 0 and Err set", apiErr)
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("a request timeout %v matches a context error; the worker would take it for shutdown", err)
			}
			if !strings.Contains(err.Error(), "timed out") {
				t.Errorf("Error() = %q, want it to say the request timed out", err)
			}
		})
	}
}

func TestUpdateConversationReturnsTheCallersContextError(t *testing.T) {
	t.Run("canceled before the call", func(t *testing.T) {
		f := setup(t, answer(200, nil, conversationJSON(1)))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := f.client.UpdateConversation(ctx, Update{ID: testID, Body: []byte(`{}`)})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want context.Canceled", err)
		}
		if _, ok := errors.AsType[*APIError](err); ok {
			t.Errorf("error = %v is an *APIError; shutdown must not look like a failed request", err)
		}
	})
	t.Run("canceled while waiting for the answer", func(t *testing.T) {
		arrived := make(chan struct{})
		f := setup(t, stall(t, arrived))
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := f.client.UpdateConversation(ctx, Update{ID: testID, Body: []byte(`{}`)})
			errc <- err
		}()
		<-arrived
		cancel()
		err := <-errc
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want context.Canceled", err)
		}
		if _, ok := errors.AsType[*APIError](err); ok {
			t.Errorf("error = %v is an *APIError; shutdown must not look like a failed request", err)
		}
	})
	t.Run("caller's deadline shorter than the timeout", func(t *testing.T) {
		f := setup(t, stall(t, nil))
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
		defer cancel()
		_, err := f.client.UpdateConversation(ctx, Update{ID: testID, Body: []byte(`{}`)})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want context.DeadlineExceeded", err)
		}
		if _, ok := errors.AsType[*APIError](err); ok {
			t.Errorf("error = %v is an *APIError, want the context's error", err)
		}
	})
}

func TestUpdateConversationReusesOneConnection(t *testing.T) {
	big := strings.Repeat("z", 8<<10)
	var calls atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch calls.Add(1) % 5 {
		case 0:
			answer(200, nil, conversationJSON(1)+big)(w, r)
		case 1:
			answer(400, nil, `{"errors":[{"code":"bad_request","message":"`+big+`"}]}`)(w, r)
		case 2:
			answer(429, map[string]string{"Retry-After": "1"}, "")(w, r)
		case 3:
			answer(500, nil, big)(w, r)
		default:
			answer(204, nil, "")(w, r)
		}
	}))
	var conns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)

	for i := range 50 {
		_, err := c.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{"priority":2}`)})
		if _, ok := errors.AsType[*APIError](err); err != nil && !ok {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// Each answer's body is drained, so the connection serves the next call: one connection,
	// or two when net/http had not yet put the first back in its idle pool as the next call
	// began (it does so on a goroutine of its own, which a loaded machine can delay). Without
	// the drain, every answer with an unread body would cost a new connection: 20 or more here.
	if n := conns.Load(); n > 2 {
		t.Errorf("50 sequential calls opened %d connections, want 1 (2 at most)", n)
	}
}

func TestUpdateConversationReportsAnUnusableKeyWithoutARequest(t *testing.T) {
	tests := []struct {
		name string
		key  KeySource
	}{
		{"missing key file", NewKeyFile(t.TempDir() + "/missing")},
		{"key with a line break", StaticKey("abc\ndef")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(200, nil, conversationJSON(1)), func(o *Options) { o.Key = tt.key })
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			apiErr := asAPIError(t, err)
			if apiErr.Class != ClassAuth || !errors.Is(err, ErrAuth) {
				t.Errorf("got %#v, want ClassAuth", apiErr)
			}
			if n := len(f.requests()); n != 0 {
				t.Errorf("server got %d requests, want 0", n)
			}
		})
	}
}

func TestUpdateConversationUsesARewrittenKeyFile(t *testing.T) {
	path := t.TempDir() + "/key"
	writeKey(t, path, "first-key-0000", time.Unix(1_700_000_000, 0))
	keys := NewKeyFile(path)
	clock := time.Unix(1_800_000_000, 0)
	keys.now = func() time.Time { return clock }
	f := setup(t, answer(200, nil, conversationJSON(1)), func(o *Options) { o.Key = keys })

	call := func() string {
		t.Helper()
		if _, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)}); err != nil {
			t.Fatalf("UpdateConversation: %v", err)
		}
		got := f.requests()
		return got[len(got)-1].Header.Get("Authorization")
	}
	if got := call(); got != "Bearer first-key-0000" {
		t.Fatalf("Authorization = %q, want the first key", got)
	}
	writeKey(t, path, "second-key-11111", time.Unix(1_700_000_100, 0))
	clock = clock.Add(time.Second)
	if got := call(); got != "Bearer second-key-11111" {
		t.Errorf("Authorization = %q, want the rewritten key", got)
	}
}

func TestTheKeyNeverLeaks(t *testing.T) {
	// The server echoes the Authorization header back, as a misbehaving proxy might.
	echo := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			_, _ = fmt.Fprintf(w, `{"errors":[{"code":"echo","message":"got %s"}]}`, r.Header.Get("Authorization"))
		}
	}
	checkErr := func(t *testing.T, err error) {
		t.Helper()
		if err == nil {
			t.Fatal("no error")
		}
		texts := []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)}
		if apiErr, ok := errors.AsType[*APIError](err); ok {
			texts = append(texts, apiErr.Reason, apiErr.Body)
		}
		for _, s := range texts {
			if strings.Contains(s, testKey) {
				t.Errorf("the API key leaked into %q", s)
			}
		}
	}

	for _, status := range []int{400, 401, 403, 429, 500} {
		t.Run(fmt.Sprintf("wrong status %d", status), func(t *testing.T) {
			f := setup(t, echo(status))
			_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
			checkErr(t, err)
		})
	}
	t.Run("echoed JSON-escaped", func(t *testing.T) {
		const key = "key/with<escapes>&"
		f := setup(t, func(w http.ResponseWriter, r *http.Request) {
			msg, _ := json.Marshal("got " + r.Header.Get("Authorization")) // Go escapes <, > and &
			w.WriteHeader(http.StatusBadRequest)
			_, _ = fmt.Fprintf(w, `{"errors":[{"code":"echo","message":%s}]}`, msg)
		}, func(o *Options) { o.Key = StaticKey(key) })
		_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
		apiErr, ok := errors.AsType[*APIError](err)
		if !ok {
			t.Fatalf("err = %v, want an *APIError", err)
		}
		for _, s := range []string{err.Error(), apiErr.Reason, apiErr.Body} {
			if strings.Contains(s, key) {
				t.Errorf("the API key leaked into %q", s)
			}
		}
	})
	t.Run("transport error", func(t *testing.T) {
		f := setup(t, hijack(func(c net.Conn) { _ = c.Close() }))
		_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
		checkErr(t, err)
	})
	t.Run("timeout", func(t *testing.T) {
		f := setup(t, stall(t, nil), func(o *Options) { o.Timeout = 20 * time.Millisecond })
		_, err := f.client.UpdateConversation(t.Context(), Update{ID: testID, Body: []byte(`{}`)})
		checkErr(t, err)
	})
	t.Run("printing the client and its options", func(t *testing.T) {
		opts := Options{BaseURL: "https://example.com/api", Key: StaticKey(testKey), UserAgent: "ua"}
		c := newClient(t, opts.BaseURL, func(o *Options) { *o = opts })
		var logs bytes.Buffer
		logger := slog.New(slog.NewJSONHandler(&logs, nil))
		logger.Info("start", "client", c, "options", opts, "key", opts.Key)
		logger.Info("text", slog.Any("client", c))
		slog.New(slog.NewTextHandler(&logs, nil)).Info("start", "client", c, "options", opts, "key", opts.Key)
		texts := []string{logs.String()}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
			texts = append(texts,
				fmt.Sprintf(verb, c), fmt.Sprintf(verb, *c), fmt.Sprintf(verb, opts), fmt.Sprintf(verb, &opts),
				fmt.Sprintf(verb, opts.Key), fmt.Sprintf(verb, []any{opts, c}))
		}
		for _, s := range texts {
			if strings.Contains(s, testKey) || strings.Contains(s, fmt.Sprintf("%x", testKey)) {
				t.Errorf("a secret leaked into %q", s)
			}
		}
		if !strings.Contains(logs.String(), "example.com/api") {
			t.Errorf("logs = %s, want the base URL for debugging", logs.String())
		}
	})
}

func TestNewChecksOptions(t *testing.T) {
	key := StaticKey(testKey)
	tests := []struct {
		name      string
		opts      Options
		wantField string
	}{
		{"missing key", Options{}, "Key"},
		{"empty static key", Options{Key: StaticKey("")}, "Key"},
		{"relative URL", Options{BaseURL: "api.kustomerapp.com", Key: key}, "BaseURL"},
		{"other scheme", Options{BaseURL: "ftp://api.kustomerapp.com", Key: key}, "BaseURL"},
		{"no host", Options{BaseURL: "https://", Key: key}, "BaseURL"},
		{"credentials", Options{BaseURL: "https://user:pw@api.kustomerapp.com", Key: key}, "BaseURL"},
		{"query", Options{BaseURL: "https://api.kustomerapp.com?x=1", Key: key}, "BaseURL"},
		{"unparseable", Options{BaseURL: "https://api.kustomer app.com:x", Key: key}, "BaseURL"},
		{"negative timeout", Options{Key: key, Timeout: -time.Second}, "Timeout"},
		{"user agent with a line break", Options{Key: key, UserAgent: "a\r\nX-Evil: 1"}, "UserAgent"},
		{"plain http to another host", Options{BaseURL: "http://mock:8080", Key: key}, "BaseURL"},
		{"plain http to a remote address", Options{BaseURL: "http://10.0.0.8", Key: key}, "BaseURL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.opts)
			if err == nil {
				t.Fatalf("New(%v) = %v, want an error", tt.opts, c)
			}
			fe, ok := errors.AsType[FieldError](err)
			if !ok || fe.Field != tt.wantField {
				t.Errorf("error = %v, want a FieldError for %s", err, tt.wantField)
			}
			if !strings.Contains(err.Error(), "Options."+tt.wantField) {
				t.Errorf("error = %q, want it to name Options.%s", err, tt.wantField)
			}
		})
	}

	t.Run("plain http is refused with a reason that names the host", func(t *testing.T) {
		_, err := New(Options{BaseURL: "http://mock:8080", Key: key})
		if err == nil || !strings.Contains(err.Error(), "in clear to mock") || !strings.Contains(err.Error(), "AllowInsecure") {
			t.Errorf("error = %v, want it to say the key would go in clear to mock, and how to allow it", err)
		}
	})

	t.Run("plain http to loopback, or allowed, is accepted", func(t *testing.T) {
		for _, o := range []Options{
			{BaseURL: "http://127.0.0.1:8080"}, {BaseURL: "http://localhost:8080/prefix"}, {BaseURL: "http://[::1]:8080"},
			{BaseURL: "http://127.3.4.5"}, {BaseURL: "http://mock:8080", AllowInsecure: true},
		} {
			o.Key = key
			c, err := New(o)
			if err != nil {
				t.Errorf("New(%v): %v", o, err)
				continue
			}
			c.CloseIdleConnections()
		}
	})

	t.Run("defaults", func(t *testing.T) {
		c, err := New(Options{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseIdleConnections()
		if c.convURL != DefaultBaseURL+"/v1/conversations/" || c.timeout != DefaultTimeout || c.userAgent != "kustomer-worker/"+Version {
			t.Errorf("client = %#v, want the defaults", c)
		}
		tr, ok := c.http.Transport.(*http.Transport)
		if !ok || tr.MaxIdleConnsPerHost != 256 {
			t.Errorf("HTTP client = %+v, want own transport with 256 idle connections per host", c.http)
		}
		if tr == http.DefaultTransport {
			t.Error("the client shares http.DefaultTransport")
		}
	})
}

func BenchmarkUpdateConversation(b *testing.B) {
	resp := []byte(conversationJSON(12))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-RateLimit-Limit", "1000")
		w.Header().Set("X-RateLimit-Remaining", "999")
		w.Header().Set("X-RateLimit-Reset", "1700000000")
		_, _ = w.Write(resp)
	}))
	b.Cleanup(srv.Close)
	c := newClient(b, srv.URL)
	u := Update{ID: testID, Body: []byte(`{"priority":3,"tags":["vip","renewal"],"status":"open"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.UpdateConversation(b.Context(), u); err != nil {
			b.Fatal(err)
		}
	}
}
