package kustomer

import (
	"github.com/kustomer-worker/kustomer-worker/internal/logtext"

	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bulk updates: PUT /v1/conversations/bulk applies up to MaxBulkItems partial updates for one
// unit of the org budget, asynchronously. SubmitBulk starts a job, ReadBulkJob and
// ReadBulkBatches follow it (each read costs a unit too), and BulkBatches.Outcomes says what
// became of every item. Part of the answers' shape is unpublished, so they are read leniently:
// fields in a JSON:API envelope (data.attributes) or directly on the object, per-item results
// by _clientRef when Kustomer sends them, otherwise the batches' objectIds as the successes.

// MaxBulkItems is the most items one bulk update may carry.
const MaxBulkItems = 100

// MaxClientRefLen is the longest _clientRef Kustomer accepts, in bytes.
const MaxClientRefLen = 255

const (
	// maxBulkAnswer is how much of a 2xx bulk answer is read; a longer one is malformed.
	maxBulkAnswer = 8 << 20
	// maxJobIDLen bounds a job id taken from an answer; it goes into request paths.
	maxJobIDLen = 128
)

// BulkItem is one item of a bulk update: a partial update of one conversation.
type BulkItem struct {
	// Ref is the item's _clientRef, by which Kustomer reports the item's own result: a
	// non-empty string of at most MaxClientRefLen bytes, unique in its submit. Either every
	// item of a submit has a Ref or none has; without Refs, Kustomer reports only which
	// conversations were updated, not why the others failed.
	Ref string
	// Update is the update of one conversation: its ID and a body that passes ValidateBody
	// (attributes, or {"customer": "<id>"} to move it). Replace must be false: bulk updates
	// are partial, so a replace has to go as a single PUT with UpdateConversation.
	Update Update
}

// BulkJob is what Kustomer said about a bulk job, in the answer to SubmitBulk or ReadBulkJob.
type BulkJob struct {
	ID              string    // the job's id, for ReadBulkJob and ReadBulkBatches
	State           string    // the job's status, lowercased: "queued", "running", "complete"; "" when not said
	Completed       bool      // Kustomer says the job is done: its "completed" flag, or State "complete"
	BatchesComplete int       // batches done; -1 when not said
	BatchesTotal    int       // batches in the job; -1 when not said
	ConversationIDs []string  // the job's "ids", when said
	Status          int       // HTTP status of the answer (201 for a submit)
	RateLimit       RateLimit // the rate-limit headers of the answer
}

// BulkBatches is the answer to ReadBulkBatches: the batches a job has been split into so far.
type BulkBatches struct {
	JobID     string
	Batches   []BulkBatch
	Status    int       // HTTP status of the answer
	RateLimit RateLimit // the rate-limit headers of the answer
	// Job is the job's own status (ReadBulkJob), set by the caller when NeedsJob says the
	// batches cannot tell whether the job is complete; nil until then.
	Job *BulkJob
}

// BulkBatch is one batch of a bulk job.
type BulkBatch struct {
	ID           string
	State        string       // lowercased: "queued", "scheduled", "complete"; "" when not said
	ObjectIDs    []string     // "objectIds": without Results, the conversations updated
	SuccessCount int          // -1 when not said
	FailureCount int          // -1 when not said
	CompletedAt  time.Time    // zero when not said
	Errors       []BulkError  // the batch's "errors"
	Results      []BulkResult // per-item results; nil when the batch has none
}

// BulkResult is Kustomer's result for one item, sent when the items carried a _clientRef.
type BulkResult struct {
	Ref      string // the item's _clientRef
	ObjectID string // the conversation
	Status   string // lowercased: "updated", "error"
	Error    string // Kustomer's reason for a failed item, one line
}

// BulkError is one entry of a batch's "errors": a reason, and the item it names if any.
type BulkError struct {
	ObjectID string // "" when the entry names no conversation
	Ref      string // "" when the entry names no _clientRef
	Reason   string
}

// ItemState is what became of one item of a bulk job.
type ItemState int

const (
	ItemPending   ItemState = iota // not settled yet: read the batches again later
	ItemSucceeded                  // Kustomer applied the update
	ItemFailed                     // Kustomer did not apply it; Reason says why
)

func (s ItemState) String() string {
	switch s {
	case ItemPending:
		return "pending"
	case ItemSucceeded:
		return "succeeded"
	case ItemFailed:
		return "failed"
	}
	return fmt.Sprintf("ItemState(%d)", int(s))
}

// ItemOutcome is what became of one item of a bulk job.
type ItemOutcome struct {
	State  ItemState
	Reason string // for ItemFailed: Kustomer's reason, or why the item counts as failed
}

// SubmitBulk starts a bulk job: PUT /v1/conversations/bulk with items as a JSON array, each
// item the update's body with "id" and "_clientRef" beside its attributes. The job runs
// asynchronously; follow it with ReadBulkBatches (or ReadBulkJob).
//
// Errors: a *ValidationError (no request made) when items is empty or longer than
// MaxBulkItems, an item's Ref is too long, missing beside others or repeated, an item is a
// replace, two items update the same conversation (Kustomer does not promise their order),
// or an update fails Update.Validate; problem fields start with "items[i]". Otherwise as
// UpdateConversation: the caller's context error, or an *APIError with Op OpSubmitBulk. A 2xx
// answer without a usable job id is an *APIError matching ErrMalformedAnswer: the job may
// exist, so treat it like a submit whose answer was lost, not like a refused one.
func (c *Client) SubmitBulk(ctx context.Context, items []BulkItem) (*BulkJob, error) {
	body, err := bulkBody(items)
	if err != nil {
		return nil, err
	}
	ans, err := c.bulkDo(ctx, call{
		op: OpSubmitBulk, subject: fmt.Sprintf("submit bulk update of %d items", len(items)),
		method: http.MethodPut, url: c.convURL + "bulk", body: body, limit: maxBulkAnswer,
	})
	if err != nil {
		return nil, err
	}
	job, problem := parseJob(ans.body)
	if p := ans.unreadable(); p != "" {
		problem = p
	}
	if problem != "" {
		return nil, ans.malformed(OpSubmitBulk, "Kustomer accepted the bulk update, but "+problem)
	}
	job.Status, job.RateLimit = ans.status, ans.rateLimit
	return &job, nil
}

// ReadBulkJob reads a job's status: GET /v1/bulk/{id}. It costs one unit of the org budget.
//
// Errors: a *ValidationError (no request made) for an empty or unusable id; the caller's
// context error; an *APIError with Op OpReadBulkJob, matching ErrBulkReadDenied on a 403 and
// ErrMalformedAnswer on an unreadable 2xx answer (read again later).
func (c *Client) ReadBulkJob(ctx context.Context, jobID string) (*BulkJob, error) {
	if p := jobIDProblem(jobID); p != "" {
		return nil, &ValidationError{Problems: []FieldError{{Field: "jobID", Problem: p}}}
	}
	ans, err := c.bulkDo(ctx, call{
		op: OpReadBulkJob, subject: "read bulk job", of: jobID,
		method: http.MethodGet, url: c.bulkURL + url.PathEscape(jobID), limit: maxBulkAnswer,
	})
	if err != nil {
		return nil, err
	}
	job, problem := parseJob(ans.body)
	switch p := ans.unreadable(); {
	case p != "":
		problem = p
	case problem == "" && !strings.EqualFold(job.ID, jobID):
		problem = "the answer is about another job"
	}
	if problem != "" {
		return nil, ans.malformed(OpReadBulkJob, problem)
	}
	job.ID = jobID
	job.Status, job.RateLimit = ans.status, ans.rateLimit
	return &job, nil
}

// ReadBulkBatches reads a job's batches, with the per-item results of the finished ones:
// GET /v1/bulk/{id}/batches. It costs one unit of the org budget and tells whether the job is
// complete, so following a job needs no ReadBulkJob. Errors as ReadBulkJob, with Op
// OpReadBulkBatches.
func (c *Client) ReadBulkBatches(ctx context.Context, jobID string) (*BulkBatches, error) {
	if p := jobIDProblem(jobID); p != "" {
		return nil, &ValidationError{Problems: []FieldError{{Field: "jobID", Problem: p}}}
	}
	ans, err := c.bulkDo(ctx, call{
		op: OpReadBulkBatches, subject: "read bulk job batches", of: jobID,
		method: http.MethodGet, url: c.bulkURL + url.PathEscape(jobID) + "/batches", limit: maxBulkAnswer,
	})
	if err != nil {
		return nil, err
	}
	batches, problem := parseBatches(ans.body)
	if p := ans.unreadable(); p != "" {
		problem = p
	}
	if problem != "" {
		return nil, ans.malformed(OpReadBulkBatches, problem)
	}
	return &BulkBatches{JobID: jobID, Batches: batches, Status: ans.status, RateLimit: ans.rateLimit}, nil
}

// bulkDo is do for the bulk calls, whose answers are read to the end: when the caller's
// context ends while the body is read, the context's error is returned.
func (c *Client) bulkDo(ctx context.Context, cl call) (*reply, error) {
	ans, err := c.do(ctx, cl)
	if err == nil && ans.readErr != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("kustomer: %s: %w", cl.name(), ctxErr)
		}
	}
	return ans, err
}

// unreadable says why a body that parsed is still not to be trusted: cut short, or not read
// to its end.
func (a *reply) unreadable() string {
	switch {
	case a.truncated:
		return fmt.Sprintf("the answer is longer than %d bytes", maxBulkAnswer)
	case a.readErr != nil:
		return "the answer could not be read to its end"
	}
	return ""
}

// malformed describes a 2xx answer that cannot be used. It is transient: a read can be
// repeated, and a submit may have created a job.
func (a *reply) malformed(op Op, problem string) *APIError {
	e := &APIError{Op: op, Status: a.status, Class: ClassTransient, RateLimit: a.rateLimit, Reason: problem}
	if a.rateLimit.RetryAfter > 0 {
		e.Wait = min(a.rateLimit.RetryAfter, MaxWait)
	}
	e.Body = logtext.Truncate(scrub(string(a.body), a.key), MaxErrorBody, "")
	return e
}

// Done reports whether the batch is finished: its status says so, or it has a completedAt.
func (b BulkBatch) Done() bool {
	switch b.State {
	case "complete", "completed", "done", "finished", "success", "succeeded", "failed", "failure", "error", "errored":
		return true
	}
	return !b.CompletedAt.IsZero()
}

// Complete reports whether the job is finished as far as its batches tell: it has at least
// one batch and every batch is done.
func (b *BulkBatches) Complete() bool {
	if len(b.Batches) == 0 {
		return false
	}
	for _, bt := range b.Batches {
		if !bt.Done() {
			return false
		}
	}
	return true
}

// Outcomes says what became of each of items (the items of the job, as submitted; only Ref
// and Update.ID are used), index by index.
//
// A result with an error, or one an error of its batch names, is a failure whatever its
// status says.
//
// An item is settled by its result (matched by Ref, else by conversation id), by a batch
// error naming it, or, in a done batch without results, by its conversation being listed in
// objectIds. Items still unsettled stay ItemPending while the job is not Complete, or while
// the batches' counts add up to fewer items than were sent (more batches may come); once the
// job is complete they count as ItemFailed with a reason saying Kustomer did not report them
// as updated. A done batch that reports failures without naming them, and lists as many
// objectIds as it had items, settles its items as failed too: a failed item is meant to be
// sent again as a single PUT, which is safe for one that did succeed, while the other
// mistake would lose an update.
//
// When the batches give no counts, every batch listed being done does not prove the job
// complete: batches not listed yet may follow. With Job set (see NeedsJob), the job's own
// status and batch total decide; without it, the listed batches do.
func (b *BulkBatches) Outcomes(items []BulkItem) []ItemOutcome {
	return b.outcomes(items, true)
}

// NeedsJob reports whether Outcomes would count some of items failed only because every
// batch listed is done, while the batches give no counts: the caller should first read the
// job's own status (ReadBulkJob) into Job.
func (b *BulkBatches) NeedsJob(items []BulkItem) bool {
	if b.Job != nil || !b.Complete() {
		return false
	}
	for _, bt := range b.Batches {
		if bt.SuccessCount < 0 || bt.FailureCount < 0 {
			return slices.ContainsFunc(b.outcomes(items, false), func(o ItemOutcome) bool { return o.State == ItemPending })
		}
	}
	return false
}

// completeFor reports whether the job of n items is complete, its batches done and, as far
// as reported says (when counted), accounting for every item; without counts, Job decides
// when set.
func (b *BulkBatches) completeFor(n, reported int, counted bool) bool {
	switch {
	case !b.Complete():
		return false
	case counted:
		return reported >= n
	case b.Job != nil:
		return b.Job.Completed && (b.Job.BatchesTotal < 0 || len(b.Batches) >= b.Job.BatchesTotal)
	}
	return true
}

// outcomes is Outcomes; unless mayComplete, unsettled items stay pending.
func (b *BulkBatches) outcomes(items []BulkItem, mayComplete bool) []ItemOutcome {
	type listed struct {
		batch     int
		ambiguous bool // the batch failed items without naming them
	}
	var (
		byRef     = make(map[string]BulkResult)
		byID      = make(map[string]BulkResult)
		errByRef  = make(map[string]string)
		errByID   = make(map[string]string)
		inObjects = make(map[string]listed)
		unnamed   []string // reasons of errors that name no item
		reported  = 0      // items the batches' counts account for
		counted   = true   // every batch gave both counts
	)
	for i, bt := range b.Batches {
		for _, r := range bt.Results {
			if r.Ref != "" {
				byRef[r.Ref] = r
			}
			if r.ObjectID != "" {
				byID[strings.ToLower(r.ObjectID)] = r
			}
		}
		for _, e := range bt.Errors {
			switch {
			case e.Ref != "":
				errByRef[e.Ref] = e.Reason
			case e.ObjectID != "":
				errByID[strings.ToLower(e.ObjectID)] = e.Reason
			case e.Reason != "":
				unnamed = append(unnamed, e.Reason)
			}
		}
		if bt.Done() && bt.Results == nil {
			ambiguous := bt.FailureCount > 0 && len(bt.ObjectIDs) != bt.SuccessCount
			for _, id := range bt.ObjectIDs {
				inObjects[strings.ToLower(id)] = listed{batch: i, ambiguous: ambiguous}
			}
		}
		if bt.SuccessCount < 0 || bt.FailureCount < 0 {
			counted = false
		} else {
			reported += bt.SuccessCount + bt.FailureCount
		}
	}
	complete := mayComplete && b.completeFor(len(items), reported, counted)

	out := make([]ItemOutcome, len(items))
	for i, it := range items {
		id := strings.ToLower(it.Update.ID)
		r, found := byRef[it.Ref] // no result has an empty Ref in byRef
		if !found {
			r, found = byID[id]
		}
		if found {
			st := resultState(r)
			if named, ok := namedError(errByRef, it.Ref, errByID, id); ok && st == ItemSucceeded {
				out[i] = ItemOutcome{State: ItemFailed, Reason: orDefault(named, "Kustomer reported an error for the item")}
				continue
			}
			if st != ItemPending {
				out[i] = ItemOutcome{State: st}
				if st == ItemFailed {
					out[i].Reason = orDefault(r.Error, "Kustomer reported the item as "+orDefault(r.Status, "failed"))
				}
				continue
			}
		}
		if reason, ok := errByRef[it.Ref]; ok && it.Ref != "" {
			out[i] = ItemOutcome{State: ItemFailed, Reason: orDefault(reason, "Kustomer reported an error for the item")}
			continue
		}
		if reason, ok := errByID[id]; ok {
			out[i] = ItemOutcome{State: ItemFailed, Reason: orDefault(reason, "Kustomer reported an error for the conversation")}
			continue
		}
		if l, ok := inObjects[id]; ok {
			if !l.ambiguous {
				out[i] = ItemOutcome{State: ItemSucceeded}
				continue
			}
			bt := b.Batches[l.batch]
			out[i] = ItemOutcome{State: ItemFailed, Reason: fmt.Sprintf(
				"batch %s reported %d failures without naming them", orDefault(bt.ID, strconv.Itoa(l.batch)), bt.FailureCount)}
			continue
		}
		if complete {
			reason := "the completed job did not report the item as updated"
			if len(unnamed) > 0 {
				reason += ": " + logtext.Truncate(strings.Join(unnamed, "; "), maxReason, "")
			}
			out[i] = ItemOutcome{State: ItemFailed, Reason: reason}
		}
	}
	return out
}

// namedError is the reason of a batch error naming the item (by ref, else by conversation id).
func namedError(byRef map[string]string, ref string, byID map[string]string, id string) (string, bool) {
	if reason, ok := byRef[ref]; ok && ref != "" {
		return reason, true
	}
	reason, ok := byID[id]
	return reason, ok
}

// resultState reads a result's status; a result with an error counts as failed, whatever its
// status says.
func resultState(r BulkResult) ItemState {
	if r.Error != "" {
		return ItemFailed
	}
	switch r.Status {
	case "updated", "update", "success", "succeeded", "successful", "ok", "complete", "completed", "done", "modified":
		return ItemSucceeded
	case "error", "errored", "failed", "failure", "rejected", "invalid":
		return ItemFailed
	}
	return ItemPending
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// bulkBody checks items and encodes them as the submit's JSON array.
func bulkBody(items []BulkItem) ([]byte, error) {
	var problems []FieldError
	add := func(field, problem string) {
		if len(problems) < MaxProblems {
			problems = append(problems, FieldError{Field: field, Problem: problem})
		}
	}
	if len(items) == 0 || len(items) > MaxBulkItems {
		add("items", fmt.Sprintf("%d items; a bulk update takes 1 to %d", len(items), MaxBulkItems))
		return nil, &ValidationError{Problems: problems}
	}
	withRef := 0
	for _, it := range items {
		if it.Ref != "" {
			withRef++
		}
	}
	refs := make(map[string]int, len(items))
	ids := make(map[string]int, len(items))
	for i, it := range items {
		at := fmt.Sprintf("items[%d]", i)
		switch {
		case it.Ref == "" && withRef > 0:
			add(at+"._clientRef", "missing; either every item has a _clientRef or none has")
		case len(it.Ref) > MaxClientRefLen:
			add(at+"._clientRef", fmt.Sprintf("%d bytes; at most %d allowed", len(it.Ref), MaxClientRefLen))
		case it.Ref != "":
			if j, dup := refs[it.Ref]; dup {
				add(at+"._clientRef", fmt.Sprintf("the same as items[%d]._clientRef; each must be unique", j))
			} else {
				refs[it.Ref] = i
			}
		}
		if it.Update.Replace {
			add(at+".replace", "bulk updates are partial and cannot replace; send this update as a single PUT (UpdateConversation)")
		}
		if err := it.Update.Validate(); err != nil {
			if ve, ok := err.(*ValidationError); ok {
				for _, p := range ve.Problems {
					add(at+"."+p.Field, p.Problem)
				}
			}
			continue
		}
		key := strings.ToLower(it.Update.ID)
		if j, dup := ids[key]; dup {
			add(at+".id", fmt.Sprintf("conversation %s is also updated by items[%d]; one item per conversation, since Kustomer does not promise their order", it.Update.ID, j))
		} else {
			ids[key] = i
		}
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}

	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, it := range items {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"id":`)
		writeJSONString(&buf, it.Update.ID)
		if it.Ref != "" {
			buf.WriteString(`,"_clientRef":`)
			writeJSONString(&buf, it.Ref)
		}
		// Validate passed: the body is a non-empty object. Its members follow "id".
		inner := bytes.TrimLeft(bytes.TrimSpace(it.Update.Body)[1:], " \t\r\n")
		buf.WriteByte(',')
		buf.Write(inner)
	}
	buf.WriteByte(']')
	return buf.Bytes(), nil
}

func writeJSONString(buf *bytes.Buffer, s string) {
	b, _ := json.Marshal(s) // a string always encodes
	buf.Write(b)
}

// jobIDProblem says what makes id unusable as a job id in a path, or "".
func jobIDProblem(id string) string {
	switch {
	case id == "":
		return "missing"
	case len(id) > maxJobIDLen:
		return fmt.Sprintf("%d bytes; at most %d allowed", len(id), maxJobIDLen)
	case id == "." || id == "..":
		return quote(id) + " is not a job id"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return "contains characters other than letters, digits, '-', '_', '.' and '~'"
		}
	}
	return ""
}

// object is a JSON object whose members are decoded on demand.
type object map[string]json.RawMessage

// parseObject decodes raw as an object; false for anything else.
func parseObject(raw json.RawMessage) (object, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, false
	}
	var o object
	if json.Unmarshal(raw, &o) != nil {
		return nil, false
	}
	return o, true
}

// resource flattens a JSON:API resource: the members of "attributes" join the object's own
// (the object's "id" and "type" win). An object without attributes is returned as is.
func resource(o object) object {
	attrs, ok := parseObject(o["attributes"])
	if !ok {
		return o
	}
	out := make(object, len(o)+len(attrs))
	for k, v := range o {
		out[k] = v
	}
	for k, v := range attrs {
		if _, own := o[k]; own && (k == "id" || k == "type") {
			continue
		}
		out[k] = v
	}
	return out
}

// str reads the first of keys that holds a string or a number, as text.
func (o object) str(keys ...string) string {
	for _, k := range keys {
		raw := bytes.TrimSpace(o[k])
		if len(raw) == 0 {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return strings.TrimSpace(s)
		}
		var n json.Number
		if json.Unmarshal(raw, &n) == nil {
			return n.String()
		}
	}
	return ""
}

// boolean reads a true/false or "true"/"false" member.
func (o object) boolean(key string) (v, ok bool) {
	raw := o[key]
	if json.Unmarshal(raw, &v) == nil {
		return v, true
	}
	if b, err := strconv.ParseBool(o.str(key)); err == nil {
		return b, true
	}
	return false, false
}

// count reads a non-negative integer, given as a number or a numeric string; -1 otherwise.
func (o object) count(keys ...string) int {
	for _, k := range keys {
		if s := o.str(k); s != "" {
			if n, err := strconv.ParseFloat(s, 64); err == nil && n >= 0 && n <= 1<<31 && n == float64(int(n)) {
				return int(n)
			}
		}
	}
	return -1
}

// strs reads an array of ids: strings, numbers, or objects with an "id".
func (o object) strs(keys ...string) []string {
	for _, k := range keys {
		var arr []json.RawMessage
		if json.Unmarshal(o[k], &arr) != nil {
			continue
		}
		out := make([]string, 0, len(arr))
		for _, raw := range arr {
			if s := (object{"v": raw}).str("v"); s != "" {
				out = append(out, s)
			} else if obj, ok := parseObject(raw); ok {
				if s := obj.str("id", "objectId"); s != "" {
					out = append(out, s)
				}
			}
		}
		return out
	}
	return nil
}

// document finds the resource of a single-resource answer: {"data": {...}} or the object
// itself.
func document(body []byte) (object, bool) {
	top, ok := parseObject(body)
	if !ok {
		return nil, false
	}
	if data, ok := parseObject(top["data"]); ok {
		return resource(data), true
	}
	return resource(top), true
}

// parseJob reads a job from a submit or job answer; the problem is "" when it has a usable id.
func parseJob(body []byte) (BulkJob, string) {
	o, ok := document(body)
	if !ok {
		return BulkJob{}, "the answer is not a JSON object"
	}
	job := BulkJob{
		ID:              o.str("id", "_id", "jobId"),
		State:           strings.ToLower(o.str("status", "state")),
		BatchesComplete: -1,
		BatchesTotal:    -1,
		ConversationIDs: o.strs("ids", "objectIds"),
	}
	if job.ID == "" {
		return BulkJob{}, "the answer names no job id"
	}
	if p := jobIDProblem(job.ID); p != "" {
		return BulkJob{}, "the answer's job id is unusable: " + p
	}
	completed, _ := o.boolean("completed")
	job.Completed = completed || job.State == "complete" || job.State == "completed"
	if b, ok := parseObject(o["batches"]); ok {
		job.BatchesComplete = b.count("complete", "completed")
		job.BatchesTotal = b.count("total")
	}
	return job, ""
}

// parseBatches reads the batch list: {"data": [...]}, a bare array, or {"batches": [...]}.
func parseBatches(body []byte) ([]BulkBatch, string) {
	var list []json.RawMessage
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) > 0 && trimmed[0] == '[':
		if json.Unmarshal(trimmed, &list) != nil {
			return nil, "the answer is not valid JSON"
		}
	default:
		top, ok := parseObject(trimmed)
		if !ok {
			return nil, "the answer is not a JSON object or array"
		}
		found := false
		for _, candidate := range []json.RawMessage{top["data"], top["batches"]} {
			if json.Unmarshal(candidate, &list) == nil && list != nil {
				found = true
				break
			}
		}
		if data, ok := parseObject(top["data"]); !found && ok {
			found = json.Unmarshal(resource(data)["batches"], &list) == nil && list != nil
		}
		if !found {
			return nil, "the answer holds no list of batches"
		}
	}
	batches := make([]BulkBatch, 0, len(list))
	for i, raw := range list {
		o, ok := parseObject(raw)
		if !ok {
			return nil, fmt.Sprintf("batch %d is not a JSON object", i)
		}
		batches = append(batches, parseBatch(resource(o)))
	}
	return batches, ""
}

func parseBatch(o object) BulkBatch {
	b := BulkBatch{
		ID:           o.str("id", "_id"),
		State:        strings.ToLower(o.str("status", "state")),
		ObjectIDs:    o.strs("objectIds", "objectIDs"),
		SuccessCount: o.count("successCount"),
		FailureCount: o.count("failureCount"),
	}
	if t, err := time.Parse(time.RFC3339Nano, o.str("completedAt")); err == nil {
		b.CompletedAt = t
	}
	var errs []json.RawMessage
	if json.Unmarshal(o["errors"], &errs) == nil {
		for _, raw := range errs {
			e := BulkError{Reason: reasonOf(raw)}
			if eo, ok := parseObject(raw); ok {
				e.ObjectID = eo.str("objectId", "objectID", "id")
				e.Ref = eo.str("_clientRef", "clientRef")
			}
			if e.Reason != "" || e.ObjectID != "" || e.Ref != "" {
				b.Errors = append(b.Errors, e)
			}
		}
	}
	var results []json.RawMessage
	if json.Unmarshal(o["results"], &results) == nil && results != nil {
		b.Results = make([]BulkResult, 0, len(results))
		for _, raw := range results {
			ro, ok := parseObject(raw)
			if !ok {
				continue
			}
			ro = resource(ro)
			r := BulkResult{
				Ref:      ro.str("_clientRef", "clientRef"),
				ObjectID: ro.str("objectId", "objectID", "id"),
				Status:   strings.ToLower(ro.str("status", "state", "result")),
			}
			for _, k := range []string{"error", "errors", "message", "reason"} {
				if raw, ok := ro[k]; ok && string(bytes.TrimSpace(raw)) != "null" {
					if r.Error = reasonOf(raw); r.Error != "" {
						break
					}
				}
			}
			b.Results = append(b.Results, r)
		}
	}
	return b
}

// reasonOf turns an error value into one line: a string as is, an object or array by the
// rules of Kustomer's error shapes ({"code","message"}, {"title","detail"}, {"errors":[...]}).
func reasonOf(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return logtext.Truncate(plain(s), maxReason, "")
	}
	var r string
	switch raw[0] {
	case '{':
		var one struct {
			Code, Title, Detail, Message string
		}
		_ = json.Unmarshal(raw, &one) // fields of other types stay empty
		var parts []string
		for _, p := range []string{one.Code, one.Title, one.Detail, one.Message} {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		if len(parts) > 0 {
			r = strings.Join(parts, ": ")
		} else {
			r = reason(string(raw))
		}
	case '[':
		var list []json.RawMessage
		_ = json.Unmarshal(raw, &list)
		var parts []string
		for _, item := range list {
			if p := reasonOf(item); p != "" {
				parts = append(parts, p)
			}
		}
		r = strings.Join(parts, "; ")
	default:
		r = string(raw)
	}
	return logtext.Truncate(plain(r), maxReason, "")
}
