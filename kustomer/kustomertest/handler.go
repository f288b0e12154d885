package kustomertest

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxBody is the largest update body accepted; larger ones are answered 413.
const maxBody = 1 << 20

const conversationsPrefix = "/v1/conversations/"

// reply is the decided answer to one request.
type reply struct {
	status      int
	body        []byte
	contentType string
	rate        rateState
	retryAt     time.Time
	drop        bool
	delay       time.Duration
	unmatched   bool
	applied     bool
	unit        bool   // the request spent a unit of the org budget
	job         string // the bulk job created or read
}

// kind is what a request is for.
type kind int

const (
	kindUnmatched kind = iota
	kindUpdate
	kindBulkSubmit
	kindBulkJob
	kindBulkBatches
	kindRead
)

// String is the kind as Request.Kind shows it.
func (k kind) String() string {
	switch k {
	case kindUpdate:
		return KindUpdate
	case kindBulkSubmit:
		return KindBulkSubmit
	case kindBulkJob:
		return KindBulkJob
	case kindBulkBatches:
		return KindBulkBatches
	case kindRead:
		return KindRead
	}
	return ""
}

// serveAPI answers everything but /_mock: PUT and GET /v1/conversations/{id}, the bulk
// endpoints, and 404 otherwise.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	k, id := routeOf(r)
	convID := ""
	if k == kindUpdate || k == kindRead {
		convID = id
	}
	seq := s.log.begin(r.Method, r.URL.Path, r.URL.RawQuery, convID, k, now)

	limit := int64(maxBody)
	if k == kindBulkSubmit {
		limit = maxBulkBody
	}
	body, readErr := io.ReadAll(io.LimitReader(r.Body, limit+1))
	var (
		rep reply
		ids []string
	)
	switch k {
	case kindBulkSubmit, kindBulkJob, kindBulkBatches:
		rep, ids = s.decideBulk(r, now, k, id, body, readErr)
	case kindRead:
		rep = s.read(r, now, id)
	default:
		rep = s.decide(r, now, id, k == kindUpdate, body, readErr)
	}
	replace, _ := strconv.ParseBool(r.URL.Query().Get("replace"))
	if len(body) > maxBody {
		body = body[:maxBody]
	}

	sent := s.hold(r.Context(), rep.delay+s.latency())
	s.log.finish(seq, outcome{
		status:    rep.status,
		dropped:   sent && rep.drop,
		abandoned: !sent,
		unmatched: rep.unmatched,
		applied:   rep.applied,
		replace:   k == kindUpdate && replace,
		body:      body,
		kind:      k,
		job:       rep.job,
		ids:       ids,
		unit:      rep.unit,
	})
	switch {
	case !sent || rep.drop:
		// Returning without writing would send an empty 200: close the connection instead.
		dropConnection(w)
	default:
		s.write(w, rep, time.Now())
	}
}

// routeOf says what a request is for and the id in its path: the conversation of an update,
// the job of a bulk read.
func routeOf(r *http.Request) (kind, string) {
	if k, jobID, ok := bulkRoute(r); ok {
		return k, jobID
	}
	if id, ok := route(r); ok {
		if r.Method == http.MethodGet {
			return kindRead, id
		}
		return kindUpdate, id
	}
	return kindUnmatched, ""
}

// route extracts the conversation id of PUT or GET /v1/conversations/{id}.
func route(r *http.Request) (id string, ok bool) {
	rest, found := strings.CutPrefix(r.URL.Path, conversationsPrefix)
	if !found || (r.Method != http.MethodPut && r.Method != http.MethodGet) || rest == "" || strings.Contains(rest, "/") || rest == "bulk" {
		return "", false
	}
	return rest, true
}

// read answers GET /v1/conversations/{id}: the checks of an update (outage, key, org budget;
// no per-conversation limit, which concerns updates), then SetReadsDown, SetReadForbidden and,
// with Config.RejectReads, Reject; then the conversation, or 404 for an unknown one with
// Config.RequireSeeded. Scripts, ScriptAny and injected faults are the updates' alone.
func (s *Server) read(r *http.Request, now time.Time, id string) reply {
	if down := int(s.down.Load()); down != 0 {
		b, ct := statusBody(down)
		return reply{status: down, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	if !s.authorized(r) {
		b, ct := statusBody(http.StatusUnauthorized)
		return reply{status: http.StatusUnauthorized, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	if s.readForbidden.Load() {
		return reply{
			status: http.StatusForbidden,
			body:   errorBody("forbidden", "Forbidden: the API key lacks org.permission.conversation.read"),
			rate:   s.limiter.peek(now),
		}
	}
	if down := int(s.readsDown.Load()); down != 0 {
		b, ct := statusBody(down)
		return reply{status: down, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	rate := s.limiter.take("", now)
	if rate.verdict == orgLimited {
		return reply{
			status:  http.StatusTooManyRequests,
			body:    errorBody("too_many_requests", "Too Many Requests: the organization's rate limit is exceeded"),
			rate:    rate,
			retryAt: rate.retryAt,
		}
	}
	rep := s.readReply(id, now)
	rep.rate, rep.unit = rate, true
	return rep
}

// readReply is the answer to a read of id that passed the key and budget checks.
func (s *Server) readReply(id string, now time.Time) reply {
	if !validID(id) {
		return reply{status: http.StatusBadRequest, body: errorBody("bad_request", fmt.Sprintf("%q is not a valid conversation id", id))}
	}
	if st, ok := s.store.rejection(id); ok && s.cfg.RejectReads {
		return s.statusReply(id, st, now)
	}
	rev, attrs, ok := s.store.get(id)
	if !ok && s.cfg.RequireSeeded {
		return reply{
			status: http.StatusNotFound,
			body:   jsonAPIErrorBody(http.StatusNotFound, "not_found", "conversation "+id+" not found"),
		}
	}
	return reply{status: http.StatusOK, body: conversationBody(id, rev, attrs)}
}

// decideBulk runs the checks of a bulk request: authentication, role, org budget, scripted
// answers and faults, then the submit or the read itself. It returns the conversation ids of
// a submit's items.
func (s *Server) decideBulk(r *http.Request, now time.Time, k kind, jobID string, body []byte, readErr error) (reply, []string) {
	if !s.authorized(r) {
		b, ct := statusBody(http.StatusUnauthorized)
		return reply{status: http.StatusUnauthorized, body: b, contentType: ct, rate: s.limiter.peek(now)}, nil
	}
	submit := k == kindBulkSubmit
	if submit && s.forbidden.Load() {
		b, ct := statusBody(http.StatusForbidden)
		return reply{status: http.StatusForbidden, body: b, contentType: ct, rate: s.limiter.peek(now)}, nil
	}
	if down := int(s.writesDown.Load()); submit && down != 0 {
		b, ct := statusBody(down)
		return reply{status: down, body: b, contentType: ct, rate: s.limiter.peek(now)}, nil
	}
	if !submit && s.bulkReadDenied.Load() {
		return reply{
			status: http.StatusForbidden,
			body:   errorBody("forbidden", "Forbidden: the API key lacks org.permission.bulk.read"),
			rate:   s.limiter.peek(now),
		}, nil
	}
	rate := s.limiter.take("", now)
	if rate.verdict == orgLimited {
		return reply{
			status:  http.StatusTooManyRequests,
			body:    errorBody("too_many_requests", "Too Many Requests: the organization's rate limit is exceeded"),
			rate:    rate,
			retryAt: rate.retryAt,
		}, nil
	}

	a, scripted := s.nextBulkScript(submit)
	if !scripted {
		a, scripted = s.fault()
	}
	var (
		rep reply
		ids []string
	)
	switch {
	case scripted && a.Drop:
		rep = reply{drop: true}
	case scripted && a.Status != 0 && (a.Status < 200 || a.Status > 299):
		if submit && a.Done {
			_, ids = s.submitBulk(r, body, readErr, now)
		} else if a.Done {
			s.readBulk(jobID, k == kindBulkBatches, now)
		}
		b, ct := statusBody(a.Status)
		rep = reply{status: a.Status, body: b, contentType: ct}
		if a.Status == http.StatusTooManyRequests {
			rep.retryAt = now.Add(time.Second)
		}
	case submit:
		rep, ids = s.submitBulk(r, body, readErr, now)
	default:
		rep = s.readBulk(jobID, k == kindBulkBatches, now)
	}
	rep.rate, rep.unit, rep.delay = rate, true, a.Delay
	if a.Body != "" {
		rep.body = []byte(a.Body)
		rep.contentType = ""
	}
	return rep, ids
}

// decide runs the checks in Kustomer's order: route, authentication, org budget,
// conversation limit, scripted answers and faults, id, existence, request shape; then applies.
func (s *Server) decide(r *http.Request, now time.Time, id string, matched bool, body []byte, readErr error) reply {
	if !matched {
		return reply{
			status:    http.StatusNotFound,
			body:      jsonAPIErrorBody(http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)),
			rate:      s.limiter.peek(now),
			unmatched: true,
		}
	}
	if down := int(s.down.Load()); down != 0 {
		b, ct := statusBody(down)
		return reply{status: down, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	if !s.authorized(r) {
		b, ct := statusBody(http.StatusUnauthorized)
		return reply{status: http.StatusUnauthorized, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	if s.forbidden.Load() {
		b, ct := statusBody(http.StatusForbidden)
		return reply{status: http.StatusForbidden, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}
	if down := int(s.writesDown.Load()); down != 0 {
		b, ct := statusBody(down)
		return reply{status: down, body: b, contentType: ct, rate: s.limiter.peek(now)}
	}

	rate := s.limiter.take(id, now)
	switch rate.verdict {
	case orgLimited:
		return reply{
			status:  http.StatusTooManyRequests,
			body:    errorBody("too_many_requests", "Too Many Requests: the organization's rate limit is exceeded"),
			rate:    rate,
			retryAt: rate.retryAt,
		}
	case conversationLimited:
		return reply{
			status:  http.StatusTooManyRequests,
			body:    errorBody("too_many_requests", "Too Many Requests: too many updates to conversation "+id),
			rate:    rate,
			retryAt: rate.retryAt,
		}
	}

	a, scripted := s.scripted(id)
	if !scripted {
		a, scripted = s.fault()
	}
	var rep reply
	switch {
	case scripted && a.Drop:
		rep = reply{drop: true}
	case scripted && a.Status != 0 && a.Done && (a.Status < 200 || a.Status > 299):
		s.update(r, id, body, readErr)
		rep = s.statusReply(id, a.Status, now)
	case scripted && a.Status != 0:
		rep = s.statusReply(id, a.Status, now)
	default:
		rep = s.update(r, id, body, readErr)
	}
	rep.rate, rep.unit = rate, true
	rep.delay = a.Delay
	if a.Body != "" {
		rep.body = []byte(a.Body)
		rep.contentType = ""
	}
	return rep
}

// scripted returns the answer a Script, ScriptAny or Reject sets for the next request for id.
func (s *Server) scripted(id string) (Answer, bool) {
	if a, ok := s.store.nextScript(id); ok {
		return a, true
	}
	if a, ok := s.nextAny(); ok {
		return a, true
	}
	if st, ok := s.store.rejection(id); ok {
		return Status(st), true
	}
	return Answer{}, false
}

func (s *Server) authorized(r *http.Request) bool {
	want := *s.key.Load()
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || want == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(want)) == 1
}

// statusReply is a scripted or injected answer with a fixed status; nothing is applied.
func (s *Server) statusReply(id string, status int, now time.Time) reply {
	if status >= 200 && status < 300 {
		rev, attrs, _ := s.store.get(id)
		return reply{status: status, body: conversationBody(id, rev, attrs)}
	}
	b, ct := statusBody(status)
	rep := reply{status: status, body: b, contentType: ct}
	if status == http.StatusTooManyRequests {
		rep.retryAt = now.Add(time.Second)
	}
	return rep
}

// update validates the request and applies it.
func (s *Server) update(r *http.Request, id string, body []byte, readErr error) reply {
	bad := func(b []byte) reply { return reply{status: http.StatusBadRequest, body: b} }
	if !validID(id) {
		return bad(errorBody("bad_request", fmt.Sprintf("%q is not a valid conversation id", id)))
	}
	if s.cfg.RequireSeeded {
		if _, _, ok := s.store.get(id); !ok {
			return reply{
				status: http.StatusNotFound,
				body:   jsonAPIErrorBody(http.StatusNotFound, "not_found", "conversation "+id+" not found"),
			}
		}
	}
	replace := false
	if v := r.URL.Query().Get("replace"); v != "" {
		var err error
		if replace, err = strconv.ParseBool(v); err != nil {
			return bad(errorBody("bad_request", fmt.Sprintf("query parameter replace: %q is not a boolean", v)))
		}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return bad(jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "Content-Type must be application/json"))
	}
	if readErr != nil {
		return bad(jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "could not read the body"))
	}
	if len(body) > maxBody {
		return reply{
			status: http.StatusRequestEntityTooLarge,
			body:   jsonAPIErrorBody(http.StatusRequestEntityTooLarge, "payload_too_large", "the body exceeds 1 MiB"),
		}
	}
	var fields map[string]any
	if err := json.Unmarshal(body, &fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return bad(jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "the body must be a JSON object"))
		}
		return bad(jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "the body is not valid JSON: "+err.Error()))
	}
	if fields == nil {
		return bad(jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "the body must be a JSON object"))
	}
	if problems := validateBody(fields); len(problems) > 0 {
		return bad(errorBody("bad_request", problems...))
	}
	rev, attrs := s.store.apply(id, fields, replace)
	return reply{status: http.StatusOK, body: conversationBody(id, rev, attrs), applied: true}
}

// write sends rep, with the rate-limit headers as of now.
func (s *Server) write(w http.ResponseWriter, rep reply, now time.Time) {
	h := w.Header()
	if !rep.rate.unlimited && !s.cfg.RateHeadersAbsent {
		h.Set("X-Ratelimit-Limit", strconv.Itoa(rep.rate.limit))
		h.Set("X-Ratelimit-Remaining", strconv.Itoa(rep.rate.remaining))
		if !s.cfg.ResetAbsent {
			h.Set("X-Ratelimit-Reset", strconv.FormatInt(s.resetValue(rep.rate.reset, now), 10))
		}
	}
	if rep.status == http.StatusTooManyRequests && s.cfg.RetryAfter {
		h.Set("Retry-After", strconv.FormatInt(max(1, ceilSeconds(rep.retryAt.Sub(now))), 10))
	}
	ct := rep.contentType
	if ct == "" {
		ct = contentJSON
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(rep.body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

// resetValue is x-ratelimit-reset for a window ending at end, answered at now.
func (s *Server) resetValue(end, now time.Time) int64 {
	switch {
	case s.cfg.ResetDelta && s.cfg.ResetRoundDown:
		return floorSeconds(end.Sub(now))
	case s.cfg.ResetDelta:
		return ceilSeconds(end.Sub(now))
	case s.cfg.ResetRoundDown:
		return floorUnix(end)
	}
	return ceilUnix(end)
}

// dropConnection closes the client's connection without an answer.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2 or a wrapping writer): abort the response instead.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
