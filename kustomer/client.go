// Package kustomer is a client for the Kustomer API calls the worker makes: update a
// conversation, and update up to 100 conversations in one bulk job and follow that job. It
// classifies every failure (see Class) and reads the rate-limit headers of every answer, so the
// caller can decide between retrying now, later, or never, and pace itself.
package kustomer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// DefaultBaseURL is Kustomer's API host. Other hosts exist: https://{org}.api.kustomerapp.com and
// the EU host https://api.prod2.kustomerapp.com.
const DefaultBaseURL = "https://api.kustomerapp.com"

// Version is the worker's version, set at build time with
// -ldflags "-X github.com/kustomer-worker/kustomer-worker/kustomer.Version=...". It goes into the
// default user agent.
var Version = "dev"

// DefaultTimeout bounds one request when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

const (
	// maxSuccessBody is how much of a 2xx answer is read to find the rev.
	maxSuccessBody = 1 << 20
	// maxReasonBody is how much of an error answer is read to find the reason.
	maxReasonBody = 64 << 10
	// maxDrain is how much unread answer is discarded so the connection can be reused; a longer
	// answer closes the connection instead.
	maxDrain = 64 << 10
)

// Options configures a Client. The zero value of every field but Key picks its default.
type Options struct {
	// BaseURL is the API host, an absolute http or https URL, possibly with a path prefix.
	// Default: DefaultBaseURL.
	BaseURL string
	// Key yields the API key for each request. Required: StaticKey or NewKeyFile.
	Key KeySource
	// HTTPClient sends the requests; the Client never follows its redirects. Default: a client of
	// its own whose Transport is cloned from http.DefaultTransport with up to 256 idle connections
	// to the host.
	HTTPClient *http.Client
	// Timeout bounds each request, from sending it to reading the answer, through the request's
	// context (whatever HTTPClient's own Timeout). Default: 30s.
	Timeout time.Duration
	// UserAgent is sent with every request. Default: "kustomer-worker/" + Version.
	UserAgent string
	// AllowInsecure lets BaseURL be a plain http:// URL to a host other than this machine's
	// loopback (localhost, 127.0.0.0/8, ::1), which sends the API key in clear: for a test
	// server such as the fake in a container. Default false: such a URL is refused.
	AllowInsecure bool
}

// String describes the options with the key redacted.
func (o Options) String() string {
	return fmt.Sprintf("kustomer.Options{BaseURL: %q, Key: %s, Timeout: %s, UserAgent: %q, HTTPClient: %t, AllowInsecure: %t}",
		redactURL(o.BaseURL), describeKey(o.Key), o.Timeout, o.UserAgent, o.HTTPClient != nil, o.AllowInsecure)
}

// GoString describes the options with the key redacted.
func (o Options) GoString() string { return o.String() }

// LogValue describes the options with the key redacted.
func (o Options) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", redactURL(o.BaseURL)),
		slog.String("key", describeKey(o.Key)),
		slog.Duration("timeout", o.Timeout),
		slog.String("user_agent", o.UserAgent),
		slog.Bool("custom_http_client", o.HTTPClient != nil),
		slog.Bool("allow_insecure", o.AllowInsecure),
	)
}

// Format describes the options with the key redacted, for every verb.
func (o Options) Format(f fmt.State, verb rune) { formatRedacted(f, verb, o.String(), o.GoString()) }

// Client calls the Kustomer API. It is safe for concurrent use and reuses connections.
type Client struct {
	baseURL string // for logs
	convURL string // base URL joined with "/v1/conversations/"
	bulkURL string // base URL joined with "/v1/bulk/"
	keys    KeySource
	http    *http.Client
	// rt, when set, is http's own Transport, called directly: set only when New built http
	// itself (no Timeout, no Jar, redirects refused), where http.Client adds nothing to a
	// round trip but a copy of the headers for redirects it will not follow.
	rt         http.RoundTripper
	timeout    time.Duration
	timeoutErr *timeoutError
	userAgent  string
	now        func() time.Time // the clock; tests replace it
}

// New checks opts and returns a Client. Errors name the offending field.
func New(opts Options) (*Client, error) {
	var problems []FieldError
	if opts.BaseURL == "" {
		opts.BaseURL = DefaultBaseURL
	}
	base, problem := parseBaseURL(opts.BaseURL)
	if problem == "" && base.Scheme == "http" && !opts.AllowInsecure && !isLoopback(base.Hostname()) {
		problem = fmt.Sprintf("%q would send the API key in clear to %s: use https://, or allow it for a test server (AllowInsecure)", redactedURL(base), base.Hostname())
	}
	if problem != "" {
		problems = append(problems, FieldError{Field: "BaseURL", Problem: problem})
	}
	if opts.Key == nil {
		problems = append(problems, FieldError{Field: "Key", Problem: "required"})
	} else if k, ok := opts.Key.(StaticKey); ok && k == "" {
		problems = append(problems, FieldError{Field: "Key", Problem: "the API key is empty"})
	}
	if opts.Timeout < 0 {
		problems = append(problems, FieldError{Field: "Timeout", Problem: fmt.Sprintf("%s is negative", opts.Timeout)})
	} else if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "kustomer-worker/" + Version
	} else if strings.ContainsFunc(opts.UserAgent, isControl) {
		problems = append(problems, FieldError{Field: "UserAgent", Problem: "contains control characters"})
	}
	if len(problems) > 0 {
		return nil, optionsError(problems)
	}

	var hc http.Client
	var rt http.RoundTripper
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	} else {
		// No Timeout of its own: do bounds every request with a context, and a client Timeout
		// would add a timer and a goroutine to every request for the same bound.
		t := newTransport()
		hc, rt = http.Client{Transport: t}, t
	}
	// A redirect would turn the PUT into a GET that "succeeds"; report it instead.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	return &Client{
		baseURL:    base.String(),
		convURL:    base.JoinPath("v1", "conversations").String() + "/",
		bulkURL:    base.JoinPath("v1", "bulk").String() + "/",
		keys:       opts.Key,
		http:       &hc,
		rt:         rt,
		timeout:    opts.Timeout,
		timeoutErr: &timeoutError{after: opts.Timeout},
		userAgent:  opts.UserAgent,
		now:        time.Now,
	}, nil
}

// newTransport clones http.DefaultTransport and lets it keep enough idle connections for a busy
// worker pool talking to one host.
func newTransport() *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 256
	return t
}

// parseBaseURL checks that s is an absolute http or https URL without credentials, query or fragment.
func parseBaseURL(s string) (*url.URL, string) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, fmt.Sprintf("%q is not a URL", redactURL(s))
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Sprintf("%q must start with https:// or http://", redactedURL(u))
	case u.Host == "":
		return nil, fmt.Sprintf("%q has no host", redactedURL(u))
	case u.User != nil:
		return nil, fmt.Sprintf("%q must not hold credentials; the API key comes from Options.Key", redactedURL(u))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Sprintf("%q must not have a query or fragment", redactedURL(u))
	}
	return u, ""
}

// isLoopback reports whether host (a name or an IP address, without port) is this machine's
// loopback: "localhost", 127.0.0.0/8 or ::1. Other names count as remote, whatever they
// resolve to.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && ip.Unmap().IsLoopback()
}

// Result is a successful update.
type Result struct {
	Status    int       // 2xx status
	Rev       int64     // data.attributes.rev of the answer, 0 when absent
	RateLimit RateLimit // the rate-limit headers of the answer
}

// UpdateConversation sends one update: PUT /v1/conversations/{id}, with ?replace=true when
// u.Replace. u.Body is sent as is.
//
// Errors: a *ValidationError (no request made) when u.ID is not 24 hex characters; the context's
// error, wrapped, when ctx is canceled or expires (errors.Is(err, context.Canceled) or
// context.DeadlineExceeded holds, and it is not an *APIError); otherwise an *APIError whose Class
// says what to do. A request that outlives Options.Timeout is ClassTransient.
func (c *Client) UpdateConversation(ctx context.Context, u Update) (*Result, error) {
	if !ValidID(u.ID) {
		return nil, &ValidationError{Problems: []FieldError{{Field: "id", Problem: idProblem(u.ID)}}}
	}
	target := c.convURL + url.PathEscape(u.ID)
	if u.Replace {
		target += "?replace=true"
	}
	ans, err := c.do(ctx, call{
		op: OpUpdate, subject: "update conversation", of: u.ID,
		method: http.MethodPut, url: target, body: u.Body, limit: maxSuccessBody,
	})
	if err != nil {
		return nil, err
	}
	// The update happened whatever the body says; a body that cannot be read only loses the rev.
	return &Result{Status: ans.status, Rev: parseRev(ans.body), RateLimit: ans.rateLimit}, nil
}

// GetConversation reads one conversation: GET /v1/conversations/{id}. It spends a unit of the
// org budget like any request. The worker sends it as the outage breaker's probe: an answer,
// whatever its status, shows that Kustomer is up without depending on the conversations whose
// updates fail. The Result's Rev is the conversation's.
//
// Errors are those of UpdateConversation, with Op OpRead: a 404 (no such conversation) is
// ClassPermanent, and a 403 (the key lacks the read role, most likely
// org.permission.conversation.read) is ClassAuth although it says nothing of the key's right to
// update: see APIError.ReadDenied.
func (c *Client) GetConversation(ctx context.Context, id string) (*Result, error) {
	if !ValidID(id) {
		return nil, &ValidationError{Problems: []FieldError{{Field: "id", Problem: idProblem(id)}}}
	}
	ans, err := c.do(ctx, call{
		op: OpRead, subject: "read conversation", of: id,
		method: http.MethodGet, url: c.convURL + url.PathEscape(id), limit: maxSuccessBody,
	})
	if err != nil {
		return nil, err
	}
	return &Result{Status: ans.status, Rev: parseRev(ans.body), RateLimit: ans.rateLimit}, nil
}

// call is one request to Kustomer, as the methods of Client describe it to do.
type call struct {
	op      Op     // what the request is for, kept in its APIError
	subject string // with of, names the request in a wrapped context error: "update conversation <id>"
	of      string // what subject is about, if anything: an id (joined only when an error needs it)
	method  string
	url     string
	body    []byte // sent as application/json, except with GET, which sends no body
	limit   int64  // how much of a 2xx answer is read
}

// name is what the call is: its subject and what it is about.
func (cl call) name() string {
	if cl.of == "" {
		return cl.subject
	}
	return cl.subject + " " + cl.of
}

// reply is a 2xx answer to a call.
type reply struct {
	status    int
	rateLimit RateLimit
	body      []byte // at most call.limit bytes of the body
	truncated bool   // the body was longer than call.limit
	readErr   error  // reading the body failed; body holds what was read
	key       string // the API key sent, to scrub from anything kept of the body
}

// do sends one request with the API key and reads the answer. It is the one place that talks
// HTTP: every call gets the same headers, timeout, redirect refusal, bounded reads, rate-limit
// parsing and error classification, and no error it returns contains the key.
//
// It returns the answer for a 2xx status; otherwise the caller's context error, wrapped with
// call.subject, when ctx ended, or an *APIError carrying call.op.
func (c *Client) do(ctx context.Context, cl call) (*reply, error) {
	key, err := c.keys.Key(ctx)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("kustomer: %s: %w", cl.name(), ctxErr)
		}
		return nil, &APIError{Op: cl.op, Class: ClassAuth, Reason: "no API key: " + err.Error(), Err: err}
	}
	if key == "" || strings.ContainsFunc(key, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, &APIError{Op: cl.op, Class: ClassAuth, Reason: "the API key is empty or contains spaces or control characters"}
	}

	rctx, cancel := context.WithTimeoutCause(ctx, c.timeout, c.timeoutErr)
	defer cancel()
	// The trace counts the transport's writes of the request: a request written again on a
	// fresh connection reached Kustomer more than once (RateLimit.Lost). It goes in the
	// request's context from the start, so the request needs no copy to carry it.
	var writes atomic.Int32
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { writes.Add(1) },
	})
	var body io.Reader
	if cl.method != http.MethodGet {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(rctx, cl.method, cl.url, body)
	if err != nil {
		// Unreachable with a checked base URL and checked ids; reported rather than assumed.
		return nil, &APIError{Op: cl.op, Class: ClassPermanent, Reason: "building the request: " + err.Error(), Err: err}
	}
	req.Header = http.Header{
		"Authorization": {"Bearer " + key},
		"Accept":        {"application/json"},
		"User-Agent":    {c.userAgent},
	}
	if body != nil {
		req.Header["Content-Type"] = []string{"application/json"}
	}

	resp, err := c.roundTrip(req)
	lost := max(int(writes.Load())-1, 0) // attempts before the last one
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("kustomer: %s: %w", cl.name(), ctxErr)
		}
		apiErr := c.transportError(err, key)
		apiErr.Op, apiErr.RateLimit.Lost = cl.op, lost
		return nil, apiErr
	}
	defer drainAndClose(resp.Body)

	now := c.now()
	rl := ParseRateLimit(resp.Header, now)
	rl.Lost = lost
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		b, readErr := readBody(resp, cl.limit+1)
		ans := &reply{status: resp.StatusCode, rateLimit: rl, body: b, readErr: readErr, key: key}
		if int64(len(b)) > cl.limit {
			ans.body, ans.truncated = b[:cl.limit], true
		}
		return ans, nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBody))
	apiErr := newAPIError(resp.StatusCode, rl, b, key, now)
	apiErr.Op = cl.op
	return nil, apiErr
}

// roundTrip sends req through c.rt when set, else through c.http. A 3xx answer comes back as
// it is either way (c.http's CheckRedirect refuses to follow it).
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	if c.rt == nil {
		return c.http.Do(req)
	}
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return nil, &url.Error{Op: urlOp(req.Method), URL: req.URL.String(), Err: err}
	}
	return resp, nil
}

// urlOp names a request's method in a *url.Error as http.Client does ("Get", "Put").
func urlOp(method string) string {
	if method == "" {
		return "Get"
	}
	return method[:1] + strings.ToLower(method[1:])
}

// transportError describes a request that got no answer. Timeouts carry c.timeoutErr rather than
// a context error, so they cannot be mistaken for the caller's cancellation.
func (c *Client) transportError(err error, key string) *APIError {
	inner := err
	if ue, ok := errors.AsType[*url.Error](err); ok {
		inner = ue.Err
	}
	switch {
	case errors.Is(err, c.timeoutErr), errors.Is(err, context.DeadlineExceeded):
		inner = c.timeoutErr
	case errors.Is(err, context.Canceled):
		inner = errors.New(inner.Error())
	}
	return &APIError{Class: ClassTransient, Reason: "no answer: " + scrub(inner.Error(), key), Err: inner}
}

// timeoutError is a request that outlived Options.Timeout.
type timeoutError struct{ after time.Duration }

func (e *timeoutError) Error() string { return fmt.Sprintf("request timed out after %s", e.after) }

// Timeout reports true, like net.Error.
func (e *timeoutError) Timeout() bool { return true }

// parseRev reads data.attributes.rev from a 2xx answer; 0 when absent or unreadable.
func parseRev(body []byte) int64 {
	if rev, ok := revOf(body); ok {
		return rev
	}
	return unmarshalRev(body)
}

// unmarshalRev is parseRev by json.Unmarshal: the reference, and the answer when revOf gives up.
func unmarshalRev(body []byte) int64 {
	var doc struct {
		Data struct {
			Attributes struct {
				Rev int64 `json:"rev"`
			} `json:"attributes"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return 0
	}
	return doc.Data.Attributes.Rev
}

// readBody reads at most limit bytes of resp's body. With a Content-Length within limit it
// reads into a buffer of that size at once (io.ReadAll would grow one from 512 bytes); the
// transport ends the body at its Content-Length, so a shorter body is a read error either way.
func readBody(resp *http.Response, limit int64) ([]byte, error) {
	if n := resp.ContentLength; n >= 0 && n < limit {
		b := make([]byte, n)
		got, err := io.ReadFull(resp.Body, b)
		if err == io.EOF { // nothing of a non-empty body
			err = io.ErrUnexpectedEOF
		}
		return b[:got], err
	}
	return io.ReadAll(io.LimitReader(resp.Body, limit))
}

// drainAndClose discards a bounded rest of the body so the connection can serve the next request.
func drainAndClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxDrain)
	_ = body.Close()
}

// CloseIdleConnections closes the connections kept for reuse; call it when done with the Client.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// String describes the client with the key redacted. The formatting methods take a value so that
// printing a dereferenced Client cannot reach its fields either.
func (c Client) String() string {
	return fmt.Sprintf("kustomer.Client{BaseURL: %q, Key: %s, Timeout: %s, UserAgent: %q}",
		c.baseURL, describeKey(c.keys), c.timeout, c.userAgent)
}

// GoString describes the client with the key redacted.
func (c Client) GoString() string { return c.String() }

// LogValue describes the client with the key redacted.
func (c Client) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", c.baseURL),
		slog.String("key", describeKey(c.keys)),
		slog.Duration("timeout", c.timeout),
		slog.String("user_agent", c.userAgent),
	)
}

// Format describes the client with the key redacted, for every verb.
func (c Client) Format(f fmt.State, verb rune) { formatRedacted(f, verb, c.String(), c.GoString()) }

// describeKey names a key source without its key: a KeyFile by its path, anything else by type.
func describeKey(k KeySource) string {
	switch k := k.(type) {
	case nil:
		return "<nil>"
	case *KeyFile:
		return k.String()
	case StaticKey:
		return redacted
	}
	return fmt.Sprintf("%T(%s)", k, redacted)
}

// redactURL hides the password of a URL, if it has one.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if strings.Contains(s, "@") {
			return redacted
		}
		return s
	}
	return redactedURL(u)
}

// redactedURL is u with its password, if it has one, replaced by the redaction marker
// (url.URL.Redacted writes another, and would escape this one).
func redactedURL(u *url.URL) string {
	if _, ok := u.User.Password(); !ok {
		return u.String()
	}
	ru := *u
	ru.User = url.User(u.User.Username())
	// The first '@' ends the user name: String escapes any in it.
	return strings.Replace(ru.String(), "@", ":"+redacted+"@", 1)
}

// idProblem says what is wrong with an invalid id, quoting at most its start.
func idProblem(id string) string {
	if id == "" {
		return "missing"
	}
	return fmt.Sprintf("%q is not 24 hexadecimal characters", logtext.Truncate(id, 40, ""))
}

// isControl reports ASCII control characters, which cannot go into a header.
func isControl(r rune) bool { return r < ' ' || r == 0x7f }

// optionsError lists every problem New found.
type optionsError []FieldError

func (e optionsError) Error() string {
	msgs := make([]string, len(e))
	for i, p := range e {
		msgs[i] = "Options." + p.Error()
	}
	return "kustomer: " + strings.Join(msgs, "; ")
}

// Unwrap gives the FieldErrors to errors.As.
func (e optionsError) Unwrap() []error {
	errs := make([]error, len(e))
	for i, p := range e {
		errs[i] = p
	}
	return errs
}
