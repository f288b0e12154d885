package kustomertest

import (
	"bytes"
	"encoding/json"
	"maps"
	"sync"
	"time"
)

// Request is one request the fake received, as recorded in its log. It holds no headers, so
// no API key.
type Request struct {
	Seq      int       `json:"seq"`      // 1, 2, ... in arrival order
	Method   string    `json:"method"`   // e.g. "PUT"
	Path     string    `json:"path"`     // e.g. "/v1/conversations/5f...": unescaped
	RawQuery string    `json:"rawQuery"` // e.g. "replace=true"
	ID       string    `json:"id"`       // the conversation id from the path, as sent; "" for unmatched routes
	Replace  bool      `json:"replace"`  // ?replace=true was given
	Body     []byte    `json:"body"`     // the body as received (at most 1 MiB); nil with Config.DiscardBodies
	Time     time.Time `json:"time"`     // arrival
	Status   int       `json:"status"`   // status answered; 0 = connection dropped without an answer
	// Abandoned: the client went away while the answer was held back (Latency, a slow
	// answer); Status is what it would have got, and an update is applied all the same.
	Abandoned bool `json:"abandoned,omitempty"`
}

// MarshalJSON embeds a JSON body as JSON; any other body becomes a JSON string.
func (r Request) MarshalJSON() ([]byte, error) {
	type plain Request
	var body json.RawMessage
	switch {
	case r.Body == nil:
	case json.Valid(r.Body):
		body = r.Body
	default:
		b, err := json.Marshal(string(r.Body))
		if err != nil {
			return nil, err
		}
		body = b
	}
	return json.Marshal(struct {
		plain
		Body json.RawMessage `json:"body"`
	}{plain(r), body})
}

// UnmarshalJSON reverses MarshalJSON, so a test can read GET /_mock/requests into []Request.
// A body sent as a JSON string comes back as its text.
func (r *Request) UnmarshalJSON(data []byte) error {
	type plain Request
	var v struct {
		plain
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*r = Request(v.plain)
	r.Body = nil
	switch b := bytes.TrimSpace(v.Body); {
	case len(b) == 0, string(b) == "null":
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		r.Body = []byte(s)
	default:
		r.Body = append([]byte(nil), b...)
	}
	return nil
}

// Stats counts the requests the fake answered, /_mock requests excepted. Once no request is
// in flight, Requests = sum(ByStatus) + Dropped + Abandoned.
type Stats struct {
	Requests  int         `json:"requests"`  // every finished request, including unmatched ones
	ByStatus  map[int]int `json:"byStatus"`  // answers sent, by status
	Dropped   int         `json:"dropped"`   // connections closed without an answer
	Abandoned int         `json:"abandoned"` // answers not sent because the client went away first
	Unmatched int         `json:"unmatched"` // requests for anything but PUT /v1/conversations/{id} (answered 404)
	Applied   int         `json:"applied"`   // updates applied (200s, and abandoned requests that were applied)
}

// outcome is what finish records about a request.
type outcome struct {
	status    int
	dropped   bool
	abandoned bool
	unmatched bool
	applied   bool
	replace   bool
	body      []byte
}

type logEntry struct {
	req  Request
	done bool
}

// requestLog is the per-request log and the counters. Its lock is held only to append or
// update an entry.
type requestLog struct {
	keep       bool
	keepBodies bool

	mu       sync.Mutex
	seq      int
	entries  []logEntry // entries[i].req.Seq == i+1 when keep
	byStatus map[int]int
	dropped  int
	abandon  int
	unmatch  int
	applied  int
}

func newRequestLog(cfg Config) *requestLog {
	return &requestLog{keep: !cfg.DisableLog, keepBodies: !cfg.DiscardBodies, byStatus: make(map[int]int)}
}

// begin records a request's arrival and returns its Seq.
func (l *requestLog) begin(method, path, rawQuery, id string, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	if l.keep {
		l.entries = append(l.entries, logEntry{req: Request{
			Seq: l.seq, Method: method, Path: path, RawQuery: rawQuery, ID: id, Time: now,
		}})
	}
	return l.seq
}

// finish records how the request with this Seq ended. It runs before the answer is written,
// so a client that has its answer finds the request in the log.
func (l *requestLog) finish(seq int, o outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case o.dropped:
		l.dropped++
	case o.abandoned:
		l.abandon++
	default:
		l.byStatus[o.status]++
	}
	if o.unmatched {
		l.unmatch++
	}
	if o.applied {
		l.applied++
	}
	if !l.keep {
		return
	}
	e := &l.entries[seq-1]
	e.done = true
	e.req.Replace = o.replace
	e.req.Abandoned = o.abandoned
	if !o.dropped {
		e.req.Status = o.status
	}
	if l.keepBodies {
		e.req.Body = o.body
	}
}

// requests copies the finished entries for which keep returns true.
func (l *requestLog) requests(keep func(*Request) bool) []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Request, 0, len(l.entries))
	for i := range l.entries {
		e := &l.entries[i]
		if !e.done || (keep != nil && !keep(&e.req)) {
			continue
		}
		r := e.req
		if r.Body != nil {
			r.Body = bytes.Clone(r.Body)
		}
		out = append(out, r)
	}
	return out
}

func (l *requestLog) stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.dropped + l.abandon // every finished request is counted in exactly one of these or byStatus
	for _, c := range l.byStatus {
		n += c
	}
	return Stats{
		Requests:  n,
		ByStatus:  maps.Clone(l.byStatus),
		Dropped:   l.dropped,
		Abandoned: l.abandon,
		Unmatched: l.unmatch,
		Applied:   l.applied,
	}
}
