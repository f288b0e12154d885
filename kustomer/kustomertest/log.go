package kustomertest

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Request is one request the fake received, as recorded in its log. It holds no headers, so
// no API key.
type Request struct {
	Seq      int       `json:"seq"`            // 1, 2, ... in arrival order
	Method   string    `json:"method"`         // e.g. "PUT"
	Path     string    `json:"path"`           // e.g. "/v1/conversations/5f...": unescaped
	RawQuery string    `json:"rawQuery"`       // e.g. "replace=true"
	Kind     string    `json:"kind,omitempty"` // KindUpdate, KindRead, KindBulkSubmit, KindBulkJob, KindBulkBatches; "" for unmatched routes
	ID       string    `json:"id"`             // the conversation id from the path of an update or a read, as sent; "" for other requests
	IDs      []string  `json:"ids,omitempty"`  // for a bulk submit: the valid conversation ids of its items, in order
	Job      string    `json:"job,omitempty"`  // for a bulk read: the job id of the path; for a bulk submit: the job created
	Replace  bool      `json:"replace"`        // ?replace=true was given
	Body     []byte    `json:"body"`           // the body as received (at most 1 MiB); nil with Config.DiscardBodies
	Time     time.Time `json:"time"`           // arrival
	Status   int       `json:"status"`         // status answered; 0 = connection dropped without an answer
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

// The kinds of request, as Request.Kind.
const (
	KindUpdate      = "update"       // PUT /v1/conversations/{id}
	KindBulkSubmit  = "bulk_submit"  // PUT /v1/conversations/bulk
	KindBulkJob     = "bulk_job"     // GET /v1/bulk/{id}
	KindBulkBatches = "bulk_batches" // GET /v1/bulk/{id}/batches
	KindRead        = "read"         // GET /v1/conversations/{id}
)

// Stats counts the requests the fake answered, /_mock requests excepted. Once no request is
// in flight, Requests = sum(ByStatus) + Dropped + Abandoned.
type Stats struct {
	Requests  int         `json:"requests"`  // every finished request, including unmatched ones
	ByStatus  map[int]int `json:"byStatus"`  // answers sent, by status
	Dropped   int         `json:"dropped"`   // connections closed without an answer
	Abandoned int         `json:"abandoned"` // answers not sent because the client went away first
	Unmatched int         `json:"unmatched"` // requests for none of the fake's endpoints (answered 404)
	Applied   int         `json:"applied"`   // updates applied: by single PUTs (200s, and abandoned requests that were applied) and by bulk items
	Reads     int         `json:"reads"`     // reads of a conversation (GET /v1/conversations/{id}) finished, whatever their answer
	Units     int         `json:"units"`     // org budget units spent: finished requests of any kind that got past authentication and the rate limits (counted also with an unlimited budget)

	BulkSubmits     int `json:"bulkSubmits"`     // bulk submit requests finished, whatever their answer
	BulkJobs        int `json:"bulkJobs"`        // bulk jobs created
	BulkReads       int `json:"bulkReads"`       // reads of bulk jobs and their batches finished, whatever their answer
	BulkItems       int `json:"bulkItems"`       // items of the jobs created
	BulkItemsDone   int `json:"bulkItemsDone"`   // items applied (also counted in Applied)
	BulkItemsFailed int `json:"bulkItemsFailed"` // items that failed

	Others OthersStats `json:"others"` // the requests of the org's other clients (Config.Others), not counted above
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
	kind      kind
	job       string
	ids       []string
	unit      bool
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
	units    int
	reads    int
	bulk     struct{ submits, jobs, reads, items, done, failed int }
}

func newRequestLog(cfg Config) *requestLog {
	return &requestLog{keep: !cfg.DisableLog, keepBodies: !cfg.DiscardBodies, byStatus: make(map[int]int)}
}

// begin records a request's arrival and returns its Seq.
func (l *requestLog) begin(method, path, rawQuery, id string, k kind, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	if l.keep {
		l.entries = append(l.entries, logEntry{req: Request{
			Seq: l.seq, Method: method, Path: path, RawQuery: rawQuery, Kind: k.String(), ID: id, Time: now,
		}})
	}
	return l.seq
}

// bulkCreated counts a job of n items.
func (l *requestLog) bulkCreated(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bulk.jobs++
	l.bulk.items += n
}

// bulkSettled counts the items of a completed batch.
func (l *requestLog) bulkSettled(applied, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.applied += applied
	l.bulk.done += applied
	l.bulk.failed += failed
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
	if o.unit {
		l.units++
	}
	switch o.kind {
	case kindBulkSubmit:
		l.bulk.submits++
	case kindBulkJob, kindBulkBatches:
		l.bulk.reads++
	case kindRead:
		l.reads++
	}
	if !l.keep {
		return
	}
	e := &l.entries[seq-1]
	e.done = true
	e.req.Job = o.job
	if o.kind == kindBulkJob || o.kind == kindBulkBatches {
		e.req.Job = strings.TrimSuffix(strings.TrimPrefix(e.req.Path, bulkPrefix), "/batches")
	}
	e.req.IDs = o.ids
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
		r.IDs = slices.Clone(r.IDs)
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
		Units:     l.units,
		Reads:     l.reads,

		BulkSubmits:     l.bulk.submits,
		BulkJobs:        l.bulk.jobs,
		BulkReads:       l.bulk.reads,
		BulkItems:       l.bulk.items,
		BulkItemsDone:   l.bulk.done,
		BulkItemsFailed: l.bulk.failed,
	}
}
