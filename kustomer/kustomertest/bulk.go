package kustomertest

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bulk updates: PUT /v1/conversations/bulk creates a job of up to maxBulkItems partial updates,
// GET /v1/bulk/{id} and GET /v1/bulk/{id}/batches follow it. A job is queued for the first half
// of Config.BulkDuration and running for the second, its batches completing one after another;
// the items of a batch are applied when it completes, each exactly as a single PUT would be.

const (
	maxBulkItems  = 100
	maxClientRef  = 255
	maxBulkBody   = 10 << 20
	bulkSubmitURL = "/v1/conversations/bulk"
	bulkPrefix    = "/v1/bulk/"
)

// Item states of a job, as BulkItem.State and in the batches' results.
const (
	ItemPending = "pending" // not applied yet
	ItemUpdated = "updated" // applied
	ItemError   = "error"   // not applied; BulkItem.Error says why
)

// Job states, as BulkJob.State and in the answers.
const (
	JobQueued   = "queued"
	JobRunning  = "running"
	JobComplete = "complete"
)

// BulkJob is the fake's state of one bulk job, for tests and GET /_mock/bulk.
type BulkJob struct {
	ID         string     `json:"id"`
	State      string     `json:"state"` // JobQueued, JobRunning or JobComplete
	Submitted  time.Time  `json:"submitted"`
	CompleteAt time.Time  `json:"completeAt"` // when the last batch completes (or completed)
	Batches    int        `json:"batches"`
	Items      []BulkItem `json:"items"` // in the order submitted
}

// BulkItem is one item of a bulk job.
type BulkItem struct {
	Ref   string `json:"ref,omitempty"` // its _clientRef; "" when the submit had none
	ID    string `json:"id"`            // the conversation
	Batch int    `json:"batch"`         // 0, 1, ...: the batch it belongs to
	State string `json:"state"`         // ItemPending, ItemUpdated or ItemError
	Error string `json:"error,omitempty"`
	Rev   int64  `json:"rev,omitempty"` // the conversation's rev after the item was applied
}

// bulkItem is an item while its job runs. Guarded by bulkJobs.mu.
type bulkItem struct {
	ref    string
	id     string
	fields map[string]any // the attributes to apply; nil once settled
	fail   string         // decided at submit: the reason it will fail, "" to apply
	state  string
	err    string
	rev    int64
}

type bulkBatch struct {
	items      []int // indexes into job.items
	completeAt time.Time
	done       bool
	doneAt     time.Time
}

type bulkJob struct {
	id        string
	submitted time.Time
	runningAt time.Time
	withRefs  bool
	items     []*bulkItem
	batches   []*bulkBatch
	timer     *time.Timer // fires when the next batch is due; nil when none is
}

// bulkJobs holds every job; mu guards the jobs, their items and batches, and the timers.
type bulkJobs struct {
	mu     sync.Mutex
	seq    int
	jobs   map[string]*bulkJob
	order  []string // job ids in submit order
	closed bool     // set by Close: no timer is armed any more

	failMu sync.Mutex
	fails  map[string]string // conversation id -> reason every bulk item for it fails with

	scriptMu     sync.Mutex
	submitScript []Answer
	readScript   []Answer
}

func newBulkJobs() *bulkJobs {
	return &bulkJobs{jobs: make(map[string]*bulkJob), fails: make(map[string]string)}
}

// SetBulkReadDenied makes reads of bulk jobs answer 403, as for a key without the role
// org.permission.bulk.read, until it is called with false. Submits are not affected.
func (s *Server) SetBulkReadDenied(on bool) { s.bulkReadDenied.Store(on) }

// FailBulk makes every bulk item for conversation id applied from now on fail with reason
// instead of being applied; reason "" lifts it. Single PUTs of id are not affected.
func (s *Server) FailBulk(id, reason string) {
	b := s.bulk
	b.failMu.Lock()
	defer b.failMu.Unlock()
	if reason == "" {
		delete(b.fails, id)
	} else {
		b.fails[id] = reason
	}
}

// ScriptBulkSubmit queues answers for the next bulk submits, as Script does for updates: a
// Status answer creates no job, Drop creates none, Slow creates the job and answers late.
func (s *Server) ScriptBulkSubmit(answers ...Answer) {
	s.bulk.scriptMu.Lock()
	s.bulk.submitScript = append(s.bulk.submitScript, answers...)
	s.bulk.scriptMu.Unlock()
}

// ScriptBulkRead queues answers for the next reads of bulk jobs (job or batches).
func (s *Server) ScriptBulkRead(answers ...Answer) {
	s.bulk.scriptMu.Lock()
	s.bulk.readScript = append(s.bulk.readScript, answers...)
	s.bulk.scriptMu.Unlock()
}

// BulkJob returns a copy of the job id as it stands, and false if there is no such job.
func (s *Server) BulkJob(id string) (BulkJob, bool) {
	b := s.bulk
	b.mu.Lock()
	defer b.mu.Unlock()
	j, ok := b.jobs[id]
	if !ok {
		return BulkJob{}, false
	}
	now := time.Now()
	s.advance(j, now)
	return j.view(now), true
}

// BulkJobs returns copies of every job, in submit order.
func (s *Server) BulkJobs() []BulkJob {
	b := s.bulk
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	out := make([]BulkJob, 0, len(b.order))
	for _, id := range b.order {
		j := b.jobs[id]
		s.advance(j, now)
		out = append(out, j.view(now))
	}
	return out
}

func (j *bulkJob) view(now time.Time) BulkJob {
	v := BulkJob{
		ID: j.id, State: j.state(now), Submitted: j.submitted, Batches: len(j.batches),
		CompleteAt: j.batches[len(j.batches)-1].completeAt,
		Items:      make([]BulkItem, len(j.items)),
	}
	for bi, bt := range j.batches {
		for _, i := range bt.items {
			it := j.items[i]
			v.Items[i] = BulkItem{Ref: it.ref, ID: it.id, Batch: bi, State: it.state, Error: it.err, Rev: it.rev}
		}
	}
	return v
}

// state is the job's state at now.
func (j *bulkJob) state(now time.Time) string {
	if j.batches[len(j.batches)-1].done {
		return JobComplete
	}
	for _, bt := range j.batches {
		if bt.done {
			return JobRunning
		}
	}
	if now.Before(j.runningAt) {
		return JobQueued
	}
	return JobRunning
}

// advance completes the batches of j that are due at now, applying their items, and arms the
// timer for the next one. Called with b.mu held.
func (s *Server) advance(j *bulkJob, now time.Time) {
	for _, bt := range j.batches {
		if bt.done || now.Before(bt.completeAt) {
			continue
		}
		bt.done, bt.doneAt = true, now
		applied, failed := 0, 0
		for _, i := range bt.items {
			if s.settle(j.items[i]) {
				applied++
			} else {
				failed++
			}
		}
		s.log.bulkSettled(applied, failed)
	}
	s.arm(j, now)
}

// settle applies one item, or fails it, as a single PUT of its attributes would go.
func (s *Server) settle(it *bulkItem) bool {
	reason := it.fail
	if reason == "" {
		reason = s.bulkFailure(it.id)
	}
	if reason == "" {
		if st, ok := s.store.rejection(it.id); ok {
			reason = fmt.Sprintf("%d %s", st, http.StatusText(st))
		}
	}
	if reason == "" && s.cfg.RequireSeeded {
		if _, _, ok := s.store.get(it.id); !ok {
			reason = "conversation " + it.id + " not found"
		}
	}
	if reason != "" {
		it.state, it.err, it.fields = ItemError, reason, nil
		return false
	}
	it.rev, _ = s.store.apply(it.id, it.fields, false)
	it.state, it.fields = ItemUpdated, nil
	return true
}

func (s *Server) bulkFailure(id string) string {
	s.bulk.failMu.Lock()
	defer s.bulk.failMu.Unlock()
	return s.bulk.fails[id]
}

// arm sets j's timer for its next due batch. Called with b.mu held.
func (s *Server) arm(j *bulkJob, now time.Time) {
	if j.timer != nil {
		j.timer.Stop()
		j.timer = nil
	}
	if s.bulk.closed {
		return
	}
	for _, bt := range j.batches {
		if !bt.done {
			j.timer = time.AfterFunc(bt.completeAt.Sub(now), func() { s.tick(j) })
			return
		}
	}
}

func (s *Server) tick(j *bulkJob) {
	s.bulk.mu.Lock()
	defer s.bulk.mu.Unlock()
	if s.bulk.closed {
		return
	}
	s.advance(j, time.Now())
}

// closeBulk stops every timer; jobs not complete stay so.
func (s *Server) closeBulk() {
	b := s.bulk
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, j := range b.jobs {
		if j.timer != nil {
			j.timer.Stop()
			j.timer = nil
		}
	}
}

// nextBulkScript pops the next scripted answer for a submit or a read.
func (s *Server) nextBulkScript(submit bool) (Answer, bool) {
	b := s.bulk
	b.scriptMu.Lock()
	defer b.scriptMu.Unlock()
	q := &b.readScript
	if submit {
		q = &b.submitScript
	}
	if len(*q) == 0 {
		return Answer{}, false
	}
	a := (*q)[0]
	*q = (*q)[1:]
	return a, true
}

// parsedItem is one item of a submit that passed the structural checks.
type parsedItem struct {
	ref    string
	id     string
	fields map[string]any
	bad    []string // problems with its attributes
}

// parseBulk checks a submit's body for what Kustomer refuses as a whole (400): not an array,
// 0 or more than 100 items, an item that is not an object or has no valid id, mixed, invalid
// or duplicate _clientRefs. It returns the items, the conversation ids found, and the
// problems.
func parseBulk(body []byte) (items []parsedItem, ids []string, problems []string) {
	var raw []json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return nil, nil, []string{"the body must be a JSON array of 1 to 100 items"}
	}
	if len(raw) == 0 || len(raw) > maxBulkItems {
		return nil, nil, []string{fmt.Sprintf("%d items; a bulk update takes 1 to %d", len(raw), maxBulkItems)}
	}
	refs := make(map[string]int)
	withRef := 0
	for i, r := range raw {
		var fields map[string]any
		if json.Unmarshal(r, &fields) != nil || fields == nil {
			problems = append(problems, fmt.Sprintf("item %d: not a JSON object", i))
			continue
		}
		it := parsedItem{}
		id, _ := fields["id"].(string)
		if !validID(id) {
			problems = append(problems, fmt.Sprintf("item %d: id: %s is not a conversation id (24 lowercase hex characters)", i, show(fields["id"])))
		} else {
			it.id = id
			ids = append(ids, id)
		}
		if v, ok := fields["_clientRef"]; ok {
			withRef++
			ref, isStr := v.(string)
			switch {
			case !isStr || ref == "" || len(ref) > maxClientRef:
				problems = append(problems, fmt.Sprintf("item %d: _clientRef: %s is not a string of 1 to %d characters", i, show(v), maxClientRef))
			default:
				if j, dup := refs[ref]; dup {
					problems = append(problems, fmt.Sprintf("item %d: _clientRef: %q repeats item %d's", i, ref, j))
				}
				refs[ref] = i
				it.ref = ref
			}
		}
		delete(fields, "id")
		delete(fields, "_clientRef")
		it.fields = fields
		it.bad = validateBody(fields)
		items = append(items, it)
	}
	if withRef > 0 && withRef < len(raw) {
		problems = append(problems, fmt.Sprintf("_clientRef: %d of %d items have one; all or none must", withRef, len(raw)))
	}
	return items, ids, problems
}

// submitBulk validates a submit and creates its job; the reply is 201 with the job, or 400.
func (s *Server) submitBulk(r *http.Request, body []byte, readErr error, now time.Time) (reply, []string) {
	bad := func(msgs ...string) reply {
		return reply{status: http.StatusBadRequest, body: errorBody("bad_request", msgs...)}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return reply{status: http.StatusBadRequest, body: jsonAPIErrorBody(http.StatusBadRequest, "bad_request", "Content-Type must be application/json")}, nil
	}
	if readErr != nil {
		return bad("could not read the body"), nil
	}
	if len(body) > maxBulkBody {
		return reply{
			status: http.StatusRequestEntityTooLarge,
			body:   jsonAPIErrorBody(http.StatusRequestEntityTooLarge, "payload_too_large", "the body exceeds 10 MiB"),
		}, nil
	}
	items, ids, problems := parseBulk(body)
	if len(problems) > 0 {
		return bad(problems...), ids
	}
	if s.cfg.BulkStrict {
		for i, it := range items {
			for _, p := range it.bad {
				problems = append(problems, fmt.Sprintf("item %d: %s", i, p))
			}
		}
		if len(problems) > 0 {
			return bad(problems...), ids
		}
	}

	id, answer := s.newJob(items, now)
	return reply{status: http.StatusCreated, body: answer, job: id}, ids
}

// newJob creates a job for items submitted at now, completes what is already due, and returns
// the job's id and the answer describing it.
func (s *Server) newJob(items []parsedItem, now time.Time) (string, []byte) {
	b := s.bulk
	d := s.cfg.BulkDuration
	j := &bulkJob{submitted: now, runningAt: now.Add(d / 2), items: make([]*bulkItem, len(items))}
	for i, p := range items {
		it := &bulkItem{ref: p.ref, id: p.id, fields: p.fields, state: ItemPending}
		if len(p.bad) > 0 {
			it.fail = strings.Join(p.bad, "; ")
		} else if s.cfg.BulkFailRate > 0 && s.draw() < s.cfg.BulkFailRate {
			it.fail = "injected failure"
		}
		j.withRefs = j.withRefs || p.ref != ""
		j.items[i] = it
	}
	size := s.cfg.BulkBatchSize
	n := (len(items) + size - 1) / size
	for bi := range n {
		bt := &bulkBatch{completeAt: now.Add(d/2 + time.Duration(bi+1)*(d-d/2)/time.Duration(n))}
		for i := bi * size; i < min(len(items), (bi+1)*size); i++ {
			bt.items = append(bt.items, i)
		}
		j.batches = append(j.batches, bt)
	}
	j.batches[n-1].completeAt = now.Add(d) // exactly, whatever the rounding

	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	j.id = fmt.Sprintf("b0b0%020x", b.seq)
	b.jobs[j.id] = j
	b.order = append(b.order, j.id)
	s.log.bulkCreated(len(items))
	s.advance(j, now)
	return j.id, s.jobBody(j, now)
}

// draw returns a uniform random number from the fake's seeded source.
func (s *Server) draw() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

// readBulk answers GET /v1/bulk/{id} (batches false) or /v1/bulk/{id}/batches.
func (s *Server) readBulk(jobID string, batches bool, now time.Time) reply {
	b := s.bulk
	b.mu.Lock()
	j, ok := b.jobs[jobID]
	if ok {
		s.advance(j, now)
	}
	var body []byte
	switch {
	case !ok:
	case batches:
		body = s.batchesBody(j, now)
	default:
		body = s.jobBody(j, now)
	}
	b.mu.Unlock()
	if !ok {
		return reply{status: http.StatusNotFound, body: jsonAPIErrorBody(http.StatusNotFound, "not_found", "bulk operation "+jobID+" not found")}
	}
	return reply{status: http.StatusOK, body: body, job: jobID}
}

// resource renders a JSON:API resource, or with Config.BulkFlat its fields on the object.
func (s *Server) resource(typ, id string, attrs map[string]any) map[string]any {
	if s.cfg.BulkFlat {
		out := make(map[string]any, len(attrs)+2)
		for k, v := range attrs {
			out[k] = v
		}
		out["type"], out["id"] = typ, id
		return out
	}
	return map[string]any{"type": typ, "id": id, "attributes": attrs}
}

// jobBody is the answer to a submit or a job read. Called with b.mu held.
func (s *Server) jobBody(j *bulkJob, now time.Time) []byte {
	ids := make([]string, len(j.items))
	for i, it := range j.items {
		ids[i] = it.id
	}
	done := 0
	for _, bt := range j.batches {
		if bt.done {
			done++
		}
	}
	state := j.state(now)
	attrs := map[string]any{
		"status":     state,
		"completed":  state == JobComplete,
		"objectType": "conversation",
		"ids":        ids,
		"batches":    map[string]any{"complete": done, "total": len(j.batches)},
		"createdAt":  j.submitted.UTC().Format(time.RFC3339Nano),
	}
	return mustJSON(map[string]any{"data": s.resource("bulk", j.id, attrs)})
}

// batchesBody is the answer to a batches read. Called with b.mu held.
func (s *Server) batchesBody(j *bulkJob, now time.Time) []byte {
	state := j.state(now)
	list := make([]any, 0, len(j.batches))
	for bi, bt := range j.batches {
		if s.cfg.BulkUncounted && !bt.done {
			continue
		}
		status := "queued"
		if state != JobQueued {
			status = "scheduled"
		}
		objectIDs, errs := []string{}, []any{}
		var results []any
		if j.withRefs {
			results = []any{}
		}
		success, failure := 0, 0
		if bt.done {
			status = "complete"
			for _, i := range bt.items {
				it := j.items[i]
				res := map[string]any{"_clientRef": it.ref, "objectId": it.id, "status": it.state}
				if it.state == ItemUpdated {
					success++
					objectIDs = append(objectIDs, it.id)
				} else {
					failure++
					res["error"] = it.err
					errs = append(errs, map[string]any{"objectId": it.id, "message": it.err})
				}
				if j.withRefs {
					results = append(results, res)
				}
			}
		}
		attrs := map[string]any{
			"status": status, "objectIds": objectIDs, "successCount": success, "failureCount": failure, "errors": errs,
		}
		if bt.done {
			attrs["completedAt"] = bt.doneAt.UTC().Format(time.RFC3339Nano)
		}
		if results != nil {
			attrs["results"] = results
		}
		if s.cfg.BulkUncounted {
			delete(attrs, "successCount")
			delete(attrs, "failureCount")
		}
		list = append(list, s.resource("batch", j.id+"-"+strconv.Itoa(bi), attrs))
	}
	return mustJSON(map[string]any{"data": list})
}

// bulkRoute recognises the three bulk endpoints.
func bulkRoute(r *http.Request) (k kind, jobID string, ok bool) {
	if r.URL.Path == bulkSubmitURL {
		return kindBulkSubmit, "", r.Method == http.MethodPut
	}
	rest, found := strings.CutPrefix(r.URL.Path, bulkPrefix)
	if !found || r.Method != http.MethodGet || rest == "" {
		return 0, "", false
	}
	if id, sub, nested := strings.Cut(rest, "/"); nested {
		return kindBulkBatches, id, sub == "batches" && id != ""
	}
	return kindBulkJob, rest, true
}
